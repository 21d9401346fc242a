"""Monthly partitions of ``audit_results``: the month arithmetic and DDL (pure), and ensure,
list and drop on a throwaway database at head (``now`` is given, so months far from today
can be made and dropped without touching the ones the migration made)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError

from core.partitions import (
    DEFAULT_PARTITION,
    Month,
    create_partition_sql,
    drop_before,
    droppable,
    ensure,
    list_partitions,
    month_of_name,
    months_ahead,
    partition_name,
    would_drop,
)
from core.tables import audit_results

NOW = datetime(2031, 5, 15, 12, 0, tzinfo=UTC)  # far from the migration's own months


def test_months() -> None:
    assert Month.of(datetime(2026, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == Month(
        2026, 3)  # the UTC month, not the local one
    assert Month(2026, 11).plus(2) == Month(2027, 1)
    assert Month(2026, 1).plus(-1) == Month(2025, 12)
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert Month.parse("2026-03") == Month(2026, 3) and str(Month(2026, 3)) == "2026-03"
    for bad in ("2026-13", "2026-3", "26-03", "2026-03'; DROP TABLE x; --", ""):
        with pytest.raises(ValueError):
            Month.parse(bad)
    with pytest.raises(ValueError):
        Month.of(datetime(2026, 3, 1))  # naive: no month in UTC
    assert months_ahead(datetime(2026, 11, 30, 23, 0, tzinfo=UTC), 2) == [
        Month(2026, 11), Month(2026, 12), Month(2027, 1)]


def test_names_and_ddl() -> None:
    assert partition_name(Month(2026, 11)) == "audit_results_y2026m11"
    assert month_of_name("audit_results_y2026m11") == Month(2026, 11)
    assert month_of_name(DEFAULT_PARTITION) is None
    assert month_of_name("audit_results_y2026m11_pkey") is None
    assert create_partition_sql(Month(2026, 12)) == (
        "CREATE TABLE audit_results_y2026m12 PARTITION OF audit_results FOR VALUES FROM "
        "('2026-12-01 00:00:00+00:00') TO ('2027-01-01 00:00:00+00:00')")


def test_droppable_refuses_the_current_month_and_later() -> None:
    names = [partition_name(Month(2031, m)) for m in (3, 4, 5, 6)] + [DEFAULT_PARTITION]
    assert droppable(names, Month(2031, 5), NOW) == [
        "audit_results_y2031m03", "audit_results_y2031m04"]
    assert droppable(names, Month(2031, 4), NOW) == ["audit_results_y2031m03"]
    with pytest.raises(ValueError, match="refusing"):
        droppable(names, Month(2031, 6), NOW)  # would drop May, the month being written


# ---- on a database --------------------------------------------------------------------


def _row(captured_at: datetime) -> dict[str, Any]:
    return {"event_id": f"evt-{uuid.uuid4().hex}", "bin_id": "bin-1", "image_uri": "s3://b/k",
            "captured_at": captured_at, "expected_quantity": 1, "status": "match",
            "model_version": "m-1", "topic": "t", "partition": 0, "offset": 0}


def _put(engine: Engine, captured_at: datetime) -> int:
    with engine.begin() as conn:
        return int(conn.execute(insert(audit_results).values(**_row(captured_at)).returning(
            audit_results.c.id)).scalar_one())


def _home(engine: Engine, row_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT tableoid::regclass::text FROM audit_results "
                                 "WHERE id = :i"), {"i": row_id}).scalar_one_or_none()


@pytest.mark.services
def test_ensure_creates_months_and_moves_the_default_partitions_rows(
        own_engine: Engine) -> None:
    june = _put(own_engine, datetime(2031, 6, 10, tzinfo=UTC))  # no partition yet
    december = _put(own_engine, datetime(2031, 12, 1, tzinfo=UTC))
    assert _home(own_engine, june) == DEFAULT_PARTITION
    with own_engine.begin() as conn:
        created = ensure(conn, NOW, 2)
    assert created == {"audit_results_y2031m05": 0, "audit_results_y2031m06": 1,
                       "audit_results_y2031m07": 0}
    assert _home(own_engine, june) == "audit_results_y2031m06"  # same id, its month now
    assert _home(own_engine, december) == DEFAULT_PARTITION
    with own_engine.begin() as conn:
        assert ensure(conn, NOW, 2) == {}  # idempotent
        listed = {p.name: p for p in list_partitions(conn)}
    assert listed[DEFAULT_PARTITION].default and listed[DEFAULT_PARTITION].rows == 1
    assert "FROM ('2031-06-01" in listed["audit_results_y2031m06"].bound
    assert list(listed)[-1] == DEFAULT_PARTITION


@pytest.mark.services
def test_drop_removes_only_older_months(own_engine: Engine) -> None:
    with own_engine.begin() as conn:
        ensure(conn, NOW.replace(month=2), 3)  # February .. May 2031
    march, may = (_put(own_engine, datetime(2031, m, 2, tzinfo=UTC)) for m in (3, 5))
    with own_engine.begin() as conn:
        with pytest.raises(ValueError, match="refusing"):
            drop_before(conn, Month(2031, 6), NOW)
        # The migration's own months (around today) are older than 2031-04 too.
        older = would_drop(conn, Month(2031, 4), NOW)
        assert {"audit_results_y2031m02", "audit_results_y2031m03"} <= set(older)
        assert all(month_of_name(n) < Month(2031, 4) for n in older)  # type: ignore[operator]
        assert drop_before(conn, Month(2031, 4), NOW) == older
        left = {p.name for p in list_partitions(conn)}
    assert not set(older) & left
    assert {"audit_results_y2031m04", "audit_results_y2031m05", DEFAULT_PARTITION} <= left
    assert _home(own_engine, march) is None and _home(own_engine, may) == (
        "audit_results_y2031m05")


@pytest.mark.services
def test_a_month_cannot_be_made_twice_over_its_rows(own_engine: Engine) -> None:
    """Without the move, Postgres refuses the new bound (what ensure exists to avoid)."""
    august = datetime(2031, 8, 3, tzinfo=UTC)
    _put(own_engine, august)
    with own_engine.begin() as conn, pytest.raises(DBAPIError, match="default partition"):
        conn.execute(text(create_partition_sql(Month.of(august))))
