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


# ---- distributions over counts (numpy) -------------------------------------------------

def decode_counts(probs: np.ndarray, decoding: str = "argmax") -> np.ndarray:
    """The count each distribution over 0..K-1 stands for: its mode, or its median."""
    if decoding == "median":
        return (np.cumsum(probs, axis=1) >= 0.5).argmax(axis=1)
    if decoding != "argmax":
        raise ValueError(f"unknown count decoding {decoding!r}")
    return probs.argmax(axis=1)


def p_of_count(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """P(count) per row of a distribution over counts 0..K-1 (0 for counts outside it)."""
    out = np.zeros(len(counts))
    inside = (counts >= 0) & (counts < probs.shape[1])
    out[inside] = probs[np.flatnonzero(inside), counts[inside]]
    return out
