"""Monthly range partitions of ``audit_results`` (migration 0010): names, bounds and DDL
(pure), and the three maintenance operations behind ``binaudit db partitions``.

One partition per calendar month of ``captured_at`` in UTC, named ``audit_results_y2026m11``,
plus ``audit_results_default`` for rows no month partition takes (clock-skewed or back-filled
events). Partition bounds cannot be bind parameters in DDL, so they are written only from
:class:`Month` values (validated integers), never from text a user typed; identifiers go
through Postgres' own quoting rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql

PARENT = "audit_results"
DEFAULT_PARTITION = f"{PARENT}_default"
# Fail fast rather than queue the workers' inserts behind a DDL lock for long.
LOCK_TIMEOUT = "5s"
_NAME = re.compile(rf"^{PARENT}_y(\d{{4}})m(\d{{2}})$")
_QUOTE = postgresql.dialect().identifier_preparer.quote


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month (UTC)."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1 <= self.month <= 12 and 1 <= self.year <= 9998):
            raise ValueError(f"not a month: {self.year}-{self.month}")

    @classmethod
    def of(cls, at: datetime) -> Month:
        """The UTC month of an aware timestamp."""
        if at.tzinfo is None:
            raise ValueError("naive timestamp: partition months are UTC")
        utc = at.astimezone(UTC)
        return cls(utc.year, utc.month)

    @classmethod
    def parse(cls, value: str) -> Month:
        """``YYYY-MM`` (the command line's form)."""
        match = re.fullmatch(r"(\d{4})-(\d{2})", value.strip())
        if not match:
            raise ValueError(f"expected YYYY-MM, got {value!r}")
        return cls(int(match[1]), int(match[2]))

    def plus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.plus(1).start

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def partition_name(month: Month) -> str:
    return f"{PARENT}_y{month.year:04d}m{month.month:02d}"


def month_of_name(name: str) -> Month | None:
    """The month a partition name stands for; None for other tables (the default one)."""
    match = _NAME.match(name)
    return Month(int(match[1]), int(match[2])) if match else None


def quote(identifier: str) -> str:
    return _QUOTE(identifier)


def _literal(at: datetime) -> str:
    # Only from Month.start/end: aware UTC datetimes, so the text is digits and separators.
    return "'" + at.astimezone(UTC).isoformat(sep=" ") + "'"


def create_partition_sql(month: Month) -> str:
    return (f"CREATE TABLE {quote(partition_name(month))} PARTITION OF {quote(PARENT)} "
            f"FOR VALUES FROM ({_literal(month.start)}) TO ({_literal(month.end)})")


def create_default_sql() -> str:
    return f"CREATE TABLE {quote(DEFAULT_PARTITION)} PARTITION OF {quote(PARENT)} DEFAULT"


def months_ahead(now: datetime, ahead: int) -> list[Month]:
    """The current month and ``ahead`` months after it."""
    if ahead < 0:
        raise ValueError("months ahead must be >= 0")
    current = Month.of(now)
    return [current.plus(i) for i in range(ahead + 1)]


def droppable(names: list[str], before: Month, now: datetime) -> list[str]:
    """The month partitions strictly before ``before``; refuses a ``before`` after the current
    month (that would drop the month being written, or later ones)."""
    if before > Month.of(now):
        raise ValueError(f"refusing to drop {Month.of(now)} or later: --before {before} is "
                         f"after the current month")
    months = {name: month_of_name(name) for name in names}
    return sorted(n for n, m in months.items() if m is not None and m < before)


# ---- thin operations on a connection ------------------------------------------------------


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    bound: str  # as Postgres prints it
    rows: int  # the planner's estimate (exact for the default partition)
    default: bool


def partition_tables(conn: Connection) -> set[str]:
    """Every partition (of any table) in the current schema: not part of the metadata."""
    return set(conn.execute(text(
        "SELECT c.relname FROM pg_class c WHERE c.relispartition AND c.relkind IN ('r', 'p') "
        "AND c.relnamespace = current_schema()::regnamespace")).scalars())


def list_partitions(conn: Connection) -> list[PartitionInfo]:
    """The partitions of ``audit_results`` in bound order, the default one last."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound, "
        "greatest(c.reltuples, 0)::bigint AS estimate "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST(:parent AS regclass) ORDER BY c.relname"),
        {"parent": quote(PARENT)}).all()
    out = []
    for name, bound, estimate in rows:
        default = bound == "DEFAULT"
        if default:  # small by design, and the one number an operator must trust
            estimate = conn.execute(text(f"SELECT count(*) FROM {quote(name)}")).scalar_one()
        out.append(PartitionInfo(name, bound, int(estimate), default))
    return sorted(out, key=lambda p: (p.default, p.name))


def _lock_parent(conn: Connection) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text(f"LOCK TABLE {quote(PARENT)} IN ACCESS EXCLUSIVE MODE"))


def create_month(conn: Connection, month: Month, *, has_default: bool = True) -> int:
    """Create ``month``'s partition, first moving the default partition's rows of that month
    out of the way (Postgres refuses the new bound while the default holds such rows); they
    go back through the parent into the new partition. Returns the rows moved. Run inside
    the caller's transaction: all of it or nothing."""
    _lock_parent(conn)
    if not has_default:
        conn.execute(text(create_partition_sql(month)))
        return 0
    default = quote(DEFAULT_PARTITION)
    bounds = {"lo": month.start, "hi": month.end}
    conn.execute(text(f"CREATE TEMP TABLE binaudit_moving (LIKE {quote(PARENT)}) "
                      "ON COMMIT DROP"))
    moved = conn.execute(text(
        f"WITH moved AS (DELETE FROM {default} WHERE captured_at >= :lo AND captured_at < :hi "
        "RETURNING *) INSERT INTO binaudit_moving SELECT * FROM moved"), bounds).rowcount
    conn.execute(text(create_partition_sql(month)))
    conn.execute(text(f"INSERT INTO {quote(PARENT)} SELECT * FROM binaudit_moving"))
    conn.execute(text("DROP TABLE binaudit_moving"))
    return int(moved)


def ensure(conn: Connection, now: datetime, ahead: int) -> dict[str, int]:
    """Create the missing partitions for the current month and ``ahead`` more; returns each
    created partition's name with the rows moved into it from the default partition."""
    existing = {p.name for p in list_partitions(conn)}
    created = {}
    for month in months_ahead(now, ahead):
        name = partition_name(month)
        if name not in existing:
            created[name] = create_month(conn, month,
                                         has_default=DEFAULT_PARTITION in existing)
    return created


def would_drop(conn: Connection, before: Month, now: datetime) -> list[str]:
    """The month partitions that :func:`drop_before` would drop (see :func:`droppable`)."""
    return droppable([p.name for p in list_partitions(conn)], before, now)


def drop_before(conn: Connection, before: Month, now: datetime) -> list[str]:
    """Detach and drop the month partitions strictly before ``before`` (see
    :func:`droppable`); the default partition is never dropped. Returns their names."""
    names = would_drop(conn, before, now)
    if names:
        _lock_parent(conn)
    for name in names:
        conn.execute(text(f"ALTER TABLE {quote(PARENT)} DETACH PARTITION {quote(name)}"))
        conn.execute(text(f"DROP TABLE {quote(name)}"))
    return names
