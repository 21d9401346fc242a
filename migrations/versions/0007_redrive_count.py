"""Dead-letter re-drive count: how many times a letter (or the record it came from) was
re-driven.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

``binaudit dlq redrive`` increments ``redrive_count`` of each letter it republishes and sends
the new count in a ``binaudit-redrive-count`` header; if the record fails again, its new
dead letter starts from that count. Letters at ``--max-redrives`` are skipped, so a record
that can never succeed is not re-sent for ever.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("redrive_count", sa.Integer, nullable=False,
                                            server_default="0"))


def downgrade() -> None:
    op.drop_column("dead_letters", "redrive_count")
