"""Migration 0010: ``audit_results`` becomes monthly range partitions on ``captured_at`` with
its rows, ids, views and grants, and goes back to a plain table with them on downgrade.

One throwaway database for the module, migrated to 0009 and seeded with rows of three
months (one whose local date is already the next month) and with table and column grants,
then upgraded; the tests run in file order on it (the last one goes down and up again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.dialects.postgresql import insert

from core.partitions import Month, months_ahead, partition_name
from core.settings import Settings
from core.tables import audit_results
from migrations.runner import downgrade, upgrade

pytestmark = pytest.mark.services

AUDITOR = "binaudit_auditor"
REVIEWER = "binaudit_reviewer"
CONSOLE = "binaudit_console"
# Three months; the last row is 23:30 UTC on 31 March, but 1 April in its own time zone.
SEEDED = (datetime(2025, 1, 15, 8, 0, tzinfo=UTC), datetime(2025, 2, 1, 0, 0, tzinfo=UTC),
          datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC),
          datetime(2025, 4, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))))


@dataclass
class Db:
    settings: Settings
    engine: Engine
    seeded: dict[int, datetime]  # id -> captured_at


def _row(captured_at: datetime, *, event_id: str | None = None, offset: int = 0,
         mismatch: bool = False) -> dict[str, Any]:
    return {"event_id": event_id or f"evt-{uuid.uuid4().hex}", "bin_id": "bin-1",
            "image_uri": "s3://binaudit-images/k.jpg", "captured_at": captured_at,
            "expected_quantity": 3, "predicted_quantity": 2 if mismatch else 3,
            "confidence": 0.8, "p_expected": 0.1, "discrepancy_score": 0.9,
            "status": "mismatch" if mismatch else "match", "model_version": "m-1",
            "topic": "bin-events", "partition": 0, "offset": offset}


def _insert(conn: Connection, row: dict[str, Any]) -> int:
    return int(conn.execute(insert(audit_results).values(**row).returning(
        audit_results.c.id)).scalar_one())


@pytest.fixture(scope="module")
def db(fresh_database: Callable[..., Any]) -> Iterator[Db]:
    with fresh_database("binaudit_partitioning", migrate=False) as settings:
        engine = create_engine(settings.db.url.get_secret_value())
        upgrade(settings, "0009")
        seeded = {}
        with engine.begin() as conn:
            for i, at in enumerate(SEEDED):
                row = _row(at, offset=i, mismatch=i == 0)
                seeded[_insert(conn, row)] = at
                if i == 0:
                    conn.execute(text(
                        "INSERT INTO discrepancies (event_id, model_version, bin_id, "
                        "expected_quantity, predicted_quantity) VALUES (:e, 'm-1', 'bin-1', 3, 2)"),
                        {"e": row["event_id"]})
            # Grants an operator may have given (a table and a column privilege).
            conn.execute(text(f"GRANT SELECT, INSERT ON audit_results TO {CONSOLE}"))
            conn.execute(text(f"GRANT SELECT (event_id, captured_at) ON audit_results "
                              f"TO {REVIEWER}"))
            conn.execute(text("SELECT setval('audit_results_id_seq', 1000)"))
        upgrade(settings, "head")
        try:
            yield Db(settings, engine, seeded)
        finally:
            engine.dispose()


def _captured(conn: Connection) -> dict[int, datetime]:
    return dict(conn.execute(select(audit_results.c.id, audit_results.c.captured_at)).all())


def _where(conn: Connection) -> dict[int, str]:
    """Each row's id -> the partition it is stored in."""
    return dict(conn.execute(text(
        "SELECT id, tableoid::regclass::text FROM audit_results")).all())


def _partitions(conn: Connection) -> set[str]:
    return set(conn.execute(text(
        "SELECT inhrelid::regclass::text FROM pg_inherits "
        "WHERE inhparent = 'audit_results'::regclass")).scalars())


def _privileges(conn: Connection) -> tuple[Any, ...]:
    return tuple(conn.execute(text(
        "SELECT has_table_privilege(:c, 'audit_results', 'SELECT'), "
        "has_table_privilege(:c, 'audit_results', 'INSERT'), "
        "has_table_privilege(:c, 'audit_results', 'DELETE'), "
        "has_column_privilege(:r, 'audit_results', 'captured_at', 'SELECT'), "
        "has_column_privilege(:r, 'audit_results', 'bin_id', 'SELECT'), "
        "has_table_privilege(:a, 'audit_results', 'SELECT'), "
        "has_table_privilege(:a, 'verdicts', 'SELECT'), "
        "has_table_privilege(:a, 'mismatches', 'SELECT')"),
        {"c": CONSOLE, "r": REVIEWER, "a": AUDITOR}).one())


# console: SELECT, INSERT, no DELETE; reviewer: one column, not another; the auditor (not
# a member of anything here): the views, never the table.
GRANTED = (True, True, False, True, False, False, True, True)


def test_upgrade_partitions_the_table_and_keeps_rows_ids_views_and_grants(db: Db) -> None:
    with db.engine.connect() as conn:
        kind = conn.execute(text("SELECT relkind FROM pg_class "
                                 "WHERE oid = 'audit_results'::regclass")).scalar_one()
        assert kind == "p"
        stored = _captured(conn)
        assert stored == db.seeded
        where = _where(conn)
        expected = [partition_name(Month(2025, m)) for m in (1, 2, 2, 3)]
        assert [where[i] for i in sorted(db.seeded)] == expected
        partitions = _partitions(conn)
        now_and_ahead = {partition_name(m) for m in months_ahead(datetime.now(UTC), 2)}
        assert partitions == {*expected, *now_and_ahead, "audit_results_default"}
        assert _privileges(conn) == GRANTED
        # Partitions grant nothing: every role goes through the parent.
        assert conn.execute(text("SELECT has_table_privilege(:c, :p, 'SELECT')"),
                            {"c": CONSOLE, "p": expected[0]}).scalar_one() is False
        # The views read the partitioned table, for the auditor too.
        conn.execute(text(f"SET ROLE {AUDITOR}"))
        assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one() == len(SEEDED)
        assert conn.execute(text("SELECT count(*) FROM mismatches WHERE captured_at IS NOT NULL"
                                 )).scalar_one() == 1
        assert "topic" in list(conn.execute(text("SELECT * FROM verdicts LIMIT 0")).keys())
        conn.execute(text("RESET ROLE"))
        # The sequence continues after the old table's: no id is handed out twice.
        assert conn.execute(text("SELECT nextval('audit_results_id_seq')")).scalar_one() > 1000


def test_new_rows_land_in_their_month_or_the_default_partition(db: Db) -> None:
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        this_month = _insert(conn, _row(now))
        far = _insert(conn, _row(datetime(2099, 6, 1, tzinfo=UTC)))
        where = _where(conn)
    assert where[this_month] == partition_name(Month.of(now))
    assert where[far] == "audit_results_default"


def test_a_redelivery_conflicts_on_the_new_key(db: Db) -> None:
    row = _row(datetime(2025, 2, 14, 9, 0, tzinfo=UTC))
    statement = insert(audit_results).values(**row).on_conflict_do_nothing(
        index_elements=["event_id", "model_version", "captured_at"])
    with db.engine.begin() as conn:
        assert conn.execute(statement).rowcount == 1
        assert conn.execute(statement).rowcount == 0
        # The same id with another capture time is a different key now (the sink checks it).
        other = {**row, "captured_at": datetime(2025, 3, 14, tzinfo=UTC)}
        assert conn.execute(insert(audit_results).values(**other).on_conflict_do_nothing(
            index_elements=["event_id", "model_version", "captured_at"])).rowcount == 1
        assert conn.execute(select(func.count()).select_from(audit_results).where(
            audit_results.c.event_id == row["event_id"])).scalar_one() == 2
        conn.execute(audit_results.delete().where(
            audit_results.c.event_id == row["event_id"],
            audit_results.c.captured_at == other["captured_at"]))  # the old key must hold


def test_downgrade_keeps_the_rows_and_upgrade_again(db: Db) -> None:
    with db.engine.connect() as conn:
        before = _captured(conn)
    downgrade(db.settings, "0009")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT relkind FROM pg_class "
                                 "WHERE oid = 'audit_results'::regclass")).scalar_one() == "r"
        assert _captured(conn) == before
        keys = set(conn.execute(text(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'audit_results'::regclass AND contype IN ('p', 'u')")).scalars())
        assert keys == {"audit_results_pkey PRIMARY KEY (id)",
                        "uq_audit_results_event_model UNIQUE (event_id, model_version)"}
        assert _privileges(conn) == GRANTED
        conn.execute(text(f"SET ROLE {AUDITOR}"))
        assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one() == len(before)
        conn.execute(text("RESET ROLE"))

    upgrade(db.settings, "head")
    with db.engine.connect() as conn:
        assert _captured(conn) == before
        where = _where(conn)
        # The far-future row's month now holds rows: it gets its own partition.
        assert "audit_results_y2099m06" in set(where.values())
        assert "audit_results_default" in _partitions(conn)
        assert _privileges(conn) == GRANTED
        assert conn.execute(text("SELECT nextval('audit_results_id_seq')")
                            ).scalar_one() > max(before)
