"""Logits -> calibrated prediction -> selective verdict (pure)."""

from datetime import UTC, datetime

import numpy as np
import pytest

from core.model.card import Calibration, DecisionPolicy, ModelCard
from core.settings import InferenceSettings
from inference.compare import (
    decide,
    effective_policy,
    policy_for,
    prediction_from_logits,
    prediction_from_probs,
)
from schemas.records import VerdictStatus

SUPPORTED = [1, 2, 3, 4, 5]
POLICY = DecisionPolicy(match_min_p=0.6, mismatch_min_score=0.9)


def _card(temperature: float = 1.0, decoding: str = "argmax", **decision: float) -> ModelCard:
    return ModelCard(version="v", architecture="efficientnet_lite0", class_counts=SUPPORTED,
                     input_size=32, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                     count_decoding=decoding, calibration=Calibration(temperature=temperature),
                     decision=DecisionPolicy(**decision), created_at=datetime.now(UTC),
                     code_version="test")


def _probs(best: int, p_best: float) -> list[float]:
    rest = (1 - p_best) / 4
    return [p_best if c == best else rest for c in SUPPORTED]


@pytest.mark.parametrize(("best", "p_best", "expected", "status", "p_expected"), [
    (3, 0.9, 3, VerdictStatus.MATCH, 0.9),  # likely manifest count
    (3, 0.6, 3, VerdictStatus.MATCH, 0.6),  # exactly at match_min_p
    (3, 0.5, 3, VerdictStatus.UNCERTAIN, 0.5),  # the model agrees, but not firmly enough
    (2, 0.55, 3, VerdictStatus.UNCERTAIN, 0.1125),  # disagrees, score 0.8875 < 0.9
    (2, 0.7, 3, VerdictStatus.MISMATCH, 0.075),  # score 0.925 >= 0.9 and prefers 2
    (2, 0.5, 3, VerdictStatus.UNCERTAIN, 0.125),  # disagrees weakly: not evidence
    (5, 0.99, 12, VerdictStatus.UNSUPPORTED, None),
    (1, 0.99, 0, VerdictStatus.UNSUPPORTED, None),
])
def test_decide_table(best: int, p_best: float, expected: int, status: VerdictStatus,
                      p_expected: float | None) -> None:
    prediction = prediction_from_probs(_probs(best, p_best), [0.0] * 5, SUPPORTED)
    verdict = decide(prediction, expected=expected, supported_counts=SUPPORTED, policy=POLICY)
    assert verdict.status is status
    if p_expected is None:
        assert verdict.p_expected is None and verdict.discrepancy_score is None
    else:
        assert verdict.p_expected == pytest.approx(p_expected)
        assert verdict.discrepancy_score == pytest.approx(1 - p_expected)


def test_mismatch_needs_the_model_to_prefer_another_count() -> None:
    # A flat distribution: P(3) = 0.2 gives score 0.8, but 3 is (tied) best: not a mismatch.
    flat = prediction_from_probs([0.2] * 5, [0.0] * 5, SUPPORTED)
    policy = DecisionPolicy(match_min_p=0.5, mismatch_min_score=0.5)
    assert flat.count == 1
    assert decide(flat, expected=1, supported_counts=SUPPORTED,
                  policy=policy).status is VerdictStatus.UNCERTAIN
    assert decide(flat, expected=2, supported_counts=SUPPORTED,
                  policy=policy).status is VerdictStatus.MISMATCH


def test_zero_thresholds_reproduce_the_argmax_rule() -> None:
    everything = DecisionPolicy(match_min_p=0.0, mismatch_min_score=0.0)
    prediction = prediction_from_probs(_probs(2, 0.3), [0.0] * 5, SUPPORTED)
    statuses = {e: decide(prediction, expected=e, supported_counts=SUPPORTED,
                          policy=everything).status for e in SUPPORTED}
    assert statuses == {1: VerdictStatus.MISMATCH, 2: VerdictStatus.MATCH,
                        3: VerdictStatus.MISMATCH, 4: VerdictStatus.MISMATCH,
                        5: VerdictStatus.MISMATCH}


def test_temperature_is_applied_to_logits() -> None:
    logits = [0.0, 2.0, 0.0, 0.0, 0.0]
    raw = prediction_from_logits(logits, _card(1.0))
    soft = prediction_from_logits(logits, _card(4.0))
    e = np.exp(np.array(logits) / 4.0)
    assert soft.probabilities["2"] == pytest.approx(e[1] / e.sum(), abs=1e-6)
    assert soft.confidence < raw.confidence and soft.count == raw.count == 2
    assert soft.scores == tuple(logits)  # the raw logits are kept
    assert sum(soft.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_card_decides_which_count_a_distribution_stands_for() -> None:
    logits = list(np.log([0.4, 0.05, 0.05, 0.1, 0.4]))
    assert prediction_from_logits(logits, _card()).count == 1  # the (first) mode
    median = prediction_from_logits(logits, _card(decoding="median"))
    assert median.count == 3 and median.confidence == pytest.approx(0.05)  # cumsum hits 0.5
    verdict = decide(median, expected=3, supported_counts=SUPPORTED,
                     policy=DecisionPolicy(match_min_p=0.0, mismatch_min_score=0.0))
    assert verdict.status is VerdictStatus.MATCH  # the median is the manifest's count


def test_settings_override_the_card_thresholds() -> None:
    card = _card(match_min_p=0.7, mismatch_min_score=0.99)
    assert policy_for(card, InferenceSettings()) == card.decision
    overridden = policy_for(card, InferenceSettings(mismatch_min_score=0.5))
    assert (overridden.match_min_p, overridden.mismatch_min_score) == (0.7, 0.5)
    assert overridden.chosen_on == "settings override"
    assert effective_policy(card) is card.decision


def test_prediction_maps_class_index_to_count() -> None:
    p = prediction_from_probs([0.1, 0.6, 0.1, 0.1, 0.1], [0, 2, 0, 0, 0], SUPPORTED)
    assert p.count == 2
    assert p.confidence == pytest.approx(0.6)
    assert p.probabilities["2"] == pytest.approx(0.6)
    assert p.scores == (0.0, 2.0, 0.0, 0.0, 0.0)
    assert p.p_of(2) == pytest.approx(0.6) and p.p_of(7) is None


def test_prediction_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="classes"):
        prediction_from_probs([0.5, 0.5], [0, 0], SUPPORTED)
