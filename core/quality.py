"""Audit quality (pure): how well verdicts and discrepancy scores find wrong manifests, given
the truth (which manifests were wrong, and how).

One row per bin verdict: the manifest's count, the true count, the status, the discrepancy
score (None when the manifest's count is outside the model's classes) and the perturbation that
made the manifest wrong (None for a correct manifest). Definitions, used by replay, the demo
summary, the trainer's evaluation and bench alike:

- *judged*: bins whose manifest count the model covers (status is not ``unsupported``);
- *false-alarm rate*: correct manifests flagged ``mismatch`` / judged correct manifests;
- *recall*: wrong manifests flagged ``mismatch`` / judged wrong manifests (also per kind of
  perturbation and per size |manifest - true|);
- *mismatch precision*: wrong manifests among the ``mismatch`` verdicts;
- *AUROC* and *average precision* of the score, over judged bins (wrong = positive);
- *precision at a review budget*: the share of wrong manifests among the top ``k`` bins by
  score, ``k`` = ceil(budget x all bins), ties broken by event id;
- *coverage*: bins that get ``match`` or ``mismatch`` / all bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REVIEW_BUDGETS = (0.01, 0.05, 0.10)
DECIDED = ("match", "mismatch")


@dataclass(frozen=True)
class TruthRow:
    """One bin's verdict next to the truth about its manifest."""

    event_id: str
    manifest_count: int
    true_count: int
    status: str
    score: float | None
    perturbation: str | None = None

    @property
    def wrong(self) -> bool:
        return self.manifest_count != self.true_count

    @property
    def judged(self) -> bool:
        return self.status != "unsupported" and self.score is not None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when
    either class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average rank of the tie group
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def precision_recall_curve(scores: Sequence[float], positives: Sequence[bool]
                           ) -> tuple[list[float], list[float], list[float]]:
    """(precision, recall, threshold) at each distinct score, highest threshold first."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if len(s) == 0:
        return [], [], []
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(s) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    total = max(int(y.sum()), 1)
    precision = (tp / flagged)[last_of_tie]
    recall = (tp / total)[last_of_tie]
    return precision.tolist(), recall.tolist(), s[last_of_tie].tolist()


def average_precision(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Sum over thresholds of (recall step) x precision (no interpolation); NaN without
    positives."""
    if not any(positives):
        return math.nan
    precision, recall, _ = precision_recall_curve(scores, positives)
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * np.asarray(precision)))


def _rate(hits: int, n: int) -> float:
    return hits / n if n else math.nan


def _breakdown(rows: Iterable[TruthRow], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[TruthRow]] = {}
    for r in rows:
        groups.setdefault(str(key(r)), []).append(r)
    out = {}
    for name in sorted(groups, key=lambda g: (len(g), g)):
        group = groups[name]
        judged = [r for r in group if r.judged]
        flagged = sum(r.status == "mismatch" for r in judged)
        out[name] = {"n": len(group), "judged": len(judged), "flagged": flagged,
                     "recall": _rate(flagged, len(judged))}
    return out


def ranked(rows: Sequence[TruthRow]) -> list[TruthRow]:
    """Scored bins, highest score first (ties by event id): the auditors' queue order."""
    scored = [r for r in rows if r.score is not None]
    return sorted(scored, key=lambda r: (-float(r.score or 0.0), r.event_id))


def review_budgets(rows: Sequence[TruthRow],
                   budgets: Sequence[float] = REVIEW_BUDGETS) -> dict[str, dict[str, Any]]:
    """Precision and recall when auditors review the top ``budget`` share of bins by score."""
    queue = ranked(rows)
    wrong_total = sum(r.wrong for r in rows if r.judged)
    out = {}
    for budget in budgets:
        k = math.ceil(budget * len(rows))
        top = queue[:k]
        hits = sum(r.wrong for r in top)
        out[f"top_{budget * 100:g}%"] = {"budget": budget, "k": len(top),
                                         "precision": _rate(hits, len(top)),
                                         "recall": _rate(hits, wrong_total)}
    return out


def audit_quality(rows: Sequence[TruthRow],
                  budgets: Sequence[float] = REVIEW_BUDGETS) -> dict[str, Any]:
    """Every audit-quality number of the module docstring (NaN where undefined)."""
    judged = [r for r in rows if r.judged]
    correct = [r for r in judged if not r.wrong]
    wrong = [r for r in judged if r.wrong]
    mismatches = [r for r in rows if r.status == "mismatch"]
    scores = [float(r.score or 0.0) for r in judged]
    positives = [r.wrong for r in judged]
    false_alarms = sum(r.status == "mismatch" for r in correct)
    found = sum(r.status == "mismatch" for r in wrong)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "bins": len(rows),
        "wrong_manifests": sum(r.wrong for r in rows),
        "judged": len(judged),
        "judged_correct": len(correct),
        "judged_wrong": len(wrong),
        "statuses": dict(sorted(statuses.items())),
        "coverage": _rate(sum(r.status in DECIDED for r in rows), len(rows)),
        "false_alarms": false_alarms,
        "false_alarm_rate": _rate(false_alarms, len(correct)),
        "wrong_flagged": found,
        "recall": _rate(found, len(wrong)),
        "mismatch_precision": _rate(found, len(mismatches)),
        "wrong_rate_judged": _rate(len(wrong), len(judged)),
        "auroc": auroc(scores, positives),
        "average_precision": average_precision(scores, positives),
        "recall_by_kind": _breakdown((r for r in rows if r.wrong),
                                     lambda r: r.perturbation or "unknown"),
        "recall_by_size": _breakdown((r for r in rows if r.wrong),
                                     lambda r: abs(r.manifest_count - r.true_count)),
        "review_budgets": review_budgets(rows, budgets),
    }


def pr_curve(rows: Sequence[TruthRow]) -> dict[str, list[float]]:
    """The precision-recall curve of the score over judged bins (for the plot)."""
    judged = [r for r in rows if r.judged]
    precision, recall, threshold = precision_recall_curve(
        [float(r.score or 0.0) for r in judged], [r.wrong for r in judged])
    return {"precision": precision, "recall": recall, "threshold": threshold}


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN; an undefined rate is null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def headline(q: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of an :func:`audit_quality` result, for tables people read."""
    rows = [
        ("bins (wrong manifests)", f"{q['bins']} ({q['wrong_manifests']})"),
        ("coverage: match or mismatch", _pct(q["coverage"])),
        ("false-alarm rate on correct manifests",
         f"{_pct(q['false_alarm_rate'])} ({q['false_alarms']}/{q['judged_correct']})"),
        ("recall of wrong manifests",
         f"{_pct(q['recall'])} ({q['wrong_flagged']}/{q['judged_wrong']})"),
        ("mismatch precision", _pct(q["mismatch_precision"])),
        ("AUROC of the score", _num(q["auroc"])),
        ("average precision of the score (random: base rate)",
         f"{_num(q['average_precision'])} ({_num(q['wrong_rate_judged'])})"),
    ]
    for name, b in q["review_budgets"].items():
        rows.append((f"precision at review budget {name} (k={b['k']})", _pct(b["precision"])))
    for label, key in (("kind", "recall_by_kind"), ("size", "recall_by_size")):
        for name, g in q[key].items():
            rows.append((f"recall, {label} {name}",
                         f"{_pct(g['recall'])} ({g['flagged']}/{g['judged']}, n={g['n']})"))
    return rows


def markdown(q: dict[str, Any]) -> str:
    """An :func:`audit_quality` result as a Markdown table."""
    lines = ["| audit quality | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in headline(q)]
    return "\n".join(lines) + "\n"
