"""Backtest runs shared by N replay processes: per-partition progress.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

``backtest_runs.partitions`` holds the topic's partitions when the run started (the run is
complete when all of them are finished); ``backtest_run_partitions`` one row per partition a
replay process took up: its pinned [start, stop) bounds, the checkpoint ``next_offset`` and
``finished_at``. Existing runs are backfilled from ``resolved_offsets``: their partitions are
finished when the run is, else they restart from their start offset.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

BACKFILL_PARTITIONS = """
INSERT INTO backtest_run_partitions
    (run_id, "partition", start_offset, stop_offset, next_offset, worker, started_at,
     updated_at, finished_at)
SELECT r.run_id, o.key::int, (o.value->>0)::bigint, (o.value->>1)::bigint,
       CASE WHEN r.status = 'finished' THEN (o.value->>1)::bigint
            ELSE (o.value->>0)::bigint END,
       NULL, r.started_at, coalesce(r.finished_at, r.started_at),
       CASE WHEN r.status = 'finished' THEN coalesce(r.finished_at, r.started_at) END
FROM backtest_runs r, jsonb_each(r.resolved_offsets) o
"""

BACKFILL_RUNS = """
UPDATE backtest_runs r
SET partitions = (SELECT coalesce(jsonb_agg(k::int ORDER BY k::int), '[]'::jsonb)
                  FROM jsonb_object_keys(r.resolved_offsets) k)
"""


def upgrade() -> None:
    op.add_column("backtest_runs", sa.Column("partitions", JSONB, nullable=True))
    op.create_table(
        "backtest_run_partitions",
        sa.Column("run_id", sa.Text, sa.ForeignKey("backtest_runs.run_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("start_offset", sa.BigInteger, nullable=False),
        sa.Column("stop_offset", sa.BigInteger, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.Text),
        sa.Column("started_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", TS),
        sa.CheckConstraint("start_offset <= next_offset AND next_offset <= stop_offset",
                           name="ck_backtest_run_partitions_offsets"),
    )
    op.execute(BACKFILL_PARTITIONS)
    op.execute(BACKFILL_RUNS)


def downgrade() -> None:
    op.drop_table("backtest_run_partitions")
    op.drop_column("backtest_runs", "partitions")
