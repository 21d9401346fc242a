"""Review identity and history: the database, not the client, names the reviewer, and every
review is kept in an append-only ``discrepancy_reviews`` table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

- ``discrepancies_reviewer`` (BEFORE UPDATE of the review columns) overwrites ``reviewer``:
  through the console's login role (``binaudit_console``) it is the transaction-local setting
  ``binaudit.reviewer`` that the console sets from the signed-in account (a review without
  it is refused); through any other login (psql, ``binaudit review``) it is ``session_user``.
  Whatever the client wrote into ``reviewer`` is discarded.
- ``discrepancies_review_history`` (AFTER UPDATE of the review columns) appends who, when, the
  new state, count and note and the previous values to ``discrepancy_reviews``, through a
  SECURITY DEFINER function with a fixed search_path (the reviewer role cannot INSERT there
  itself). No application role may UPDATE or DELETE history, and a trigger refuses both even
  to the owner. Auditors and reviewers read it through the view ``review_history`` (the
  auditor role reads views only, as since 0002; reviewers are auditors too). TRUNCATE, a
  privilege only the owner (the admin login) holds, stays possible: test fixtures and retention
  jobs empty tables that way.
- No foreign key to ``discrepancies``: history outlives a deleted discrepancy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

AUDITOR_ROLE = "binaudit_auditor"
REVIEWER_ROLE = "binaudit_reviewer"
CONSOLE_ROLE = "binaudit_console"
REVIEW_COLUMNS = "review_state, reviewer, note, reviewed_quantity, reviewed_at"

REVIEWER_FUNCTION = f"""
CREATE FUNCTION binaudit_review_identity() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text;
BEGIN
    IF session_user = '{CONSOLE_ROLE}' THEN
        who := nullif(current_setting('binaudit.reviewer', true), '');
        IF who IS NULL THEN
            RAISE EXCEPTION 'a review through the console login needs binaudit.reviewer'
                USING ERRCODE = '42501';
        END IF;
    ELSE
        who := session_user;
    END IF;
    NEW.reviewer := who;
    RETURN NEW;
END
$$
"""

HISTORY_FUNCTION = """
CREATE FUNCTION binaudit_record_review() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.discrepancy_reviews (
        discrepancy_id, reviewer, db_user, recorded_at, review_state, reviewed_quantity,
        note, reviewed_at, previous_state, previous_reviewer, previous_quantity,
        previous_note, previous_reviewed_at)
    VALUES (
        NEW.id, NEW.reviewer, session_user, now(), NEW.review_state, NEW.reviewed_quantity,
        NEW.note, NEW.reviewed_at, OLD.review_state, OLD.reviewer, OLD.reviewed_quantity,
        OLD.note, OLD.reviewed_at);
    RETURN NULL;
END
$$
"""

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION binaudit_history_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'discrepancy_reviews is append-only (% refused)', TG_OP
        USING ERRCODE = '42501';
END
$$
"""

HISTORY_VIEW = """
CREATE VIEW review_history AS
SELECT id, discrepancy_id, reviewer, db_user, recorded_at, review_state, reviewed_quantity,
       note, reviewed_at, previous_state, previous_reviewer, previous_quantity, previous_note,
       previous_reviewed_at
FROM discrepancy_reviews
"""

FUNCTIONS = ("binaudit_review_identity", "binaudit_record_review",
             "binaudit_history_append_only")


def upgrade() -> None:
    op.create_table(
        "discrepancy_reviews",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("discrepancy_id", sa.BigInteger, nullable=False),
        sa.Column("reviewer", sa.Text, nullable=True),
        sa.Column("db_user", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("review_state", sa.Text, nullable=False),
        sa.Column("reviewed_quantity", sa.Integer, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("previous_state", sa.Text, nullable=True),
        sa.Column("previous_reviewer", sa.Text, nullable=True),
        sa.Column("previous_quantity", sa.Integer, nullable=True),
        sa.Column("previous_note", sa.Text, nullable=True),
        sa.Column("previous_reviewed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_discrepancy_reviews_discrepancy", "discrepancy_reviews",
                    ["discrepancy_id", "id"])
    for statement in (REVIEWER_FUNCTION, HISTORY_FUNCTION, APPEND_ONLY_FUNCTION):
        op.execute(statement)
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function}() FROM PUBLIC")
    op.execute(f"CREATE TRIGGER discrepancies_reviewer BEFORE UPDATE OF {REVIEW_COLUMNS} "
               "ON discrepancies FOR EACH ROW EXECUTE FUNCTION binaudit_review_identity()")
    op.execute(f"CREATE TRIGGER discrepancies_review_history AFTER UPDATE OF {REVIEW_COLUMNS} "
               "ON discrepancies FOR EACH ROW EXECUTE FUNCTION binaudit_record_review()")
    op.execute("CREATE TRIGGER discrepancy_reviews_append_only BEFORE UPDATE OR DELETE "
               "ON discrepancy_reviews FOR EACH ROW "
               "EXECUTE FUNCTION binaudit_history_append_only()")
    op.execute("REVOKE ALL ON discrepancy_reviews FROM PUBLIC")
    op.execute(f"REVOKE ALL ON discrepancy_reviews FROM {AUDITOR_ROLE}, {REVIEWER_ROLE}, "
               f"{CONSOLE_ROLE}")
    op.execute(HISTORY_VIEW)
    op.execute(f"GRANT SELECT ON review_history TO {AUDITOR_ROLE}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS review_history")
    op.execute("DROP TRIGGER IF EXISTS discrepancies_review_history ON discrepancies")
    op.execute("DROP TRIGGER IF EXISTS discrepancies_reviewer ON discrepancies")
    # DROP TABLE takes its own triggers with it (no row-level trigger fires on DROP).
    op.drop_table("discrepancy_reviews")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
