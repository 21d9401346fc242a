"""Alembic migrations on the real Postgres, in a throwaway database per test module."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.dialects.postgresql import insert

from core.partitions import partition_tables
from core.settings import Settings
from core.tables import audit_results, metadata
from migrations.runner import downgrade, upgrade

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def migr_settings(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    """Settings whose db.url names a fresh, empty ``binaudit_migr_<uuid>`` database."""
    with fresh_database("binaudit_migr", migrate=False) as settings:
        yield settings


@pytest.fixture
def migr_engine(migr_settings: Settings) -> Iterator[Engine]:
    engine = create_engine(migr_settings.db.url.get_secret_value())
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    """The tables, partitions excepted (made at run time, not in the metadata); every
    partition found must belong to ``audit_results``, the one partitioned table."""
    with engine.connect() as conn:
        parts: dict[str, str] = dict(conn.execute(text(
            "SELECT c.relname, p.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE c.relispartition AND c.relkind IN ('r', 'p')")).all())
    assert set(parts.values()) <= {"audit_results"}, parts
    assert parts.keys() == partition_tables_of(engine)
    return set(inspect(engine).get_table_names()) - parts.keys()


def partition_tables_of(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return partition_tables(conn)


def test_upgrade_downgrade_upgrade(migr_settings: Settings, migr_engine: Engine) -> None:
    worker_tables = set(metadata.tables)

    upgrade(migr_settings, "head")
    assert _tables(migr_engine) == worker_tables | {"alembic_version"}

    downgrade(migr_settings, "base")
    assert _tables(migr_engine) <= {"alembic_version"}

    upgrade(migr_settings, "head")
    assert _tables(migr_engine) == worker_tables | {"alembic_version"}
    with migr_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None


def test_migrations_match_tables_module(migr_settings: Settings, migr_engine: Engine) -> None:
    upgrade(migr_settings, "head")
    with migr_engine.connect() as conn:
        partitions = partition_tables(conn)
        assert partitions  # the filter below must have something to filter
        # What migrations/env.py passes autogenerate: the partitions are not in the metadata.
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True,
                        "include_name": lambda name, type_, _parents: not (
                            type_ == "table" and name in partitions)})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"migrations and core/tables.py disagree: {diff}"


def test_unique_conflict_is_ignored(migr_settings: Settings, migr_engine: Engine) -> None:
    upgrade(migr_settings, "head")
    row = {
        "event_id": f"evt-{uuid.uuid4().hex}", "bin_id": "bin-001",
        "image_uri": "s3://binaudit-images/bin-images/00001.jpg",
        "captured_at": datetime(2026, 11, 29, 12, 0, tzinfo=UTC), "expected_quantity": 3,
        "predicted_quantity": 3, "confidence": 0.9, "status": "match",
        "model_version": "effnet-lite0-test", "topic": "bin-events", "partition": 0, "offset": 7,
    }
    statement = insert(audit_results).values(**row).on_conflict_do_nothing(
        index_elements=["event_id", "model_version", "captured_at"])
    with migr_engine.begin() as conn:
        assert conn.execute(statement).rowcount == 1
    with migr_engine.begin() as conn:
        assert conn.execute(statement).rowcount == 0
        count = conn.execute(select(func.count()).select_from(audit_results).where(
            audit_results.c.event_id == row["event_id"])).scalar_one()
    assert count == 1


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _indexes(engine: Engine, table: str) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(table) if i["name"]}


def test_0003_adds_and_removes_the_scores(migr_settings: Settings, migr_engine: Engine) -> None:
    scored = ("audit_results", "discrepancies", "backtest_results")
    upgrade(migr_settings, "head")
    downgrade(migr_settings, "0002")
    for table in scored:
        assert not {"p_expected", "discrepancy_score"} & _columns(migr_engine, table)
    assert "class_probabilities" not in _columns(migr_engine, "backtest_results")
    assert "ix_discrepancies_open_queue" not in _indexes(migr_engine, "discrepancies")
    with migr_engine.connect() as conn:  # the 0002 views are back and work
        conn.execute(text("SELECT * FROM mismatches")).all()
        assert "p_expected" not in set(conn.execute(text("SELECT * FROM verdicts")).keys())

    upgrade(migr_settings, "0003")
    for table in scored:
        assert {"p_expected", "discrepancy_score"} <= _columns(migr_engine, table)
    assert "class_probabilities" in _columns(migr_engine, "backtest_results")
    assert "ix_discrepancies_open_queue" in _indexes(migr_engine, "discrepancies")
    assert "ix_audit_results_model_score" in _indexes(migr_engine, "audit_results")
    with migr_engine.connect() as conn:
        for view in ("mismatches", "verdicts"):
            keys = set(conn.execute(text(f"SELECT * FROM {view}")).keys())
            assert {"p_expected", "discrepancy_score"} <= keys, view
    upgrade(migr_settings, "head")
