"""The Postgres sink on a real database: an event id reused by a *different* event becomes a
``duplicate_event_id`` dead letter in the same transaction (within one batch and against rows
already written), while a redelivery of the same event stays the idempotent no-op."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from core.settings import Settings
from schemas.records import AuditVerdict, DiscrepancyRecord, VerdictStatus
from worker.io.duplicates import RecordSource, position_of
from worker.io.pg_sink import ResultSink, WriteBatch

pytestmark = pytest.mark.services

CAPTURED = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def verdict(offset: int, *, event_id: str, topic: str, bin_id: str = "bin-1",
            expected: int = 2, predicted: int = 3,
            captured_at: datetime = CAPTURED) -> AuditVerdict:
    status = VerdictStatus.MATCH if expected == predicted else VerdictStatus.MISMATCH
    return AuditVerdict(
        event_id=event_id, bin_id=bin_id, image_uri=f"s3://b/{bin_id}.jpg",
        captured_at=captured_at, expected_quantity=expected, predicted_quantity=predicted,
        confidence=0.9, status=status, model_version="m-test", topic=topic, partition=0,
        offset=offset)


def discrepancy(v: AuditVerdict) -> DiscrepancyRecord:
    assert v.predicted_quantity is not None
    return DiscrepancyRecord(event_id=v.event_id, model_version=v.model_version,
                             bin_id=v.bin_id, expected_quantity=v.expected_quantity,
                             predicted_quantity=v.predicted_quantity, confidence=0.9)


def batch(*verdicts: AuditVerdict) -> WriteBatch:
    return WriteBatch(verdicts=list(verdicts), discrepancies=[
        discrepancy(v) for v in verdicts if v.status is VerdictStatus.MISMATCH])


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def test_a_reused_event_id_is_a_dead_letter_and_a_redelivery_is_not(
        services: Settings, clean_db: Engine) -> None:
    topic, event = f"t-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    first = verdict(0, event_id=event, topic=topic, expected=2, predicted=2)  # a match
    redelivered = verdict(1, event_id=event, topic=topic, expected=2, predicted=2)
    other_bin = verdict(2, event_id=event, topic=topic, bin_id="bin-9", expected=2,
                        predicted=4)  # a mismatch: its discrepancy must not be written
    raw = {(topic, 0, 2): RecordSource(key=b"bin-9", value=b'{"bin_id": "bin-9"}',
                                       redrive_count=1)}
    with ResultSink(services.db) as sink:
        result = sink.write(replace(batch(first, redelivered, other_bin), sources=raw))
        assert [(d.offset, d.error_kind.value) for d in result.duplicates] == [
            (2, "duplicate_event_id")]
        later = verdict(3, event_id=event, topic=topic, expected=5, predicted=4)
        assert [d.offset for d in sink.write(batch(later)).duplicates] == [3]
        # The first record again (a crash before its commit): nothing new, no letter.
        assert sink.write(batch(first)).duplicates == []
        assert sink.write(batch(redelivered)).duplicates == []

    assert rows(clean_db, 'SELECT "offset", status FROM audit_results WHERE event_id=:e',
                e=event) == [(0, "match")]
    assert rows(clean_db, "SELECT count(*) FROM discrepancies WHERE event_id=:e",
                e=event) == [(0,)]
    letters = rows(clean_db, 'SELECT "offset", error_kind, key, payload, message, '
                             "redrive_count FROM dead_letters WHERE topic=:t "
                             'ORDER BY "offset"', t=topic)
    assert [(r.offset, r.error_kind) for r in letters] == [
        (2, "duplicate_event_id"), (3, "duplicate_event_id")]
    assert letters[0].key == "bin-9" and bytes(letters[0].payload) == b'{"bin_id": "bin-9"}'
    assert letters[0].redrive_count == 1 and letters[1].redrive_count == 0
    assert f"{topic}[0]@0" in letters[0].message and "bin_id" in letters[0].message
    assert f"{topic}[0]@0" in letters[1].message and "expected_quantity" in letters[1].message


def test_the_judged_records_discrepancy_is_the_one_written(
        services: Settings, clean_db: Engine) -> None:
    topic, event = f"t-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    first = verdict(0, event_id=event, topic=topic, expected=2, predicted=4)
    clash = verdict(1, event_id=event, topic=topic, bin_id="bin-7", expected=1, predicted=5)
    with ResultSink(services.db) as sink:
        sink.write(WriteBatch(verdicts=[first, clash],
                              discrepancies=[discrepancy(clash), discrepancy(first)]))
    assert rows(clean_db, "SELECT bin_id, expected_quantity FROM discrepancies "
                          "WHERE event_id=:e", e=event) == [("bin-1", 2)]


def test_a_reused_event_id_with_another_capture_time_is_a_dead_letter(
        services: Settings, clean_db: Engine) -> None:
    """The unique key includes captured_at (monthly partitions, migration 0010), so only the
    sink's own lookup catches a reused id whose capture time differs, in the same or
    another month's partition."""
    topic, event = f"t-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    first = verdict(0, event_id=event, topic=topic, expected=2, predicted=2)
    later = [verdict(offset, event_id=event, topic=topic, expected=2, predicted=2,
                     captured_at=CAPTURED + shift)
             for offset, shift in ((1, timedelta(seconds=1)), (2, timedelta(days=40)))]
    with ResultSink(services.db) as sink:
        assert sink.write(batch(first)).duplicates == []
        for reused in later:  # each against the written row, not within one batch
            result = sink.write(batch(reused))
            assert [(d.offset, d.error_kind.value) for d in result.duplicates] == [
                (reused.offset, "duplicate_event_id")]
            assert result.not_judged == {position_of(reused)}
        assert sink.write(batch(first)).duplicates == []  # still the idempotent no-op

    assert rows(clean_db, 'SELECT "offset" FROM audit_results WHERE event_id=:e',
                e=event) == [(0,)]
    letters = rows(clean_db, 'SELECT "offset", message FROM dead_letters WHERE topic=:t '
                             'ORDER BY "offset"', t=topic)
    assert [r.offset for r in letters] == [1, 2]
    assert all(f"{topic}[0]@0" in r.message and "captured_at" in r.message for r in letters)
