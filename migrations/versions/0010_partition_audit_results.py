"""Monthly range partitions of ``audit_results`` on ``captured_at`` (UTC).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

Why: at 1,000 events/s the table grows by tens of GiB a day (``docs/capacity.md``); retention
by ``DELETE`` would cost as much WAL and vacuum as the inserts, while dropping a month's
partition costs nothing. ``binaudit db partitions ensure|list|drop`` (``core/partitions.py``)
maintains them after this migration.

- Postgres requires the partition key in every unique constraint: the primary key becomes
  ``(id, captured_at)`` and the idempotency key ``uq_audit_results_event_model_captured``
  ``(event_id, model_version, captured_at)``. A redelivered event has the same capture time,
  so ``ON CONFLICT`` still makes it a no-op; an event id reused with another capture time no
  longer conflicts, so the sink looks ``(event_id, model_version)`` up before inserting
  (``worker/io/duplicates.py``). That lookup is served by the unique index's leading columns
  (one index probe per partition), so no second index on the same prefix is built.
- ``id`` keeps its sequence (``audit_results_id_seq``, now owned by the partitioned table):
  identity columns on partitioned tables need Postgres 17.
- Partitions: every month that holds rows, the current month and the next 2, and
  ``audit_results_default`` for the rest (far-future or back-filled capture times).
- The views that read the table (``mismatches``, ``verdicts``) are dropped and recreated with
  their definitions at 0009 and their grant to ``binaudit_auditor``; the table's own grants
  (table and column privileges of any role but the owner) are copied onto the new parent.
  Partitions get none: every role reads and writes through the parent.

How: the rows are **copied** (rename the old table, create the partitioned one, insert, drop
the old one, then build the keys and indexes once over the loaded data). Simple, and after
it every row sits in its month, so retention works at once. The cost is a full rewrite under
an ACCESS EXCLUSIVE lock (writers wait for the whole copy) and twice the table's disk for a
while: fine for this project's tables (up to a few million rows, seconds to a minute).

For a big production table, the **no-rewrite path** instead: (1) add ``CHECK (captured_at >=
<first month> AND captured_at < <end of the current month>) NOT VALID`` and ``VALIDATE`` it
(a scan under SHARE UPDATE EXCLUSIVE: writes continue); (2) ``CREATE UNIQUE INDEX
CONCURRENTLY`` the new keys ``(id, captured_at)`` and ``(event_id, model_version,
captured_at)`` on it; (3) in one short transaction rename it, create the partitioned parent
with ``CREATE INDEX .. ON ONLY`` indexes, ``ATTACH PARTITION`` the old table for that whole
range (the validated CHECK proves the bound, so Postgres skips the scan) and ``ALTER INDEX
.. ATTACH PARTITION`` its concurrently built indexes; monthly partitions start the month
after. The old table stays one big partition until all its months expire, then is dropped
whole (or split later by copying month by month while writes go to the new partitions).

Downgrade: back to a plain table with the old keys, rows, ids and grants kept (same copy).
It fails, rolling back, if two rows share (event_id, model_version) with different capture
times: the old unique key cannot hold them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from core.partitions import (
    Month,
    create_default_sql,
    create_partition_sql,
    months_ahead,
    quote,
)

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
TABLE = "audit_results"
SEQUENCE = "audit_results_id_seq"
AUDITOR_ROLE = "binaudit_auditor"
MONTHS_AHEAD = 2
OLD_KEY = ("uq_audit_results_event_model", ["event_id", "model_version"])
NEW_KEY = ("uq_audit_results_event_model_captured", ["event_id", "model_version", "captured_at"])
INDEXES: dict[str, list[Any]] = {
    "ix_audit_results_captured_at": ["captured_at"],
    "ix_audit_results_bin_id": ["bin_id"],
    "ix_audit_results_model_score": ["model_version",
                                     sa.text("discrepancy_score DESC NULLS LAST")],
}

# The views at 0009 (mismatches: 0003; verdicts: 0009, with the topic appended).
VIEWS = {
    "mismatches": """
SELECT d.id AS discrepancy_id, d.event_id, d.bin_id, a.captured_at, a.station_id, a.robot_id,
       d.expected_quantity, d.predicted_quantity, d.confidence, d.p_expected,
       d.discrepancy_score, d.model_version, a.status, d.review_state, d.reviewer,
       d.reviewed_at, d.reviewed_quantity, d.note, a.image_uri, d.created_at
FROM discrepancies d
LEFT JOIN audit_results a ON a.event_id = d.event_id AND a.model_version = d.model_version
""",
    "verdicts": """
SELECT a.id AS verdict_id, a.event_id, a.bin_id, a.captured_at, a.station_id, a.robot_id,
       a.expected_quantity, a.predicted_quantity, a.confidence, a.p_expected,
       a.discrepancy_score, a.class_probabilities, a.status, a.model_version,
       a.image_uri, a.processed_at, a.topic
FROM audit_results a
""",
}

# The columns in the order 0001..0009 left them (0003 appended the scores).
COLUMNS: list[tuple[str, Any, bool]] = [
    ("event_id", sa.Text, False), ("bin_id", sa.Text, False), ("image_uri", sa.Text, False),
    ("captured_at", TS, False), ("station_id", sa.Text, True), ("robot_id", sa.Text, True),
    ("expected_quantity", sa.Integer, False), ("predicted_quantity", sa.Integer, True),
    ("confidence", sa.Float, True), ("class_probabilities", JSONB, True),
    ("status", sa.Text, False), ("model_version", sa.Text, False), ("topic", sa.Text, False),
    ("partition", sa.Integer, False), ("offset", sa.BigInteger, False),
]
NAMES = ["id", *(c[0] for c in COLUMNS), "processed_at", "p_expected", "discrepancy_score"]

TABLE_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
       a.privilege_type, a.is_grantable
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.oid = CAST(:t AS regclass) AND a.grantee <> c.relowner
"""
COLUMN_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
       a.privilege_type, a.is_grantable, quote_ident(att.attname)
FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE att.attrelid = CAST(:t AS regclass) AND att.attacl IS NOT NULL
"""


def _create_table(name: str, partitioned: bool) -> None:
    """The columns, defaults and check of ``audit_results``; keys and indexes come after
    the rows (built once, not row by row)."""
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger, nullable=False,
                  server_default=sa.text(f"nextval('{SEQUENCE}'::regclass)")),
        *(sa.Column(col, type_, nullable=null) for col, type_, null in COLUMNS),
        sa.Column("processed_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("p_expected", sa.Float, nullable=True),
        sa.Column("discrepancy_score", sa.Float, nullable=True),
        sa.CheckConstraint("status IN ('match','mismatch','uncertain','unsupported')",
                           name="ck_audit_results_status"),
        postgresql_partition_by="RANGE (captured_at)" if partitioned else None,
    )


def _grants_of(table: str) -> list[str]:
    """GRANT statements that give the new ``audit_results`` what ``table`` grants."""
    bind = op.get_bind()
    out = []
    for grantee, privilege, grantable in bind.execute(sa.text(TABLE_GRANTS), {"t": table}):
        option = " WITH GRANT OPTION" if grantable else ""
        out.append(f"GRANT {privilege} ON {TABLE} TO {grantee}{option}")
    for grantee, privilege, grantable, column in bind.execute(sa.text(COLUMN_GRANTS),
                                                              {"t": table}):
        option = " WITH GRANT OPTION" if grantable else ""
        out.append(f"GRANT {privilege} ({column}) ON {TABLE} TO {grantee}{option}")
    return out


def _replace(old: str, partitioned: bool, create_partitions: list[str]) -> None:
    """Move ``audit_results`` into a new table of the other kind, rows and ids kept."""
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    op.rename_table(TABLE, old)
    _create_table(TABLE, partitioned)
    for statement in create_partitions:
        op.execute(statement)
    columns = ", ".join(quote(c) for c in NAMES)
    op.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {old}")
    # The sequence goes with the table that owns it: hand it over before the drop.
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY {TABLE}.id")
    op.execute(f"SELECT setval('{SEQUENCE}', greatest((SELECT max(id) FROM {TABLE}), "
               f"(SELECT last_value FROM {SEQUENCE})))")
    for grant in _grants_of(old):
        op.execute(grant)
    op.drop_table(old)
    for view, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {view} AS {sql}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {AUDITOR_ROLE}")


def _indexes() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, TABLE, columns)


def _months_with_rows(table: str) -> set[Month]:
    starts = op.get_bind().execute(sa.text(
        f"SELECT DISTINCT date_trunc('month', captured_at, 'UTC') FROM {table}")).scalars()
    return {Month.of(start) for start in starts}


def upgrade() -> None:
    months = _months_with_rows(TABLE) | set(months_ahead(datetime.now(UTC), MONTHS_AHEAD))
    partitions = [*(create_partition_sql(m) for m in sorted(months)), create_default_sql()]
    _replace("audit_results_unpartitioned", True, partitions)
    op.create_primary_key("audit_results_pkey", TABLE, ["id", "captured_at"])
    op.create_unique_constraint(NEW_KEY[0], TABLE, NEW_KEY[1])
    _indexes()


def downgrade() -> None:
    _replace("audit_results_partitioned", False, [])
    op.create_primary_key("audit_results_pkey", TABLE, ["id"])
    op.create_unique_constraint(OLD_KEY[0], TABLE, OLD_KEY[1])
    _indexes()
