"""Auditor console: its user accounts, the reviewer role, the console's login role and two
read-only views the console needs (dead letters without payloads, model class lists).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Roles (cluster-wide, created and dropped as 0002 does it):

- ``binaudit_reviewer`` (NOLOGIN): everything ``binaudit_auditor`` reads, plus SELECT on
  ``discrepancies`` and UPDATE of its review columns only (column privileges).
- ``binaudit_console`` (LOGIN, NOINHERIT): the console's connection. On its own it reads only
  ``console_users`` (to sign people in); every request's transaction runs ``SET LOCAL ROLE``
  to ``binaudit_auditor`` (viewers) or ``binaudit_reviewer`` (reviewers), the only two roles
  it is a member of. It has no password here: the operator sets one
  (``binaudit console db-login``) where Postgres asks for passwords.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

AUDITOR_ROLE = "binaudit_auditor"
REVIEWER_ROLE = "binaudit_reviewer"
CONSOLE_ROLE = "binaudit_console"
REVIEW_COLUMNS = ("review_state", "reviewer", "note", "reviewed_quantity", "reviewed_at")
CONSOLE_VIEWS = ("console_dead_letters", "console_models")

DEAD_LETTERS_VIEW = """
CREATE VIEW console_dead_letters AS
SELECT id, topic, "partition", "offset", event_id, error_kind, first_seen FROM dead_letters
"""

MODELS_VIEW = """
CREATE VIEW console_models AS
SELECT version, architecture, card -> 'class_counts' AS class_counts, registered_at
FROM model_versions
"""


def _create_role(name: str, options: str) -> str:
    return f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
        CREATE ROLE {name} {options};
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$
"""


def _drop_role(name: str) -> str:
    return f"""
DO $$
DECLARE
    r oid;
BEGIN
    SELECT oid INTO r FROM pg_roles WHERE rolname = '{name}';
    IF r IS NULL THEN
        RETURN;
    END IF;
    REASSIGN OWNED BY {name} TO CURRENT_USER;
    DROP OWNED BY {name};
    IF NOT EXISTS (SELECT FROM pg_shdepend
                   WHERE refclassid = 'pg_authid'::regclass AND refobjid = r) THEN
        DROP ROLE {name};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.UniqueConstraint("name", name="uq_console_users_name"),
        sa.CheckConstraint("role IN ('viewer','reviewer')", name="ck_console_users_role"),
    )
    op.execute(DEAD_LETTERS_VIEW)
    op.execute(MODELS_VIEW)
    op.execute(f"GRANT SELECT ON {', '.join(CONSOLE_VIEWS)} TO {AUDITOR_ROLE}")

    op.execute(_create_role(REVIEWER_ROLE, "NOLOGIN"))
    op.execute(_create_role(CONSOLE_ROLE, "LOGIN NOINHERIT"))
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {REVIEWER_ROLE}, {CONSOLE_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {REVIEWER_ROLE}, "
               f"{CONSOLE_ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {REVIEWER_ROLE}, {CONSOLE_ROLE}")
    # Reviewers read what auditors read, and may change the review columns, nothing more.
    op.execute(f"GRANT {AUDITOR_ROLE} TO {REVIEWER_ROLE}")
    op.execute(f"GRANT SELECT ON discrepancies TO {REVIEWER_ROLE}")
    op.execute(f"GRANT UPDATE ({', '.join(REVIEW_COLUMNS)}) ON discrepancies TO {REVIEWER_ROLE}")
    # The console's login: signs people in, then becomes one of the two roles per request.
    op.execute(f"GRANT SELECT (id, name, password_hash, role, disabled) ON console_users "
               f"TO {CONSOLE_ROLE}")
    op.execute(f"GRANT {AUDITOR_ROLE}, {REVIEWER_ROLE} TO {CONSOLE_ROLE}")


def downgrade() -> None:
    for view in CONSOLE_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("console_users")
    # Privileges of these roles in this database go with DROP OWNED (inside _drop_role).
    op.execute(_drop_role(CONSOLE_ROLE))
    op.execute(_drop_role(REVIEWER_ROLE))
