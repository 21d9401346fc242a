"""Outcome → database records (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.model.card import DecisionPolicy
from inference.compare import Prediction, decide
from inference.shadow import ShadowBatch
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


@dataclass(frozen=True)
class ShadowVerdict:
    """One ``shadow_results`` row: what the shadow would have said about an event."""

    deployment: str
    event_id: str
    model_version: str
    production_version: str
    topic: str
    partition: int
    offset: int
    bin_id: str
    expected_quantity: int
    predicted_quantity: int
    confidence: float
    p_expected: float | None
    discrepancy_score: float | None
    status: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def shadow_records(batch: ShadowBatch, *, deployment: str,
                   policy: DecisionPolicy) -> list[ShadowVerdict]:
    """The shadow's verdicts for the events of one batch, judged with the shadow's own
    policy (``policy``) and classes; nothing when its forward pass failed."""
    if batch.predictions is None:
        return []
    out = []
    for item, prediction in zip(batch.items, batch.predictions, strict=True):
        event, pos = item.event, item.position
        if event is None or pos is None:
            continue  # image bytes without an event (HTTP): nothing to record
        judged = decide(prediction, expected=event.expected_quantity,
                        supported_counts=batch.card.class_counts, policy=policy)
        out.append(ShadowVerdict(
            deployment=deployment, event_id=event.event_id, model_version=batch.model_version,
            production_version=batch.production_version, topic=pos.topic,
            partition=pos.partition, offset=pos.offset, bin_id=event.bin_id,
            expected_quantity=event.expected_quantity, predicted_quantity=prediction.count,
            confidence=prediction.confidence, p_expected=judged.p_expected,
            discrepancy_score=judged.discrepancy_score, status=judged.status.value))
    return out


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
