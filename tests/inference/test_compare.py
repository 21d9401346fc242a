import pytest

from inference.compare import decide, prediction_from_probs
from schemas.records import VerdictStatus

SUPPORTED = [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("predicted", "confidence", "expected", "threshold", "status"), [
    (3, 0.9, 3, 0.5, VerdictStatus.MATCH),
    (2, 0.9, 3, 0.5, VerdictStatus.MISMATCH),
    (3, 0.3, 3, 0.5, VerdictStatus.UNCERTAIN),
    (2, 0.3, 3, 0.5, VerdictStatus.UNCERTAIN),
    (5, 0.99, 12, 0.5, VerdictStatus.UNSUPPORTED),
    (1, 0.99, 0, 0.5, VerdictStatus.UNSUPPORTED),
    (4, 0.2, 48, 0.5, VerdictStatus.UNSUPPORTED),
    (4, 0.0, 4, 0.0, VerdictStatus.MATCH),
])
def test_decide_table(predicted: int, confidence: float, expected: int, threshold: float,
                      status: VerdictStatus) -> None:
    assert decide(predicted=predicted, confidence=confidence, expected=expected,
                  supported_counts=SUPPORTED, uncertain_threshold=threshold) is status


def test_prediction_maps_class_index_to_count() -> None:
    p = prediction_from_probs([0.1, 0.6, 0.1, 0.1, 0.1], [0, 2, 0, 0, 0], SUPPORTED)
    assert p.count == 2
    assert p.confidence == pytest.approx(0.6)
    assert p.probabilities["2"] == pytest.approx(0.6)
    assert p.scores == (0.0, 2.0, 0.0, 0.0, 0.0)


def test_prediction_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="classes"):
        prediction_from_probs([0.5, 0.5], [0, 0], SUPPORTED)
