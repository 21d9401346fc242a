"""Dead-letter re-drive: when a stored dead letter was republished, and to which topic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``binaudit dlq redrive`` republishes a dead letter's stored payload (after the cause was fixed,
e.g. a restored object) and stamps ``redriven_at``/``redriven_to`` in the same transaction that
selected it, so a second run finds nothing left to send. The partial index serves the
selection of letters not re-driven yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dead_letters",
                  sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("dead_letters", sa.Column("redriven_to", sa.Text, nullable=True))
    op.create_index("ix_dead_letters_not_redriven", "dead_letters", ["first_seen"],
                    postgresql_where=sa.text("redriven_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_dead_letters_not_redriven", table_name="dead_letters")
    op.drop_column("dead_letters", "redriven_to")
    op.drop_column("dead_letters", "redriven_at")
