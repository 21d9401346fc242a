"""Pure counting metrics (no torch, no I/O): reused by training, evaluation and replay."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]
) -> list[list[int]]:
    """``m[i][j]`` = items of true class ``classes[i]`` predicted as ``classes[j]``.

    Values outside ``classes`` are ignored in the matrix (they still count in accuracy/RMSE).
    """
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for t, p in zip(y_true, y_pred, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


def counting_metrics(
    y_true_counts: Sequence[int], y_pred_counts: Sequence[int], classes: Sequence[int]
) -> dict[str, Any]:
    """Accuracy, RMSE/MAE over counts, off-by-one accuracy, per-class accuracy, confusion matrix.

    ``classes`` are the item counts (e.g. ``[1, 2, 3, 4, 5]``); the result is JSON-serialisable.
    An empty input gives NaN scalars and zero support.
    """
    if len(y_true_counts) != len(y_pred_counts):
        raise ValueError(f"{len(y_true_counts)} true counts but {len(y_pred_counts)} predictions")
    n = len(y_true_counts)
    pairs = list(zip(y_true_counts, y_pred_counts, strict=True))
    nan = float("nan")
    exact = sum(t == p for t, p in pairs)
    close = sum(abs(t - p) <= 1 for t, p in pairs)
    sq = sum((t - p) ** 2 for t, p in pairs)
    ab = sum(abs(t - p) for t, p in pairs)
    support = Counter(t for t, _ in pairs)
    hits = Counter(t for t, p in pairs if t == p)
    per_class = {
        str(c): (hits[c] / support[c]) if support[c] else nan for c in classes
    }
    return {
        "n": n,
        "accuracy": exact / n if n else nan,
        "rmse": math.sqrt(sq / n) if n else nan,
        "mae": ab / n if n else nan,
        "off_by_one_accuracy": close / n if n else nan,
        "per_class_accuracy": per_class,
        "support": {str(c): support[c] for c in classes},
        "classes": list(classes),
        "confusion_matrix": confusion_matrix(y_true_counts, y_pred_counts, classes),
    }


def majority_baseline(
    train_counts: Sequence[int], eval_counts: Sequence[int], classes: Sequence[int]
) -> dict[str, Any]:
    """Metrics of always predicting the most frequent training count (ties: smallest count)."""
    if not train_counts:
        raise ValueError("majority baseline needs at least one training label")
    freq = Counter(train_counts)
    majority = min(freq, key=lambda c: (-freq[c], c))
    result = counting_metrics(eval_counts, [majority] * len(eval_counts), classes)
    result["predicted_count"] = majority
    return result


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The float-valued entries of a metrics dict (for a ModelCard's ``metrics``)."""
    return {
        f"{prefix}{k}": float(v) for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


# ---- distributions over counts (numpy): calibration and discrepancy ranking ------------------

def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney U)."""
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    scores = np.concatenate([negatives, positives]).astype(float)
    ranks = _average_ranks(scores)
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # ties share the mean of their ranks
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(uniq) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (``labels`` are class indices)."""
    if len(labels) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(total)


def p_of_count(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """P(count) per row of a distribution over counts 0..K-1 (0 for counts outside it)."""
    out = np.zeros(len(counts))
    inside = (counts >= 0) & (counts < probs.shape[1])
    out[inside] = probs[np.flatnonzero(inside), counts[inside]]
    return out


def off_by_one_auroc(probs: np.ndarray, true_counts: np.ndarray) -> float:
    """How well 1 - P(manifest) ranks manifests off by one item (true +- 1) above correct
    ones (the audit's discrepancy score; ``probs`` over counts 0..K-1)."""
    correct = 1 - p_of_count(probs, true_counts)
    down = true_counts >= 1
    wrong = np.concatenate([1 - p_of_count(probs, true_counts + 1),
                            1 - p_of_count(probs[down], true_counts[down] - 1)])
    return auroc(wrong, correct)


def distribution_metrics(probs: np.ndarray, true_counts: np.ndarray, *, first: int = 1,
                         last: int = 5) -> dict[str, float]:
    """The counter's quality from distributions over counts 0..K-1 (argmax decoding).

    Accuracy, RMSE and off-by-one accuracy on bins with ``first``..``last`` items (where the
    reference and the product targets are defined); coverage (share of all bins whose count is
    a class); ECE on covered bins; AUROC of the discrepancy score for off-by-one manifests.
    """
    predicted = probs.argmax(axis=1)
    band = (true_counts >= first) & (true_counts <= last)
    err = (predicted[band] - true_counts[band]).astype(float)
    covered = true_counts < probs.shape[1]
    return {
        "n": float(len(true_counts)),
        "accuracy_1_5": float((err == 0).mean()) if band.any() else float("nan"),
        "rmse_1_5": float(np.sqrt((err ** 2).mean())) if band.any() else float("nan"),
        "off_by_one_1_5": float((np.abs(err) <= 1).mean()) if band.any() else float("nan"),
        "coverage": float(covered.mean()),
        "ece": expected_calibration_error(probs[covered], true_counts[covered]),
        "auroc_off_by_one_1_5": off_by_one_auroc(probs[band], true_counts[band]),
    }
