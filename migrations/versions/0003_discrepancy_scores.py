"""Discrepancy scores: the calibrated probability of the manifest's count and the score that
ranks discrepancies, on verdicts, discrepancies and backtest rows; the auditor views show them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

``p_expected`` is the calibrated probability the model gives the manifest's count (NULL when
the count is outside the model's classes); ``discrepancy_score`` = 1 - ``p_expected``. Rows
written before this revision keep NULL and sort last. The open-queue index serves the auditor
queue (``review_state = 'open'`` ordered by score, then id) with keyset paging.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AUDITOR_ROLE = "binaudit_auditor"
SCORED = ("audit_results", "discrepancies", "backtest_results")

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
       d.p_expected,
       d.discrepancy_score,
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
       a.expected_quantity, a.predicted_quantity, a.confidence, a.p_expected,
       a.discrepancy_score, a.class_probabilities, a.status, a.model_version,
       a.image_uri, a.processed_at
FROM audit_results a
"""

OLD_MISMATCHES_VIEW = """
CREATE VIEW mismatches AS
SELECT d.id AS discrepancy_id, d.event_id, d.bin_id, a.captured_at, a.station_id, a.robot_id,
       d.expected_quantity, d.predicted_quantity, d.confidence, d.model_version, a.status,
       d.review_state, d.reviewer, d.reviewed_at, d.reviewed_quantity, d.note, a.image_uri,
       d.created_at
FROM discrepancies d
LEFT JOIN audit_results a ON a.event_id = d.event_id AND a.model_version = d.model_version
"""

OLD_VERDICTS_VIEW = """
CREATE VIEW verdicts AS
SELECT a.id AS verdict_id, a.event_id, a.bin_id, a.captured_at, a.station_id, a.robot_id,
       a.expected_quantity, a.predicted_quantity, a.confidence, a.status, a.model_version,
       a.image_uri, a.processed_at
FROM audit_results a
"""


def _views(mismatches: str, verdicts: str) -> None:
    op.execute("DROP VIEW IF EXISTS mismatches")
    op.execute("DROP VIEW IF EXISTS verdicts")
    op.execute(mismatches)
    op.execute(verdicts)
    op.execute(f"GRANT SELECT ON mismatches, verdicts TO {AUDITOR_ROLE}")


def upgrade() -> None:
    for table in SCORED:
        op.add_column(table, sa.Column("p_expected", sa.Float, nullable=True))
        op.add_column(table, sa.Column("discrepancy_score", sa.Float, nullable=True))
    op.add_column("backtest_results", sa.Column("class_probabilities", JSONB, nullable=True))
    op.create_index("ix_discrepancies_open_queue", "discrepancies",
                    [sa.text("discrepancy_score DESC NULLS LAST"), sa.text("id")],
                    postgresql_where=sa.text("review_state = 'open'"))
    op.create_index("ix_audit_results_model_score", "audit_results",
                    ["model_version", sa.text("discrepancy_score DESC NULLS LAST")])
    _views(MISMATCHES_VIEW, VERDICTS_VIEW)


def downgrade() -> None:
    _views(OLD_MISMATCHES_VIEW, OLD_VERDICTS_VIEW)
    op.drop_index("ix_audit_results_model_score", table_name="audit_results")
    op.drop_index("ix_discrepancies_open_queue", table_name="discrepancies")
    op.drop_column("backtest_results", "class_probabilities")
    for table in SCORED:
        op.drop_column(table, "discrepancy_score")
        op.drop_column(table, "p_expected")
