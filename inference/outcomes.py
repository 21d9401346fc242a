"""Outcome → database records (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from core.model.card import DecisionPolicy
from inference.compare import Prediction, decide
from schemas.events import BinEvent
from schemas.records import (
    MAX_DEAD_LETTER_PAYLOAD,
    AuditVerdict,
    DeadLetterRecord,
    DiscrepancyRecord,
    EventError,
    VerdictStatus,
)


def verdict_records(*, event: BinEvent, topic: str, partition: int, offset: int,
                    prediction: Prediction, model_version: str, supported_counts: Sequence[int],
                    policy: DecisionPolicy) -> tuple[AuditVerdict, DiscrepancyRecord | None]:
    """The verdict row of one judged event, plus its discrepancy row when it is a mismatch."""
    judged = decide(prediction, expected=event.expected_quantity,
                    supported_counts=supported_counts, policy=policy)
    status = judged.status
    verdict = AuditVerdict(
        event_id=event.event_id, bin_id=event.bin_id, image_uri=event.image_uri,
        captured_at=event.captured_at, station_id=event.station_id, robot_id=event.robot_id,
        expected_quantity=event.expected_quantity, predicted_quantity=prediction.count,
        confidence=prediction.confidence, class_probabilities=prediction.probabilities,
        p_expected=judged.p_expected, discrepancy_score=judged.discrepancy_score, status=status,
        model_version=model_version, topic=topic, partition=partition, offset=offset,
    )
    if status is not VerdictStatus.MISMATCH:
        return verdict, None
    return verdict, DiscrepancyRecord(
        event_id=event.event_id, model_version=model_version, bin_id=event.bin_id,
        expected_quantity=event.expected_quantity, predicted_quantity=prediction.count,
        confidence=prediction.confidence, p_expected=judged.p_expected,
        discrepancy_score=judged.discrepancy_score,
    )


def dead_letter_record(*, topic: str, partition: int, offset: int, key: bytes | None,
                       payload: bytes | None, event_id: str | None,
                       error: EventError) -> DeadLetterRecord:
    body = payload or b""
    return DeadLetterRecord(
        topic=topic, partition=partition, offset=offset,
        key=_pg_text(key.decode("utf-8", "replace")) if key is not None else None,
        event_id=event_id, payload=body[:MAX_DEAD_LETTER_PAYLOAD],
        payload_truncated=len(body) > MAX_DEAD_LETTER_PAYLOAD,
        error_kind=error.kind, message=_pg_text(str(error))[:2000],
    )


def _pg_text(value: str) -> str:
    """Postgres text cannot hold NUL: psycopg2 raises ValueError for the whole batch, which
    stopped the worker on the same record after every restart (a Kafka key is attacker-chosen
    bytes). Keep it visible, escaped."""
    return value.replace("\x00", "\\x00")
