"""Re-drive dead letters: republish their stored payloads after the cause was fixed.

One transaction selects the letters (``FOR UPDATE SKIP LOCKED``: two concurrent runs never
send the same letter), the producer sends and flushes them, and the same transaction stamps
``redriven_at``/``redriven_to`` before it commits. A second run therefore finds nothing. If the
process dies between the flush and the commit, the letters are sent again by the next run:
re-drive is at-least-once like the rest of the stream, and the worker's idempotent writes
(one verdict per event id and model version) absorb a repeat.

A letter whose payload was truncated (over 64 KiB) or absent cannot be re-driven; it is
counted and left as it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, and_, func, select, update

from core.producer import EventProducer
from core.settings import KafkaSettings
from core.tables import dead_letters
from schemas.records import ErrorKind

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RedriveFilter:
    kinds: tuple[ErrorKind, ...] = ()
    since: datetime | None = None  # first_seen >= since
    until: datetime | None = None  # first_seen < until
    source_topic: str | None = None


@dataclass
class RedriveReport:
    selected: int = 0
    sent: int = 0
    unsendable: int = 0  # payload truncated or absent
    by_kind: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False


def _conditions(flt: RedriveFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [dead_letters.c.redriven_at.is_(None)]
    if flt.kinds:
        conds.append(dead_letters.c.error_kind.in_([k.value for k in flt.kinds]))
    if flt.since is not None:
        conds.append(dead_letters.c.first_seen >= flt.since)
    if flt.until is not None:
        conds.append(dead_letters.c.first_seen < flt.until)
    if flt.source_topic is not None:
        conds.append(dead_letters.c.topic == flt.source_topic)
    return conds


def redrive(engine: Engine, kafka: KafkaSettings, flt: RedriveFilter, *,
            to_topic: str | None = None, dry_run: bool = False) -> RedriveReport:
    """Republish the matching dead letters not re-driven yet (each to ``to_topic``, or to
    the topic it came from) and mark them; with ``dry_run`` only count them."""
    report = RedriveReport(dry_run=dry_run)
    query = (select(dead_letters.c.id, dead_letters.c.topic, dead_letters.c.partition,
                    dead_letters.c.offset, dead_letters.c.key, dead_letters.c.payload,
                    dead_letters.c.payload_truncated, dead_letters.c.error_kind,
                    dead_letters.c.event_id)
             .where(and_(*_conditions(flt))).order_by(dead_letters.c.id)
             .with_for_update(skip_locked=True))
    with engine.begin() as conn:
        rows = conn.execute(query).all()
        report.selected = len(rows)
        sendable = [r for r in rows if r.payload is not None and not r.payload_truncated]
        report.unsendable = len(rows) - len(sendable)
        report.by_kind.update(r.error_kind for r in sendable)
        if dry_run or not sendable:
            return report
        with EventProducer(kafka) as producer:
            sends = []
            for r in sendable:
                target = to_topic or r.topic
                sends.append(producer.send(target, key=r.key or "", value=bytes(r.payload)))
                log.info("re-driving dead letter %s[%d]@%d event %s (%s) to %s", r.topic,
                         r.partition, r.offset, r.event_id or "-", r.error_kind, target)
            producer.flush()
            for sent in sends:  # raises if the broker refused one: nothing is marked
                sent.get(timeout=SEND_TIMEOUT_S)
        for target in {to_topic or r.topic for r in sendable}:
            ids = [r.id for r in sendable if (to_topic or r.topic) == target]
            conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids))
                         .values(redriven_at=func.now(), redriven_to=target))
        report.sent = len(sendable)
    return report
