"""Logits -> calibrated prediction -> selective verdict (pure; shared by worker, replay, serve).

Every inference backend returns raw logits; :func:`prediction_from_logits` is the one place
the model card's temperature is applied. :func:`decide` turns the calibrated probability of
the manifest's count into a verdict with the card's :class:`DecisionPolicy` (optionally
overridden by settings, :func:`effective_policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.model.calibration import calibrated_probabilities, reaches
from core.model.card import DecisionPolicy, ModelCard
from core.scoring import decode_counts
from core.settings import InferenceSettings
from schemas.records import VerdictStatus


@dataclass(frozen=True)
class Prediction:
    """One image's model output, in the model card's count space (calibrated)."""

    count: int
    confidence: float  # calibrated probability of ``count``
    probabilities: dict[str, float]  # count (as str, JSON-friendly) -> calibrated probability
    scores: tuple[float, ...]  # raw logits, the reference endpoint's response

    def p_of(self, count: int) -> float | None:
        """Calibrated probability of ``count``; None when it is not one of the classes."""
        return self.probabilities.get(str(count))


@dataclass(frozen=True)
class Verdict:
    """The decision for one bin and the numbers it rests on."""

    status: VerdictStatus
    p_expected: float | None  # calibrated P(manifest's count); None: not a class
    discrepancy_score: float | None  # 1 - p_expected: P(the manifest's count is wrong)


def prediction_from_logits(logits: Sequence[float], card: ModelCard) -> Prediction:
    """One logits row -> Prediction, calibrated with the card's temperature and decoded to a
    count the card's way (``count_decoding``: the most likely count or the median)."""
    probs = calibrated_probabilities(list(logits), card.calibration.temperature).tolist()
    return prediction_from_probs(probs, logits, card.class_counts,
                                 decoding=card.count_decoding)


def prediction_from_probs(probs: Sequence[float], scores: Sequence[float],
                          class_counts: Sequence[int], *,
                          decoding: str = "argmax") -> Prediction:
    """Turn a probability row into a Prediction using the card's class -> count mapping
    (class counts ascending, so the median class is the median count)."""
    if len(probs) != len(class_counts):
        raise ValueError(f"{len(probs)} probabilities for {len(class_counts)} classes")
    best = int(decode_counts(np.asarray([probs], dtype=np.float64), decoding)[0])
    return Prediction(
        count=int(class_counts[best]),
        confidence=float(probs[best]),
        probabilities={str(c): round(float(p), 6)
                       for c, p in zip(class_counts, probs, strict=True)},
        scores=tuple(float(s) for s in scores),
    )


def effective_policy(card: ModelCard, *, match_min_p: float | None = None,
                     mismatch_min_score: float | None = None) -> DecisionPolicy:
    """The card's thresholds, with the non-None overrides (from settings) replacing them."""
    update = {k: v for k, v in (("match_min_p", match_min_p),
                                ("mismatch_min_score", mismatch_min_score)) if v is not None}
    if not update:
        return card.decision
    return DecisionPolicy.model_validate(card.decision.model_dump() | update
                                         | {"measured": {}, "chosen_on": "settings override"})


def policy_for(card: ModelCard, inference: InferenceSettings) -> DecisionPolicy:
    """The policy a front end runs: the card's, with the settings' overrides."""
    return effective_policy(card, match_min_p=inference.match_min_p,
                            mismatch_min_score=inference.mismatch_min_score)


def decide(prediction: Prediction, *, expected: int, supported_counts: Sequence[int],
           policy: DecisionPolicy) -> Verdict:
    """The verdict for one bin.

    ``unsupported`` first: a model that can only say 1..5 never judges a bin of 12 (or 0).
    ``mismatch`` needs strong evidence: the discrepancy score reaches ``mismatch_min_score``
    and the model prefers another count. ``match`` needs P(manifest count) >=
    ``match_min_p``. Everything in between is ``uncertain``. A threshold of 1 decides nothing
    (a probability rounded to 0 or 1 is not evidence enough for a policy that refused).
    """
    p = prediction.p_of(expected) if expected in supported_counts else None
    if p is None:
        return Verdict(VerdictStatus.UNSUPPORTED, None, None)
    score = 1.0 - p
    if bool(reaches(score, policy.mismatch_min_score)) and prediction.count != expected:
        status = VerdictStatus.MISMATCH
    elif bool(reaches(p, policy.match_min_p)):
        status = VerdictStatus.MATCH
    else:
        status = VerdictStatus.UNCERTAIN
    return Verdict(status, p, score)
