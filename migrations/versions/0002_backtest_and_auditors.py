"""Backtest tables (replay), auditor views and the read-only ``binaudit_auditor`` role.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Roles are cluster-wide while grants live in each database: the role is created only if no
other database created it first, and dropped on downgrade only when no other database still
holds privileges for it (tests migrate throwaway databases on the same cluster as the real
one). The views are owned by the migrating user, so the auditor reads through them without
any privilege on the tables beneath.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
AUDITOR_ROLE = "binaudit_auditor"
AUDITOR_VIEWS = ("mismatches", "verdicts")

MISMATCHES_VIEW = """
CREATE VIEW mismatches AS
SELECT d.id AS discrepancy_id,
       d.event_id,
       d.bin_id,
       a.captured_at,
       a.station_id,
       a.robot_id,
       d.expected_quantity,
       d.predicted_quantity,
       d.confidence,
       d.model_version,
       a.status,
       d.review_state,
       d.reviewer,
       d.reviewed_at,
       d.reviewed_quantity,
       d.note,
       a.image_uri,
       d.created_at
FROM discrepancies d
LEFT JOIN audit_results a ON a.event_id = d.event_id AND a.model_version = d.model_version
"""

VERDICTS_VIEW = """
CREATE VIEW verdicts AS
SELECT a.id AS verdict_id, a.event_id, a.bin_id, a.captured_at, a.station_id, a.robot_id,
       a.expected_quantity, a.predicted_quantity, a.confidence, a.status, a.model_version,
       a.image_uri, a.processed_at
FROM audit_results a
"""

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUDITOR_ROLE}') THEN
        CREATE ROLE {AUDITOR_ROLE} NOLOGIN;
    END IF;
EXCEPTION
    -- another database's migration created it between the check and the CREATE
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$
"""

DROP_ROLE = f"""
DO $$
DECLARE
    auditor oid;
BEGIN
    SELECT oid INTO auditor FROM pg_roles WHERE rolname = '{AUDITOR_ROLE}';
    IF auditor IS NULL THEN
        RETURN;
    END IF;
    -- Keep anything someone made the role own here; then revoke its privileges here.
    REASSIGN OWNED BY {AUDITOR_ROLE} TO CURRENT_USER;
    DROP OWNED BY {AUDITOR_ROLE};
    -- Other databases of the cluster may still grant it something: then leave it be.
    IF NOT EXISTS (SELECT FROM pg_shdepend
                   WHERE refclassid = 'pg_authid'::regclass AND refobjid = auditor) THEN
        DROP ROLE {AUDITOR_ROLE};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "backtest_runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("requested_window", JSONB, nullable=False),
        sa.Column("resolved_offsets", JSONB, nullable=False),
        sa.Column("class_counts", JSONB, nullable=False),
        sa.Column("started_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TS),
        sa.Column("events", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.CheckConstraint("status IN ('running','finished','failed')",
                           name="ck_backtest_runs_status"),
    )
    op.create_table(
        "backtest_results",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text, sa.ForeignKey("backtest_runs.run_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("bin_id", sa.Text),
        sa.Column("image_uri", sa.Text),
        sa.Column("captured_at", TS),
        sa.Column("expected_quantity", sa.Integer),
        sa.Column("predicted_quantity", sa.Integer),
        sa.Column("confidence", sa.Float),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error_kind", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("run_id", "event_id", name="uq_backtest_results_run_event"),
        sa.UniqueConstraint("run_id", "topic", "partition", "offset",
                            name="uq_backtest_results_run_position"),
        sa.CheckConstraint("status IN ('match','mismatch','uncertain','unsupported','error')",
                           name="ck_backtest_results_status"),
    )
    op.execute(MISMATCHES_VIEW)
    op.execute(VERDICTS_VIEW)
    op.execute(CREATE_ROLE)
    # Nothing but the views: revoke whatever an earlier grant left on tables and sequences.
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {AUDITOR_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {AUDITOR_ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {AUDITOR_ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(AUDITOR_VIEWS)} TO {AUDITOR_ROLE}")


def downgrade() -> None:
    for view in AUDITOR_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(DROP_ROLE)
    op.drop_table("backtest_results")
    op.drop_table("backtest_runs")
