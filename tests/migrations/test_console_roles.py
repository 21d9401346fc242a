"""Migration 0004's roles: the console login becomes the auditor or the reviewer role and
nothing else; the reviewer may change only the review columns of ``discrepancies``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.settings import Settings
from migrations.runner import downgrade, upgrade

pytestmark = pytest.mark.services

INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture(scope="module")
def roles_settings(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    with fresh_database("binaudit_console_roles") as settings:
        yield settings


@pytest.fixture
def admin(roles_settings: Settings) -> Iterator[Engine]:
    engine = create_engine(roles_settings.db.url.get_secret_value())
    yield engine
    engine.dispose()


@pytest.fixture
def login(roles_settings: Settings) -> Iterator[Engine]:
    url = make_url(roles_settings.db.url.get_secret_value()).set(username="binaudit_console")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def _seed(admin: Engine) -> int:
    event = f"evt-{uuid.uuid4().hex}"
    with admin.begin() as conn:
        conn.execute(text("INSERT INTO console_users (name, password_hash, role) "
                          "VALUES (:n, 'x', 'reviewer') ON CONFLICT DO NOTHING"),
                     {"n": "rita"})
        return int(conn.execute(text(
            "INSERT INTO discrepancies (event_id, model_version, bin_id, expected_quantity, "
            "predicted_quantity) VALUES (:e, 'm-1', 'bin-1', 3, 2) RETURNING id"),
            {"e": event}).scalar_one())


def _sqlstate(conn: Connection, sql: str, **params: Any) -> str | None:
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(sql), params)
    except DBAPIError as exc:
        savepoint.rollback()
        return getattr(exc.orig, "pgcode", None) or "?"
    savepoint.rollback()
    return None


def test_login_role_reads_accounts_only_and_becomes_two_roles(admin: Engine,
                                                              login: Engine) -> None:
    _seed(admin)
    with login.connect() as conn, conn.begin():
        assert conn.execute(text("SELECT current_user")).scalar_one() == "binaudit_console"
        assert conn.execute(text("SELECT role FROM console_users WHERE name = 'rita'")
                            ).scalar_one() == "reviewer"
        for sql in ("SELECT * FROM discrepancies", "SELECT * FROM mismatches",
                    "SELECT * FROM audit_results", "SELECT created_at FROM console_users",
                    "INSERT INTO console_users (name, role) VALUES ('x', 'reviewer')",
                    "UPDATE console_users SET role = 'reviewer'"):
            assert _sqlstate(conn, sql) == INSUFFICIENT_PRIVILEGE, sql
        for role in ("binaudit_auditor", "binaudit_reviewer"):
            assert _sqlstate(conn, f"SET LOCAL ROLE {role}") is None, role
        for role in ("postgres", "pg_read_all_data", "pg_write_server_files"):
            assert _sqlstate(conn, f"SET LOCAL ROLE {role}") == INSUFFICIENT_PRIVILEGE, role
    with admin.connect() as conn:
        flags = conn.execute(text("SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole "
                                  "FROM pg_roles WHERE rolname = 'binaudit_console'")).one()
        members = set(conn.execute(text(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'binaudit_console'"))
            .scalars())
    assert tuple(flags) == (True, False, False, False)
    assert members == {"binaudit_auditor", "binaudit_reviewer"}


def test_reviewer_updates_review_columns_only_viewer_nothing(admin: Engine,
                                                             login: Engine) -> None:
    ident = _seed(admin)
    review = ("UPDATE discrepancies SET review_state = 'confirmed', reviewer = 'rita', "
              "reviewed_quantity = 5, reviewed_at = now(), note = 'seen' WHERE id = :i")
    with login.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_auditor"))
        assert _sqlstate(conn, review, i=ident) == INSUFFICIENT_PRIVILEGE
        assert _sqlstate(conn, "SELECT * FROM discrepancies") == INSUFFICIENT_PRIVILEGE
        assert conn.execute(text("SELECT count(*) FROM mismatches")).scalar_one() >= 1
        assert conn.execute(text("SELECT count(*) FROM console_dead_letters")).scalar_one() == 0
        assert _sqlstate(conn, "SELECT * FROM console_users") == INSUFFICIENT_PRIVILEGE
    with login.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_reviewer"))
        for sql in ("UPDATE discrepancies SET predicted_quantity = 9 WHERE id = :i",
                    "UPDATE discrepancies SET expected_quantity = 9 WHERE id = :i",
                    "DELETE FROM discrepancies WHERE id = :i",
                    "UPDATE audit_results SET status = 'match'",
                    "SELECT * FROM console_users",
                    "SELECT * FROM audit_results"):
            assert _sqlstate(conn, sql, i=ident) == INSUFFICIENT_PRIVILEGE, sql
        # the review trigger (0006) wants the signed-in account's name from the console login
        assert _sqlstate(conn, review, i=ident) == INSUFFICIENT_PRIVILEGE
        conn.execute(text("SELECT set_config('binaudit.reviewer', 'rita', true)"))
        assert _sqlstate(conn, review, i=ident) is None
        conn.execute(text(review), {"i": ident})
    with admin.connect() as conn:
        row = conn.execute(text("SELECT review_state, reviewer, reviewed_quantity FROM "
                                "discrepancies WHERE id = :i"), {"i": ident}).one()
    assert tuple(row) == ("confirmed", "rita", 5)


def test_downgrade_removes_console_objects_and_upgrade_restores(
        roles_settings: Settings, admin: Engine, login: Engine) -> None:
    downgrade(roles_settings, "0003")
    assert "console_users" not in inspect(admin).get_table_names()
    assert not {"console_dead_letters", "console_models"} & set(inspect(admin).get_view_names())
    upgrade(roles_settings, "head")
    _seed(admin)
    with login.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_reviewer"))
        assert conn.execute(text("SELECT count(*) FROM discrepancies")).scalar_one() >= 1


def _review_objects(admin: Engine) -> set[str]:
    with admin.connect() as conn:
        return set(conn.execute(text(
            "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'discrepanc%' AND NOT tgisinternal "
            "UNION SELECT proname FROM pg_proc WHERE proname IN ('binaudit_review_identity', "
            "'binaudit_record_review', 'binaudit_history_append_only') "
            "UNION SELECT relname FROM pg_class WHERE relname IN "
            "('discrepancy_reviews', 'review_history')")).scalars())


def test_0006_downgrade_removes_review_history_and_upgrade_restores(
        roles_settings: Settings, admin: Engine, login: Engine) -> None:
    upgrade(roles_settings, "head")
    assert _review_objects(admin) >= {
        "discrepancy_reviews", "review_history", "discrepancies_reviewer",
        "discrepancies_review_history", "discrepancy_reviews_append_only",
        "binaudit_review_identity", "binaudit_record_review", "binaudit_history_append_only"}
    downgrade(roles_settings, "0005")
    assert _review_objects(admin) == set()
    ident = _seed(admin)
    with admin.begin() as conn:  # 0005: the reviewer column is whatever the client writes
        conn.execute(text("UPDATE discrepancies SET reviewer = 'anyone' WHERE id = :i"),
                     {"i": ident})
    upgrade(roles_settings, "head")
    with login.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_auditor"))
        assert conn.execute(text("SELECT count(*) FROM review_history")).scalar_one() == 0
    with admin.begin() as conn:
        conn.execute(text("UPDATE discrepancies SET reviewer = 'anyone' WHERE id = :i"),
                     {"i": ident})
        who, kept = conn.execute(text(
            "SELECT d.reviewer, (SELECT count(*) FROM discrepancy_reviews r "
            "WHERE r.discrepancy_id = d.id) FROM discrepancies d WHERE d.id = :i"),
            {"i": ident}).one()
    assert who == make_url(roles_settings.db.url.get_secret_value()).username and kept == 1
