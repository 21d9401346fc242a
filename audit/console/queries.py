"""The console's reads: the review queue (keyset-paged on the open-queue index), one bin's
page, and the overview's aggregates. Every query reads the auditors' views (migration 0002-0004),
so it runs under the viewer's read-only role as well as the reviewer's; all values are bound
parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Select,
    and_,
    column,
    func,
    literal_column,
    or_,
    select,
    table,
    union_all,
)

from core.tables import REVIEW_STATES
from core.timewindow import choose_day_window, parse_time

QUEUE_COLUMNS = (
    "discrepancy_id", "event_id", "bin_id", "captured_at", "station_id", "robot_id",
    "expected_quantity", "predicted_quantity", "confidence", "p_expected", "discrepancy_score",
    "model_version", "status", "review_state", "reviewer", "reviewed_at", "reviewed_quantity",
    "note", "image_uri", "created_at",
)
mismatches = table("mismatches", *(column(c) for c in QUEUE_COLUMNS))
verdicts = table("verdicts", *(column(c) for c in (
    "verdict_id", "event_id", "bin_id", "captured_at", "station_id", "robot_id",
    "expected_quantity", "predicted_quantity", "confidence", "p_expected", "discrepancy_score",
    "class_probabilities", "status", "model_version", "image_uri", "processed_at")))
models = table("console_models", column("version"), column("class_counts"))
dead_letters = table("console_dead_letters", column("id"), column("error_kind"),
                     column("first_seen"))
REVIEW_FILTERS = ("open", "confirmed", "dismissed", "reviewed", "any")


class QueryError(ValueError):
    """A filter or cursor that cannot be used (says which and why)."""


@dataclass(frozen=True)
class QueueFilter:
    station: str | None = None
    robot: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str = "open"
    min_score: float | None = None
    max_score: float | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> QueueFilter:
        def text_of(key: str) -> str | None:
            value = (params.get(key) or "").strip()
            return value[:200] or None

        def number(key: str) -> float | None:
            value = text_of(key)
            if value is None:
                return None
            try:
                return float(value)
            except ValueError as exc:
                raise QueryError(f"{key} must be a number") from exc

        def moment(key: str) -> datetime | None:
            value = text_of(key)
            try:
                return parse_time(value) if value else None
            except ValueError as exc:
                raise QueryError(f"{key}: {exc}") from exc

        state = text_of("state") or "open"
        if state not in REVIEW_FILTERS:
            raise QueryError(f"state must be one of {', '.join(REVIEW_FILTERS)}")
        return cls(station=text_of("station"), robot=text_of("robot"),
                   model_version=text_of("model"), since=moment("since"),
                   until=moment("until"), state=state, min_score=number("min_score"),
                   max_score=number("max_score"))

    def params(self) -> dict[str, str]:
        """The query-string form (round-trips through ``from_params``)."""
        out = {"station": self.station, "robot": self.robot, "model": self.model_version,
               "since": self.since.isoformat() if self.since else None,
               "until": self.until.isoformat() if self.until else None,
               "state": None if self.state == "open" else self.state,
               "min_score": None if self.min_score is None else repr(self.min_score),
               "max_score": None if self.max_score is None else repr(self.max_score)}
        return {k: v for k, v in out.items() if v is not None}

    def query_string(self) -> str:
        return urlencode(self.params())

    def clauses(self) -> list[ColumnElement[bool]]:
        v = mismatches.c
        out: list[ColumnElement[bool]] = []
        if self.state == "reviewed":
            out.append(v.review_state.in_(("confirmed", "dismissed")))
        elif self.state in REVIEW_STATES:
            out.append(v.review_state == self.state)
        for value, col in ((self.station, v.station_id), (self.robot, v.robot_id),
                           (self.model_version, v.model_version)):
            if value is not None:
                out.append(col == value)
        if self.since is not None:
            out.append(v.captured_at >= self.since)
        if self.until is not None:
            out.append(v.captured_at < self.until)
        score = v.discrepancy_score
        if self.min_score is not None:
            out.append(score >= self.min_score)
        if self.max_score is not None:
            out.append(score <= self.max_score)
        return out


@dataclass(frozen=True)
class Cursor:
    """A position in the queue's order (score DESC NULLS LAST, id): rows after it follow."""

    score: float | None
    id: int

    def encode(self) -> str:
        return f"{'null' if self.score is None else repr(self.score)}:{self.id}"

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        try:
            score, ident = raw.split(":", 1)
            return cls(None if score == "null" else float(score), int(ident))
        except ValueError as exc:
            raise QueryError("bad page cursor") from exc

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Cursor:
        return cls(row["discrepancy_score"], int(row["discrepancy_id"]))


def _ordered(query: Select[Any]) -> Select[Any]:
    v = mismatches.c
    return query.order_by(v.discrepancy_score.desc().nulls_last(), v.discrepancy_id)


def queue_query(filters: QueueFilter, after: Cursor | None, limit: int) -> Select[Any]:
    """Keyset page: each branch is one range scan of the open-queue index (score DESC NULLS
    LAST, id), so a deep page costs what the first page costs."""
    v = mismatches.c
    base = select(mismatches).where(*filters.clauses())
    if after is None:
        return _ordered(base).limit(limit)
    score, nulls = v.discrepancy_score, v.discrepancy_score.is_(None)
    if after.score is None:
        return _ordered(base.where(nulls, v.discrepancy_id > after.id)).limit(limit)
    branches = [
        _ordered(base.where(score == after.score, v.discrepancy_id > after.id)).limit(limit),
        _ordered(base.where(score < after.score)).limit(limit),
        _ordered(base.where(nulls)).limit(limit),
    ]
    combined = union_all(*branches).subquery("page")
    return (select(combined)
            .order_by(combined.c.discrepancy_score.desc().nulls_last(),
                      combined.c.discrepancy_id).limit(limit))


@dataclass(frozen=True)
class QueuePage:
    rows: list[dict[str, Any]]
    next_cursor: Cursor | None


def queue_page(conn: Connection, filters: QueueFilter, after: Cursor | None,
               limit: int) -> QueuePage:
    rows = [dict(r) for r in conn.execute(queue_query(filters, after, limit + 1)).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    return QueuePage(rows, Cursor.of(rows[-1]) if more and rows else None)


def next_open(conn: Connection, filters: QueueFilter, after: Cursor) -> int | None:
    """The discrepancy that follows ``after`` in the open queue under ``filters``."""
    page = queue_page(conn, replace(filters, state="open"), after, 1)
    return int(page.rows[0]["discrepancy_id"]) if page.rows else None


def discrepancy(conn: Connection, discrepancy_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(mismatches).where(mismatches.c.discrepancy_id == discrepancy_id)
                       ).mappings().one_or_none()
    return dict(row) if row else None


def verdict_of(conn: Connection, event_id: str, model_version: str) -> dict[str, Any] | None:
    v = verdicts.c
    row = conn.execute(select(verdicts).where(v.event_id == event_id,
                                              v.model_version == model_version)
                       ).mappings().one_or_none()
    return dict(row) if row else None


def bin_history(conn: Connection, bin_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The bin's verdicts, newest capture first, every model version that judged it."""
    v = verdicts.c
    query = (select(v.verdict_id, v.event_id, v.captured_at, v.station_id, v.expected_quantity,
                    v.predicted_quantity, v.confidence, v.discrepancy_score, v.status,
                    v.model_version, v.processed_at)
             .where(v.bin_id == bin_id)
             .order_by(v.captured_at.desc(), v.model_version).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def class_counts(conn: Connection, model_version: str) -> list[int] | None:
    raw = conn.execute(select(models.c.class_counts).where(models.c.version == model_version)
                       ).scalar_one_or_none()
    if isinstance(raw, list) and all(isinstance(c, int) for c in raw):
        return list(raw)
    return None


def probability_bars(probabilities: Any, counts: list[int] | None) -> list[tuple[str, float]]:
    """(count label, probability) pairs from either stored shape: a {"count": p} dict (the
    worker's) or a list aligned with the model card's class_counts. Anything else: none."""
    pairs: list[tuple[str, float]] = []
    if isinstance(probabilities, dict):
        for key, value in probabilities.items():
            if isinstance(value, int | float):
                pairs.append((str(key), float(value)))
        def order(pair: tuple[str, float]) -> tuple[int, float | str]:
            try:
                return (0, float(pair[0]))
            except ValueError:
                return (1, pair[0])
        pairs.sort(key=order)
    elif isinstance(probabilities, list):
        labels = ([str(c) for c in counts] if counts and len(counts) == len(probabilities)
                  else [f"class {i}" for i in range(len(probabilities))])
        pairs = [(label, float(p)) for label, p in zip(labels, probabilities, strict=True)
                 if isinstance(p, int | float)]
    return [(label, min(max(p, 0.0), 1.0)) for label, p in pairs]


def filter_choices(conn: Connection) -> dict[str, list[str]]:
    """Model versions for the filter's drop-down (the registered ones)."""
    versions = conn.execute(select(models.c.version).order_by(models.c.version)).scalars()
    return {"models": [str(v) for v in versions]}


# ---- overview ------------------------------------------------------------------------------

def _utc_day(col: Any) -> Any:
    """The UTC calendar day of a timestamptz, whatever the session's time zone."""
    return func.date_trunc("day", func.timezone("UTC", col))


def _as_day(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


def newest_days(conn: Connection) -> tuple[date | None, date | None]:
    """The newest capture day among verdicts, and the newest day anything was processed
    (a verdict written, a dead letter seen, a review made), UTC."""
    v, m = verdicts.c, mismatches.c
    captured = conn.execute(select(func.max(v.captured_at))).scalar_one_or_none()
    # The newest verdict row (primary key) stands for max(processed_at), which has no index.
    processed = [conn.execute(select(v.processed_at).order_by(v.verdict_id.desc()).limit(1)
                              ).scalar_one_or_none(),
                 conn.execute(select(func.max(dead_letters.c.first_seen))).scalar_one_or_none(),
                 conn.execute(select(func.max(m.reviewed_at))).scalar_one_or_none()]
    newest = max((t for t in processed if t is not None), default=None)
    return (captured.astimezone(UTC).date() if captured else None,
            newest.astimezone(UTC).date() if newest else None)


def overview(conn: Connection, *, days: int, now: datetime | None = None,
             captured_last: date | None = None,
             processed_last: date | None = None) -> dict[str, Any]:
    """Daily rates by station and by model version over a window of capture days; dead
    letters and review throughput over a window of processing days; how reviews agreed
    with the model (all time). Each window is ``days`` whole UTC days chosen by
    :func:`choose_day_window` (recent, else ending at the newest day with data)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    newest_captured, newest_processed = newest_days(conn)
    cw = choose_day_window(newest_captured, days=days, today=today, last=captured_last)
    pw = choose_day_window(newest_processed, days=days, today=today, last=processed_last)
    v = verdicts.c
    day = _utc_day(v.captured_at).label("day")
    share = (lambda status: func.count().filter(v.status == status))  # noqa: E731
    rates: dict[str, list[dict[str, Any]]] = {}
    for key, col in (("station", v.station_id), ("model", v.model_version)):
        query = (select(day, func.coalesce(col, "(none)").label("series"),
                        func.count().label("total"), share("mismatch").label("mismatch"),
                        share("uncertain").label("uncertain"))
                 .where(v.captured_at >= cw.start, v.captured_at < cw.stop)
                 .group_by(literal_column("1"), literal_column("2"))
                 .order_by(literal_column("1")))
        rates[key] = [dict(r) | {"day": _as_day(r["day"])}
                      for r in conn.execute(query).mappings()]
    p_day = _utc_day(v.processed_at).label("day")
    events = (select(p_day, func.count(v.event_id.distinct()).label("events"))
              .where(v.processed_at >= pw.start, v.processed_at < pw.stop)
              .group_by(literal_column("1")))
    dl = dead_letters.c
    dead = (select(_utc_day(dl.first_seen).label("day"), func.count().label("dead"))
            .where(dl.first_seen >= pw.start, dl.first_seen < pw.stop)
            .group_by(literal_column("1")))
    m = mismatches.c
    reviews = (select(_utc_day(m.reviewed_at).label("day"), m.review_state,
                      func.count().label("n"))
               .where(m.reviewed_at >= pw.start, m.reviewed_at < pw.stop,
                      m.review_state.in_(("confirmed", "dismissed")))
               .group_by(literal_column("1"), m.review_state).order_by(literal_column("1")))
    open_count = conn.execute(select(func.count()).select_from(mismatches)
                              .where(m.review_state == "open")).scalar_one()
    return {
        "days": days, "captured": cw, "processed": pw,
        "newest_captured": newest_captured, "newest_processed": newest_processed,
        "rates": rates,
        "events": {_as_day(r["day"]): r["events"] for r in conn.execute(events).mappings()},
        "dead": {_as_day(r["day"]): r["dead"] for r in conn.execute(dead).mappings()},
        "reviews": [dict(r) | {"day": _as_day(r["day"])}
                    for r in conn.execute(reviews).mappings()],
        "agreement": _agreement(conn),
        "open": int(open_count),
    }


def _agreement(conn: Connection) -> list[dict[str, Any]]:
    m = mismatches.c
    query = (select(m.model_version, func.count().label("reviewed"),
                    func.count().filter(m.review_state == "confirmed").label("confirmed"),
                    func.count().filter(and_(m.review_state == "confirmed",
                                             m.reviewed_quantity == m.predicted_quantity))
                    .label("exact"),
                    func.avg(m.discrepancy_score.cast(Float)).label("mean_score"))
             .where(or_(m.review_state == "confirmed", m.review_state == "dismissed"))
             .group_by(m.model_version).order_by(m.model_version))
    return [dict(r) for r in conn.execute(query).mappings()]
