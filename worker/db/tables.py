"""SQLAlchemy Core tables: the one MetaData that the worker writes through and that tests
compare with what Alembic migrations create. Schema changes happen only in migrations/."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

VERDICT_STATUSES = ("match", "mismatch", "uncertain", "unsupported")
REVIEW_STATES = ("open", "confirmed", "dismissed")

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Text, primary_key=True),
    Column("architecture", Text, nullable=False),
    Column("artifact_uri", Text, nullable=False),
    Column("card", JSONB, nullable=False),
    Column("metrics", JSONB, nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

audit_results = Table(
    "audit_results",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("bin_id", Text, nullable=False),
    Column("image_uri", Text, nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("station_id", Text, nullable=True),
    Column("robot_id", Text, nullable=True),
    Column("expected_quantity", Integer, nullable=False),
    Column("predicted_quantity", Integer, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("class_probabilities", JSONB, nullable=True),
    Column("status", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("event_id", "model_version", name="uq_audit_results_event_model"),
    CheckConstraint(
        "status IN ('match','mismatch','uncertain','unsupported')", name="ck_audit_results_status"
    ),
)
Index("ix_audit_results_captured_at", audit_results.c.captured_at)
Index("ix_audit_results_bin_id", audit_results.c.bin_id)

discrepancies = Table(
    "discrepancies",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("bin_id", Text, nullable=False),
    Column("expected_quantity", Integer, nullable=False),
    Column("predicted_quantity", Integer, nullable=False),
    Column("confidence", Float, nullable=True),
    Column("review_state", Text, nullable=False, server_default="open"),
    Column("reviewer", Text, nullable=True),
    Column("note", Text, nullable=True),
    Column("reviewed_quantity", Integer, nullable=True),
    Column("reviewed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("event_id", "model_version", name="uq_discrepancies_event_model"),
    CheckConstraint(
        "review_state IN ('open','confirmed','dismissed')", name="ck_discrepancies_review_state"
    ),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", Text, nullable=True),
    Column("event_id", Text, nullable=True),
    Column("payload", LargeBinary, nullable=True),
    Column("payload_truncated", Boolean, nullable=False, server_default="false"),
    Column("error_kind", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
)

