"""Model lifecycle: stages per deployment, their append-only history, shadow verdicts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

- ``model_versions.sha256``: the artifact's checksum (``core.artifacts``), verified by every
  process that downloads it.
- ``model_stages``: one row per (deployment, version) with its stage (candidate, shadow,
  production, archived); at most one production and one shadow per deployment (partial unique
  indexes). A change notifies channel ``binaudit_model_stages`` with the deployment's name, so
  running workers and serve switch without restart (they poll as a fallback).
- ``model_stage_history``: every stage change (from -> to, who, the database role, when,
  reason, the evidence that justified it, forced or not). Append-only: a trigger refuses
  UPDATE and DELETE, and nobody but the owner may write it.
- ``shadow_results``: the shadow model's verdicts, one per (event, shadow version), next to
  the production version that answered the same event. Never read by the auditors' queue.
- Auditors read views only (migration 0002): ``model_deployments`` (stages with each
  version's architecture and registration time), ``model_stage_changes`` (the history) and
  ``shadow_verdicts`` (the shadow verdicts) are granted to ``binaudit_auditor`` for the
  console's overview, read-only like the others; ``verdicts`` gains the topic (appended,
  so the view keeps its other columns), which scopes a shadow's coverage to its deployment.
- The history refuses UPDATE and DELETE from anyone; TRUNCATE is the owner's alone (no role
  of the application holds it), so a test database can still be emptied.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
AUDITOR_ROLE = "binaudit_auditor"
STAGES = ("candidate", "shadow", "production", "archived")

VIEWS = {
    "model_deployments": (
        "SELECT s.deployment, s.version, s.stage, s.updated_at, v.architecture, "
        "v.registered_at FROM model_stages s JOIN model_versions v USING (version)"),
    "model_stage_changes": (
        "SELECT id, deployment, version, from_stage, to_stage, actor, db_user, at, reason, "
        "forced FROM model_stage_history"),
    "shadow_verdicts": (
        "SELECT id, deployment, event_id, model_version, production_version, topic, "
        "\"partition\", \"offset\", bin_id, expected_quantity, predicted_quantity, "
        "confidence, p_expected, discrepancy_score, status, processed_at FROM shadow_results"),
}

VERDICTS_WITH_TOPIC = """
CREATE OR REPLACE VIEW verdicts AS
SELECT a.id AS verdict_id, a.event_id, a.bin_id, a.captured_at, a.station_id, a.robot_id,
       a.expected_quantity, a.predicted_quantity, a.confidence, a.p_expected,
       a.discrepancy_score, a.class_probabilities, a.status, a.model_version,
       a.image_uri, a.processed_at, a.topic
FROM audit_results a
"""
VERDICTS_WITHOUT_TOPIC = """
DROP VIEW verdicts;
CREATE VIEW verdicts AS
SELECT a.id AS verdict_id, a.event_id, a.bin_id, a.captured_at, a.station_id, a.robot_id,
       a.expected_quantity, a.predicted_quantity, a.confidence, a.p_expected,
       a.discrepancy_score, a.class_probabilities, a.status, a.model_version,
       a.image_uri, a.processed_at
FROM audit_results a;
GRANT SELECT ON verdicts TO binaudit_auditor;
"""


def _in_stages(column: str) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in STAGES)})"


NOTIFY_FUNCTION = """
CREATE FUNCTION binaudit_notify_model_stage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('binaudit_model_stages', NEW.deployment);
    RETURN NEW;
END $$;
CREATE TRIGGER tr_model_stages_notify AFTER INSERT OR UPDATE ON model_stages
    FOR EACH ROW EXECUTE FUNCTION binaudit_notify_model_stage();
"""

APPEND_ONLY = """
CREATE FUNCTION binaudit_refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'model_stage_history is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER tr_model_stage_history_append_only
    BEFORE UPDATE OR DELETE ON model_stage_history
    FOR EACH ROW EXECUTE FUNCTION binaudit_refuse_history_change();
"""


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("sha256", sa.Text, nullable=True))
    op.create_table(
        "model_stages",
        sa.Column("deployment", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, sa.ForeignKey("model_versions.version"), primary_key=True),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(_in_stages("stage"), name="ck_model_stages_stage"),
    )
    for stage in ("production", "shadow"):
        op.create_index(f"uq_model_stages_one_{stage}", "model_stages", ["deployment"],
                        unique=True, postgresql_where=sa.text(f"stage = '{stage}'"))
    op.create_table(
        "model_stage_history",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.Text, nullable=False),
        sa.Column("version", sa.Text, sa.ForeignKey("model_versions.version"), nullable=False),
        sa.Column("from_stage", sa.Text, nullable=True),
        sa.Column("to_stage", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("db_user", sa.Text, nullable=False, server_default=sa.text("session_user")),
        sa.Column("at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", JSONB, nullable=True),
        sa.Column("forced", sa.Boolean, nullable=False, server_default="false"),
        sa.CheckConstraint(_in_stages("to_stage"), name="ck_model_stage_history_to"),
        sa.CheckConstraint("length(reason) > 0", name="ck_model_stage_history_reason"),
    )
    op.create_index("ix_model_stage_history_deployment", "model_stage_history",
                    ["deployment", "id"])
    op.execute(NOTIFY_FUNCTION)
    op.execute(APPEND_ONLY)
    op.create_table(
        "shadow_results",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("production_version", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("bin_id", sa.Text, nullable=False),
        sa.Column("expected_quantity", sa.Integer, nullable=False),
        sa.Column("predicted_quantity", sa.Integer, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("p_expected", sa.Float, nullable=True),
        sa.Column("discrepancy_score", sa.Float, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("event_id", "model_version", name="uq_shadow_results_event_model"),
        sa.CheckConstraint("status IN ('match','mismatch','uncertain','unsupported')",
                           name="ck_shadow_results_status"),
    )
    op.create_index("ix_shadow_results_deployment", "shadow_results",
                    ["deployment", "model_version", "processed_at"])
    for view, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {view} AS {sql}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {AUDITOR_ROLE}")
    op.execute(VERDICTS_WITH_TOPIC)


def downgrade() -> None:
    op.execute(VERDICTS_WITHOUT_TOPIC)
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("shadow_results")
    op.drop_table("model_stage_history")
    op.execute("DROP FUNCTION binaudit_refuse_history_change()")
    op.drop_table("model_stages")
    op.execute("DROP FUNCTION binaudit_notify_model_stage()")
    op.drop_column("model_versions", "sha256")
