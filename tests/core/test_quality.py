"""Audit-quality metrics (pure): AUROC, AP, budgets, recall by kind/size, coverage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from core.quality import (
    TruthRow,
    audit_quality,
    auroc,
    average_precision,
    pr_curve,
    review_budgets,
)


@pytest.mark.parametrize(("scores", "positives", "expected"), [
    ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),
    ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),  # ties count half
    ([0.9, 0.3, 0.5, 0.1], [True, True, False, False], 0.75),
    ([0.9, 0.3], [True, True], math.nan),
])
def test_auroc_table(scores: list[float], positives: list[bool], expected: float) -> None:
    got = auroc(scores, positives)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@pytest.mark.parametrize(("scores", "positives", "expected"), [
    ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [False, True, False, True], (1 / 2 + 2 / 4) / 2),
    ([0.5, 0.5, 0.5, 0.5], [True, False, False, False], 0.25),  # one tie group
    ([0.9, 0.1], [False, False], math.nan),
])
def test_average_precision_table(scores: list[float], positives: list[bool],
                                 expected: float) -> None:
    got = average_precision(scores, positives)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def _row(i: int, manifest: int, true: int, status: str, score: float | None,
         kind: str | None = None) -> TruthRow:
    return TruthRow(f"e{i:03d}", manifest, true, status, score, kind)


ROWS = [
    _row(0, 3, 3, "match", 0.1),
    _row(1, 3, 3, "uncertain", 0.5),
    _row(2, 2, 2, "mismatch", 0.95),  # a false alarm
    _row(3, 4, 4, "match", 0.2),
    _row(4, 4, 3, "mismatch", 0.97, "missing_item"),  # found
    _row(5, 2, 3, "uncertain", 0.6, "extra_item"),  # missed
    _row(6, 5, 2, "mismatch", 0.99, "swapped"),  # found, size 3
    _row(7, 12, 12, "unsupported", None),
    _row(8, 6, 5, "unsupported", None, "missing_item"),  # not judged
    _row(9, 1, 1, "match", 0.05),
]


def test_audit_quality_by_hand() -> None:
    q = audit_quality(ROWS)
    assert (q["bins"], q["wrong_manifests"], q["judged"]) == (10, 4, 8)
    assert (q["judged_correct"], q["judged_wrong"]) == (5, 3)
    assert q["coverage"] == pytest.approx(6 / 10)
    assert q["false_alarm_rate"] == pytest.approx(1 / 5)
    assert q["recall"] == pytest.approx(2 / 3)
    assert q["mismatch_precision"] == pytest.approx(2 / 3)
    # judged scores: wrong 0.97, 0.6, 0.99; correct 0.1, 0.5, 0.95, 0.2, 0.05
    assert q["auroc"] == pytest.approx((5 + 4 + 5) / 15)
    assert q["recall_by_kind"]["missing_item"] == {"n": 2, "judged": 1, "flagged": 1,
                                                   "recall": 1.0}
    assert q["recall_by_kind"]["extra_item"]["recall"] == 0.0
    assert q["recall_by_size"]["3"]["recall"] == 1.0
    assert q["recall_by_size"]["1"] == {"n": 3, "judged": 2, "flagged": 1, "recall": 0.5}
    assert q["statuses"] == {"match": 3, "mismatch": 3, "uncertain": 2, "unsupported": 2}


def test_review_budgets_take_the_top_scores() -> None:
    budgets = review_budgets(ROWS, (0.1, 0.2, 0.5))
    assert budgets["top_10%"] == {"budget": 0.1, "k": 1, "precision": 1.0, "recall": 1 / 3}
    assert budgets["top_20%"]["precision"] == 1.0  # 0.99, 0.97
    assert budgets["top_50%"]["k"] == 5  # 0.99 0.97 0.95 0.6 0.5
    assert budgets["top_50%"]["precision"] == pytest.approx(3 / 5)


def test_pr_curve_ends_at_full_recall() -> None:
    curve = pr_curve(ROWS)
    assert curve["recall"][-1] == 1.0
    assert curve["threshold"] == sorted(curve["threshold"], reverse=True)
    assert curve["precision"][0] == 1.0


def test_pr_plot_without_mismatch_verdicts(tmp_path: Path) -> None:
    from core.plots import precision_recall

    quality = audit_quality([r for r in ROWS if r.status != "mismatch"])
    assert math.isnan(quality["mismatch_precision"])
    png = precision_recall(pr_curve(ROWS), tmp_path / "pr.png", base_rate=None,
                           operating_point=(quality["recall"], None))
    assert png.stat().st_size > 0
