"""Migration 0002's ``binaudit_auditor`` role: reads the views, and nothing else.

Checked with ``SET ROLE`` inside a transaction in a throwaway database on the shared cluster;
roles are cluster-wide, so a downgrade there must leave the role (and its grants) to the
databases that still use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from core.settings import Settings
from core.tables import metadata
from migrations.runner import downgrade, upgrade

pytestmark = pytest.mark.services

ROLE = "binaudit_auditor"
VIEWS = ("mismatches", "verdicts")


@pytest.fixture(scope="module")
def role_settings(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    with fresh_database("binaudit_role") as settings:
        yield settings


@pytest.fixture
def role_engine(role_settings: Settings) -> Iterator[Engine]:
    engine = create_engine(role_settings.db.url.get_secret_value())
    yield engine
    engine.dispose()


def _seed(engine: Engine) -> None:
    event = f"evt-{uuid.uuid4().hex}"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO audit_results (event_id, bin_id, image_uri, captured_at, station_id, "
            "expected_quantity, predicted_quantity, confidence, p_expected, discrepancy_score, "
            "status, model_version, topic, \"partition\", \"offset\") VALUES (:e, 'bin-1', "
            "'s3://binaudit-images/k.jpg', :t, 'st-1', 3, 2, 0.8, 0.01, 0.99, 'mismatch', 'm-1', "
            "'bin-events', 0, 1)"),
            {"e": event, "t": datetime(2026, 1, 1, tzinfo=UTC)})
        conn.execute(text(
            "INSERT INTO discrepancies (event_id, model_version, bin_id, expected_quantity, "
            "predicted_quantity, confidence, p_expected, discrepancy_score) "
            "VALUES (:e, 'm-1', 'bin-1', 3, 2, 0.8, 0.01, 0.99)"),
            {"e": event})


INSUFFICIENT_PRIVILEGE = "42501"
NOT_UPDATABLE = "55000"  # a join view is read-only whatever the privileges


def _refusal(conn: Connection, sql: str) -> str | None:
    """Run ``sql`` in a savepoint; the SQLSTATE it failed with, None if it succeeded."""
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(sql))
    except DBAPIError as exc:
        savepoint.rollback()
        return getattr(exc.orig, "pgcode", None) or "?"
    savepoint.rollback()
    return None


def _denied(conn: Connection, sql: str) -> bool:
    return _refusal(conn, sql) == INSUFFICIENT_PRIVILEGE


def test_auditor_reads_views_only(role_engine: Engine) -> None:
    _seed(role_engine)
    tables = sorted(set(inspect(role_engine).get_table_names()))
    assert set(metadata.tables) <= set(tables)
    with role_engine.connect() as conn, conn.begin():
        conn.execute(text(f"SET LOCAL ROLE {ROLE}"))
        assert conn.execute(text("SELECT current_user")).scalar_one() == ROLE
        row = conn.execute(text("SELECT * FROM mismatches")).mappings().one()
        assert (row["bin_id"], row["station_id"], row["image_uri"], row["review_state"]) == (
            "bin-1", "st-1", "s3://binaudit-images/k.jpg", "open")
        assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one() == 1
        # The discrepancy score (migration 0003) is readable through both views.
        assert (row["p_expected"], row["discrepancy_score"]) == (0.01, 0.99)
        assert conn.execute(text("SELECT p_expected, discrepancy_score FROM verdicts")
                            ).one() == (0.01, 0.99)
        for table in tables:
            assert _denied(conn, f'SELECT * FROM "{table}" LIMIT 1'), table
            assert _denied(conn, f'DELETE FROM "{table}"'), table
        assert _denied(conn, "UPDATE audit_results SET status = 'match'")
        assert _denied(conn, "INSERT INTO backtest_runs (run_id, model_version, topic, "
                             "requested_window, resolved_offsets, class_counts) "
                             "VALUES ('r', 'm', 't', '{}', '{}', '[]')")
        assert _denied(conn, "DELETE FROM verdicts")
        assert _denied(conn, "UPDATE verdicts SET status = 'match'")
        assert _denied(conn, "INSERT INTO verdicts (event_id) VALUES ('x')")
        for sql in ("DELETE FROM mismatches", "UPDATE mismatches SET review_state = 'dismissed'"):
            assert _refusal(conn, sql) in (INSUFFICIENT_PRIVILEGE, NOT_UPDATABLE), sql
        for view in VIEWS:
            writable = conn.execute(text(
                "SELECT has_table_privilege(:r, :v, 'INSERT,UPDATE,DELETE,TRUNCATE')"),
                {"r": ROLE, "v": view}).scalar_one()
            assert writable is False, view
        assert _denied(conn, "CREATE TABLE auditor_scratch (x int)")
        conn.rollback()
    with role_engine.connect() as conn:
        login = conn.execute(text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"),
                             {"r": ROLE}).scalar_one()
    assert login is False


def test_downgrade_upgrade_keeps_the_role_other_databases_use(
        role_settings: Settings, role_engine: Engine, db_engine: Engine) -> None:
    """The shared database (migrated by the session) keeps its grants while this one goes
    down and up again; the views come back with their grants."""
    downgrade(role_settings, "0001")
    assert not set(VIEWS) & set(inspect(role_engine).get_view_names())
    with db_engine.connect() as conn, conn.begin():
        assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"),
                            {"r": ROLE}).scalar_one() == 1
        conn.execute(text(f"SET LOCAL ROLE {ROLE}"))
        conn.execute(text("SELECT count(*) FROM mismatches")).scalar_one()
        conn.rollback()

    upgrade(role_settings, "head")
    assert set(VIEWS) <= set(inspect(role_engine).get_view_names())
    with role_engine.connect() as conn:
        granted = conn.execute(text(
            "SELECT has_table_privilege(:r, 'mismatches', 'SELECT'), "
            "has_table_privilege(:r, 'discrepancies', 'SELECT'), "
            "has_table_privilege(:r, 'backtest_results', 'SELECT')"), {"r": ROLE}).one()
    assert tuple(granted) == (True, False, False)
