"""Temperature scaling, ECE and threshold choice (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.model.calibration import (
    calibrate,
    calibrated_probabilities,
    choose_policy,
    expected_calibration_error,
    fit_temperature,
    max_flags,
    negative_log_likelihood,
    rate_threshold,
    reaches,
)

CLASSES = [1, 2, 3, 4, 5]


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model whose probabilities are right at temperature 3 but it reports T=1."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, 5))
    true_logits[np.arange(n), rng.integers(0, 5, n)] += 1.5
    p = calibrated_probabilities(true_logits)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return true_logits * 3.0, labels


def test_fit_temperature_recovers_the_scale() -> None:
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    grid = [negative_log_likelihood(logits, labels, x) for x in (t * 0.8, t, t * 1.25)]
    assert grid[1] <= min(grid[0], grid[2])


def test_calibration_lowers_ece() -> None:
    logits, labels = _overconfident()
    calibration, _ = calibrate(logits, labels, class_counts=CLASSES)
    assert calibration.ece_before is not None and calibration.ece_after is not None
    assert calibration.ece_after < calibration.ece_before / 2
    assert calibration.fitted_on == "validation"


@pytest.mark.parametrize(("probs", "labels", "ece"), [
    ([[1.0, 0.0], [0.0, 1.0]], [0, 1], 0.0),  # confident and right
    ([[1.0, 0.0], [0.0, 1.0]], [1, 0], 1.0),  # confident and wrong
    ([[0.6, 0.4], [0.6, 0.4]], [0, 1], 0.1),  # one bin: |0.5 - 0.6|
    ([[0.6, 0.4], [0.95, 0.05]], [0, 0], (0.4 + 0.05) / 2),  # two bins
])
def test_ece_table(probs: list[list[float]], labels: list[int], ece: float) -> None:
    assert expected_calibration_error(probs, labels) == pytest.approx(ece)


def test_empty_split() -> None:
    assert fit_temperature(np.zeros((0, 5)), np.zeros(0)) == 1.0
    assert math.isnan(expected_calibration_error(np.zeros((0, 5)), np.zeros(0)))
    _, policy = calibrate(np.zeros((0, 5)), np.zeros(0, dtype=int), class_counts=CLASSES)
    assert policy.mismatch_min_score == 1.0 and policy.match_min_p == 1.0
    assert policy.measured == {"n_correct": 0.0, "n_off_by_one": 0.0}


def test_a_small_validation_split_decides_nothing() -> None:
    logits, labels = _overconfident(22, seed=5)
    _, policy = calibrate(logits, labels, class_counts=CLASSES)
    assert (policy.mismatch_min_score, policy.match_min_p) == (1.0, 1.0)
    assert policy.measured["false_alarm_rate"] == 0.0
    assert policy.measured["coverage_correct"] == 0.0


@pytest.mark.parametrize(("n", "target", "flags"), [
    (22, 0.05, -1),  # 0.95^22 = 0.32: even no flag does not show 5 % with 95 % confidence
    (58, 0.05, -1), (59, 0.05, 0),  # 0.95^59 = 0.0485
    (1000, 0.05, 38),  # P(Bin(1000, .05) <= 38) = 0.043, <= 39: 0.060
    (10, 0.5, 1),  # P(Bin(10, .5) <= 1) = 0.0107, <= 2: 0.0547
    (0, 0.05, -1),
])
def test_max_flags_table(n: int, target: float, flags: int) -> None:
    assert max_flags(n, target) == flags


@pytest.mark.parametrize(("scores", "target", "threshold"), [
    (list(np.linspace(0, 0.999, 1000)), 0.05, np.nextafter(0.999 - 38 * 0.001, 1)),
    ([0.1, 0.2, 0.3], 0.05, 1.0),  # too few to promise 5 %: decide nothing
    ([-np.inf] * 100, 0.05, 0.0),  # never-flagged rows: any threshold keeps the rate
])
def test_rate_threshold(scores: list[float], target: float, threshold: float) -> None:
    got = rate_threshold(scores, target)
    assert got == pytest.approx(threshold, abs=1e-9)
    assert sum(s >= got for s in scores if got < 1) <= max(max_flags(len(scores), target), 0)


def test_a_threshold_of_one_decides_nothing() -> None:
    assert list(reaches([1.0, 0.5], 1.0)) == [False, False]
    assert list(reaches([1.0, 0.5], 0.5)) == [True, True]


def test_choose_policy_keeps_false_alarms_below_target_on_fresh_data() -> None:
    val_logits, val_labels = _overconfident(3000, seed=1)
    test_logits, test_labels = _overconfident(3000, seed=2)
    calibration, policy = calibrate(val_logits, val_labels, class_counts=CLASSES, target=0.05)
    assert policy.target_false_alarm_rate == 0.05 and policy.chosen_on == "validation"
    assert policy.measured["false_alarm_rate"] <= 0.05
    assert 0.5 <= policy.match_min_p <= 1 and 0 < policy.mismatch_min_score <= 1
    probs = calibrated_probabilities(test_logits, calibration.temperature)
    rows = np.arange(len(test_labels))
    p = probs[rows, test_labels]
    flagged = (1 - p >= policy.mismatch_min_score) & (probs.argmax(1) != test_labels)
    assert flagged.mean() <= 0.05 + 0.015  # sampling noise on 3000 fresh images


def test_a_useless_model_flags_nothing() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 0.01, size=(500, 5))  # knows nothing
    labels = rng.integers(0, 5, 500)
    policy = choose_policy(calibrated_probabilities(logits), labels, class_counts=CLASSES)
    assert policy.measured["off_by_one_recall"] < 0.1
    assert policy.measured["coverage_correct"] < 0.1  # it says uncertain instead
