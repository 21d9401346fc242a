"""Compare a predicted count with the manifest's EXPECTED_QUANTITY (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.records import VerdictStatus


@dataclass(frozen=True)
class Prediction:
    """One image's model output, in the model card's count space."""

    count: int
    confidence: float
    probabilities: dict[str, float]  # count (as str, JSON-friendly) -> probability
    scores: tuple[float, ...]  # raw logits, the reference endpoint's response


def decide(*, predicted: int, confidence: float, expected: int,
           supported_counts: Sequence[int], uncertain_threshold: float) -> VerdictStatus:
    """The verdict for one bin.

    ``unsupported`` comes first: a model that can only say 1..5 must never call a bin of 12
    (or 0) items a mismatch. ``uncertain`` next: a low-confidence disagreement or agreement
    is not evidence either way.
    """
    if expected not in supported_counts:
        return VerdictStatus.UNSUPPORTED
    if confidence < uncertain_threshold:
        return VerdictStatus.UNCERTAIN
    return VerdictStatus.MATCH if predicted == expected else VerdictStatus.MISMATCH


def prediction_from_probs(probs: Sequence[float], scores: Sequence[float],
                          class_counts: Sequence[int]) -> Prediction:
    """Turn a softmax row into a Prediction using the card's class -> count mapping."""
    if len(probs) != len(class_counts):
        raise ValueError(f"{len(probs)} probabilities for {len(class_counts)} classes")
    best = max(range(len(probs)), key=probs.__getitem__)
    return Prediction(
        count=int(class_counts[best]),
        confidence=float(probs[best]),
        probabilities={str(c): round(float(p), 6)
                       for c, p in zip(class_counts, probs, strict=True)},
        scores=tuple(float(s) for s in scores),
    )
