"""Pure counting metrics, table-driven."""

from __future__ import annotations

import math

import pytest

from core.scoring import counting_metrics, majority_baseline

CLASSES = [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("y_true", "y_pred", "accuracy", "rmse", "off_by_one"), [
    ([1, 2, 3], [1, 2, 3], 1.0, 0.0, 1.0),
    ([1, 2, 3, 4], [2, 2, 3, 1], 0.5, math.sqrt((1 + 0 + 0 + 9) / 4), 0.75),
    ([5, 5], [1, 1], 0.0, 4.0, 0.0),
])
def test_counting_metrics(y_true: list[int], y_pred: list[int], accuracy: float, rmse: float,
                          off_by_one: float) -> None:
    m = counting_metrics(y_true, y_pred, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy)
    assert m["rmse"] == pytest.approx(rmse)
    assert m["off_by_one_accuracy"] == pytest.approx(off_by_one)
    assert sum(map(sum, m["confusion_matrix"])) == len(y_true)


def test_per_class_and_confusion() -> None:
    m = counting_metrics([1, 1, 2, 5], [1, 2, 2, 4], CLASSES)
    assert m["per_class_accuracy"]["1"] == 0.5
    assert m["per_class_accuracy"]["2"] == 1.0
    assert math.isnan(m["per_class_accuracy"]["3"])
    assert m["confusion_matrix"][0] == [1, 1, 0, 0, 0]
    assert m["confusion_matrix"][4] == [0, 0, 0, 1, 0]
    assert m["support"] == {"1": 2, "2": 1, "3": 0, "4": 0, "5": 1}


def test_empty_and_mismatched() -> None:
    assert counting_metrics([], [], CLASSES)["n"] == 0
    with pytest.raises(ValueError):
        counting_metrics([1], [], CLASSES)


def test_majority_baseline_predicts_most_frequent_train_count() -> None:
    m = majority_baseline([3, 3, 2, 5], [3, 2], CLASSES)
    assert m["predicted_count"] == 3
    assert m["accuracy"] == 0.5
