"""Re-drive dead letters: republish their stored payloads after the cause was fixed.

Work goes in batches of ``batch_size`` letters, each in its own transaction: select them
(``FOR UPDATE SKIP LOCKED LIMIT n``: two concurrent runs never send the same letter, and a
large re-drive never locks every row at once), send, wait for the broker to confirm each, stamp
``redriven_at``/``redriven_to`` and increment ``redrive_count``, commit. A second run therefore
finds nothing. If the process dies between the confirmation and the commit, that batch is sent
again by the next run: re-drive is at-least-once like the rest of the stream, and the worker's
idempotent writes (one verdict per event id and model version) absorb a repeat.

Without ``kinds`` only the retryable kinds are re-driven (``RETRYABLE_KINDS``: their cause can
be fixed outside the event); a kind about the event itself would only fail again. Each record
sent carries the letter's new count in a ``binaudit-redrive-count`` header, which a new dead
letter for it inherits; letters at ``max_redrives`` are skipped and counted, so a record that
never succeeds is not re-sent for ever.

A letter whose payload was truncated (over 64 KiB) or absent cannot be re-driven; it is
counted and left as it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, select, update

from core.producer import REDRIVE_COUNT_HEADER, EventProducer
from core.settings import KafkaSettings
from core.tables import dead_letters
from schemas.records import ErrorKind

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0
DEFAULT_MAX_REDRIVES = 3
DEFAULT_BATCH_SIZE = 500
# Kinds whose cause lies outside the event and can be fixed (an object uploaded late or
# restored, a permission granted, a bug or the model fixed, a worker that was stopping): what a
# plain re-drive sends. The rest are about the event itself and would only fail again.
RETRYABLE_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind.FETCH_FAILED, ErrorKind.MISSING_OBJECT, ErrorKind.ACCESS_DENIED,
    ErrorKind.INTERNAL_ERROR, ErrorKind.MODEL_ERROR, ErrorKind.SHUTTING_DOWN)


@dataclass(frozen=True)
class RedriveFilter:
    kinds: tuple[ErrorKind, ...] = ()  # empty: RETRYABLE_KINDS
    since: datetime | None = None  # first_seen >= since
    until: datetime | None = None  # first_seen < until
    source_topic: str | None = None


@dataclass
class RedriveReport:
    selected: int = 0
    sent: int = 0
    unsendable: int = 0  # payload truncated or absent
    over_limit: int = 0  # re-driven max_redrives times already: skipped
    batches: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False


def _conditions(flt: RedriveFilter, up_to_id: int | None = None) -> list[ColumnElement[bool]]:
    kinds = flt.kinds or RETRYABLE_KINDS
    conds: list[ColumnElement[bool]] = [
        dead_letters.c.redriven_at.is_(None),
        dead_letters.c.error_kind.in_([k.value for k in kinds])]
    if flt.since is not None:
        conds.append(dead_letters.c.first_seen >= flt.since)
    if flt.until is not None:
        conds.append(dead_letters.c.first_seen < flt.until)
    if flt.source_topic is not None:
        conds.append(dead_letters.c.topic == flt.source_topic)
    if up_to_id is not None:
        # Letters written while this run goes (a re-driven record failing again at once)
        # wait for the next run.
        conds.append(dead_letters.c.id <= up_to_id)
    return conds


def _sendable(max_redrives: int) -> list[ColumnElement[bool]]:
    return [dead_letters.c.payload.is_not(None), dead_letters.c.payload_truncated.is_(False),
            dead_letters.c.redrive_count < max_redrives]


def redrive(engine: Engine, kafka: KafkaSettings, flt: RedriveFilter, *,
            to_topic: str | None = None, dry_run: bool = False,
            max_redrives: int = DEFAULT_MAX_REDRIVES,
            batch_size: int = DEFAULT_BATCH_SIZE) -> RedriveReport:
    """Republish the matching dead letters not re-driven yet (each to ``to_topic``, or to
    the topic it came from) and mark them, ``batch_size`` per transaction; with ``dry_run``
    only count them."""
    report = RedriveReport(dry_run=dry_run)
    _count_skipped(engine, flt, max_redrives, report)
    if dry_run:
        with engine.connect() as conn:
            rows = conn.execute(select(dead_letters.c.error_kind).where(
                and_(*_conditions(flt), *_sendable(max_redrives)))).all()
        report.selected += len(rows)
        report.by_kind.update(r.error_kind for r in rows)
        return report
    with engine.connect() as conn:
        up_to_id = conn.execute(select(func.max(dead_letters.c.id))).scalar() or 0
    with EventProducer(kafka) as producer:
        while _redrive_batch(engine, producer, flt, report, up_to_id=up_to_id,
                             to_topic=to_topic, max_redrives=max_redrives,
                             batch_size=batch_size):
            pass
    return report


def _count_skipped(engine: Engine, flt: RedriveFilter, max_redrives: int,
                   report: RedriveReport) -> None:
    """Letters that match but will not be sent: no complete payload, or too many re-drives."""
    incomplete = dead_letters.c.payload.is_(None) | dead_letters.c.payload_truncated
    over = and_(~incomplete, dead_letters.c.redrive_count >= max_redrives)
    with engine.connect() as conn:
        unsendable, over_limit = conn.execute(
            select(func.count().filter(incomplete), func.count().filter(over))
            .where(and_(*_conditions(flt)))).one()
    report.unsendable += unsendable
    report.over_limit += over_limit
    report.selected += unsendable + over_limit


def _redrive_batch(engine: Engine, producer: EventProducer, flt: RedriveFilter,
                   report: RedriveReport, *, up_to_id: int, to_topic: str | None,
                   max_redrives: int, batch_size: int) -> bool:
    """Select, send, confirm and mark one batch in one transaction; False when none is left."""
    query = (select(dead_letters.c.id, dead_letters.c.topic, dead_letters.c.partition,
                    dead_letters.c.offset, dead_letters.c.key, dead_letters.c.payload,
                    dead_letters.c.error_kind, dead_letters.c.event_id,
                    dead_letters.c.redrive_count)
             .where(and_(*_conditions(flt, up_to_id), *_sendable(max_redrives)))
             .order_by(dead_letters.c.id).limit(batch_size)
             .with_for_update(skip_locked=True))
    with engine.begin() as conn:
        rows = conn.execute(query).all()
        if not rows:
            return False
        _send(producer, rows, to_topic)
        _mark(conn, rows, to_topic)
    report.selected += len(rows)
    report.sent += len(rows)
    report.batches += 1
    report.by_kind.update(r.error_kind for r in rows)
    return True


def _send(producer: EventProducer, rows: Sequence[Any], to_topic: str | None) -> None:
    sends = []
    for r in rows:
        target = to_topic or r.topic
        count = str(r.redrive_count + 1).encode()
        sends.append(producer.send_raw(target, key=(r.key or "").encode("utf-8"),
                                       value=bytes(r.payload),
                                       headers=[(REDRIVE_COUNT_HEADER, count)]))
        log.info("re-driving dead letter %s[%d]@%d event %s (%s, re-drive %d) to %s", r.topic,
                 r.partition, r.offset, r.event_id or "-", r.error_kind, r.redrive_count + 1,
                 target)
    producer.flush()
    for sent in sends:  # raises if the broker refused one: this batch is not marked
        sent.get(timeout=SEND_TIMEOUT_S)


def _mark(conn: Connection, rows: Sequence[Any], to_topic: str | None) -> None:
    for target in {to_topic or r.topic for r in rows}:
        ids = [r.id for r in rows if (to_topic or r.topic) == target]
        conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids))
                     .values(redriven_at=func.now(), redriven_to=target,
                             redrive_count=dead_letters.c.redrive_count + 1))
