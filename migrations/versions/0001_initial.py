"""Initial schema: audit_results, discrepancies, dead_letters, model_versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("architecture", sa.Text, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("card", JSONB, nullable=False),
        sa.Column("metrics", JSONB),
        sa.Column("registered_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "audit_results",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("bin_id", sa.Text, nullable=False),
        sa.Column("image_uri", sa.Text, nullable=False),
        sa.Column("captured_at", TS, nullable=False),
        sa.Column("station_id", sa.Text),
        sa.Column("robot_id", sa.Text),
        sa.Column("expected_quantity", sa.Integer, nullable=False),
        sa.Column("predicted_quantity", sa.Integer),
        sa.Column("confidence", sa.Float),
        sa.Column("class_probabilities", JSONB),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("event_id", "model_version", name="uq_audit_results_event_model"),
        sa.CheckConstraint("status IN ('match','mismatch','uncertain','unsupported')",
                           name="ck_audit_results_status"),
    )
    op.create_index("ix_audit_results_captured_at", "audit_results", ["captured_at"])
    op.create_index("ix_audit_results_bin_id", "audit_results", ["bin_id"])
    op.create_table(
        "discrepancies",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("bin_id", sa.Text, nullable=False),
        sa.Column("expected_quantity", sa.Integer, nullable=False),
        sa.Column("predicted_quantity", sa.Integer, nullable=False),
        sa.Column("confidence", sa.Float),
        sa.Column("review_state", sa.Text, nullable=False, server_default="open"),
        sa.Column("reviewer", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("reviewed_quantity", sa.Integer),
        sa.Column("reviewed_at", TS),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("event_id", "model_version", name="uq_discrepancies_event_model"),
        sa.CheckConstraint("review_state IN ('open','confirmed','dismissed')",
                           name="ck_discrepancies_review_state"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("event_id", sa.Text),
        sa.Column("payload", sa.LargeBinary),
        sa.Column("payload_truncated", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("error_kind", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("first_seen", TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("discrepancies")
    op.drop_index("ix_audit_results_bin_id", table_name="audit_results")
    op.drop_index("ix_audit_results_captured_at", table_name="audit_results")
    op.drop_table("audit_results")
    op.drop_table("model_versions")
