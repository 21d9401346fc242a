"""Event ids reused with a different payload (pure: no database).

A verdict is keyed by (event_id, model_version): a redelivered event must be a no-op, but a
different event that reuses the id (a buggy or hostile producer) must not be silently lost
with its offset committed. Since ``audit_results`` is partitioned by month (migration 0010),
its unique key is (event_id, model_version, captured_at), so a reused id with another capture
time would not even conflict. The sink therefore looks each batch's keys up *before*
inserting (one indexed SELECT) and :func:`judge` compares each verdict with the row holding
its key: same position, or same event (same bin, image, capture time and expected quantity)
→ the redelivery it looks like, skipped; otherwise → a ``duplicate_event_id`` dead letter
that names the first record's position. Within one batch, :func:`split_in_batch` does the
same. The insert's ``ON CONFLICT`` on the full key still covers a concurrent worker writing
the same event; its misses are judged again against the row that won.

Not covered: two *different* events with one id and different capture times, written by two
workers in overlapping transactions, can both go in (neither sees the other's uncommitted
row; the old key (event_id, model_version) made the second wait and conflict). It takes a
producer bug and a race of milliseconds; ``SELECT event_id, model_version FROM audit_results
GROUP BY 1, 2 HAVING count(*) > 1`` finds such pairs afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from core.producer import REDRIVE_COUNT_HEADER
from inference.outcomes import dead_letter_record
from schemas.records import AuditVerdict, DeadLetterRecord, ErrorKind, EventError

Position = tuple[str, int, int]
Key = tuple[str, str]  # (event_id, model_version)
# The columns that make two records the same event (the payload, as stored in a verdict).
SAME_EVENT = ("bin_id", "image_uri", "captured_at", "expected_quantity")


@dataclass(frozen=True)
class RecordSource:
    """What a dead letter made from a verdict needs of the record it came from."""

    key: bytes | None = None
    value: bytes | None = None
    redrive_count: int = 0

    @classmethod
    def of(cls, record: Any) -> RecordSource:
        """The raw key, payload and re-drive count of a Kafka record (None: a test's item)."""
        headers = dict(getattr(record, "headers", None) or [])
        try:
            count = int(headers.get(REDRIVE_COUNT_HEADER, b"0"))
        except ValueError:
            count = 0  # a producer's own header, not a re-drive's
        return cls(key=getattr(record, "key", None), value=getattr(record, "value", None),
                   redrive_count=max(0, count))


def key_of(verdict: AuditVerdict) -> Key:
    return verdict.event_id, verdict.model_version


def position_of(row: Any) -> Position:
    return row.topic, row.partition, row.offset


def same_event(a: Any, b: Any) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in SAME_EVENT)


def split_in_batch(verdicts: Iterable[AuditVerdict]
                   ) -> tuple[list[AuditVerdict], list[tuple[AuditVerdict, AuditVerdict]]]:
    """The first verdict of each key, and (later verdict, first verdict) pairs whose payloads
    differ; a later verdict of the same event (a redelivery in the same batch) is dropped."""
    first: dict[Key, AuditVerdict] = {}
    clashes: list[tuple[AuditVerdict, AuditVerdict]] = []
    for verdict in verdicts:
        holder = first.setdefault(key_of(verdict), verdict)
        if holder is not verdict and not same_event(holder, verdict):
            clashes.append((verdict, holder))
    return list(first.values()), clashes


def judge(verdicts: Iterable[AuditVerdict], holders: dict[Key, Any]
          ) -> tuple[list[AuditVerdict], list[tuple[AuditVerdict, Any]]]:
    """Split verdicts by the rows that already hold their keys: (verdicts to insert, (verdict,
    holding row) pairs of reused event ids). A verdict whose holder is itself (same position)
    or the same event is neither: the idempotent no-op."""
    fresh: list[AuditVerdict] = []
    reused: list[tuple[AuditVerdict, Any]] = []
    for verdict in verdicts:
        row = holders.get(key_of(verdict))
        if row is None:
            fresh.append(verdict)
        elif position_of(row) != position_of(verdict) and not same_event(row, verdict):
            reused.append((verdict, row))
    return fresh, reused


def duplicate_letter(verdict: AuditVerdict, holder: Any,
                     source: Callable[[Position], RecordSource]) -> DeadLetterRecord:
    """The dead letter of ``verdict``, whose event id ``holder`` (a verdict or a row) has."""
    pos = position_of(verdict)
    raw = source(pos)
    topic, partition, offset = position_of(holder)
    first = f"{topic}[{partition}]@{offset}"
    differs = ", ".join(name for name in SAME_EVENT
                        if getattr(holder, name) != getattr(verdict, name))
    error = EventError(ErrorKind.DUPLICATE_EVENT_ID,
                       f"event id {verdict.event_id} already has a verdict (model "
                       f"{verdict.model_version}) from {first}, whose event differs in "
                       f"{differs}: this record was not judged")
    return dead_letter_record(topic=pos[0], partition=pos[1], offset=pos[2], key=raw.key,
                              payload=raw.value, event_id=verdict.event_id, error=error)
