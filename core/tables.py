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
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
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
    # The artifact's checksum (migration 0009), verified after every download.
    Column("sha256", Text, nullable=True),
)

# Range-partitioned by month of captured_at (migration 0010; partitions are made by the
# migration and `binaudit db partitions ensure`, not here). Postgres wants the partition key
# in every unique key: the primary key is (id, captured_at) and the idempotency key
# (event_id, model_version, captured_at); the sink looks (event_id, model_version) up itself.
audit_results = Table(
    "audit_results",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("bin_id", Text, nullable=False),
    Column("image_uri", Text, nullable=False),
    Column("captured_at", DateTime(timezone=True), primary_key=True, nullable=False),
    Column("station_id", Text, nullable=True),
    Column("robot_id", Text, nullable=True),
    Column("expected_quantity", Integer, nullable=False),
    Column("predicted_quantity", Integer, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("class_probabilities", JSONB, nullable=True),
    # Calibrated P(manifest count) and 1 - that (migration 0003); NULL: count not a class.
    Column("p_expected", Float, nullable=True),
    Column("discrepancy_score", Float, nullable=True),
    Column("status", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("event_id", "model_version", "captured_at",
                     name="uq_audit_results_event_model_captured"),
    CheckConstraint(
        "status IN ('match','mismatch','uncertain','unsupported')", name="ck_audit_results_status"
    ),
    postgresql_partition_by="RANGE (captured_at)",
)
Index("ix_audit_results_captured_at", audit_results.c.captured_at)
Index("ix_audit_results_bin_id", audit_results.c.bin_id)
Index("ix_audit_results_model_score", audit_results.c.model_version,
      audit_results.c.discrepancy_score.desc().nulls_last())

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
    Column("p_expected", Float, nullable=True),
    Column("discrepancy_score", Float, nullable=True),
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
# The auditors' queue: open discrepancies, highest score first, keyset-paged by id.
Index("ix_discrepancies_open_queue", discrepancies.c.discrepancy_score.desc().nulls_last(),
      discrepancies.c.id, postgresql_where=discrepancies.c.review_state == "open")

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
    # `binaudit dlq redrive` (migration 0005): republished when, and to which topic.
    Column("redriven_at", DateTime(timezone=True), nullable=True),
    Column("redriven_to", Text, nullable=True),
    # Re-drives of this letter, or of the record it came from (migration 0007).
    Column("redrive_count", Integer, nullable=False, server_default="0"),
    UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
)
Index("ix_dead_letters_not_redriven", dead_letters.c.first_seen,
      postgresql_where=dead_letters.c.redriven_at.is_(None))

# ---- replay / backtest (migration 0002) ------------------------------------------------------
BACKTEST_RUN_STATUSES = ("running", "finished", "failed")
BACKTEST_RESULT_STATUSES = (*VERDICT_STATUSES, "error")

backtest_runs = Table(
    "backtest_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("topic", Text, nullable=False),
    # The window as the user gave it ({"from": ..., "to": ...}) and as resolved offsets
    # ({"<partition>": [start, end)}).
    Column("requested_window", JSONB, nullable=False),
    Column("resolved_offsets", JSONB, nullable=False),
    Column("class_counts", JSONB, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # The topic's partitions when the run started (migration 0008): the run is complete when
    # every one of them is finished in backtest_run_partitions.
    Column("partitions", JSONB, nullable=True),
    Column("events", Integer, nullable=False, server_default="0"),
    Column("errors", Integer, nullable=False, server_default="0"),
    Column("status", Text, nullable=False, server_default="running"),
    CheckConstraint("status IN ('running','finished','failed')", name="ck_backtest_runs_status"),
)

backtest_results = Table(
    "backtest_results",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("backtest_runs.run_id", ondelete="CASCADE"),
           nullable=False),
    # NULL for records that never decoded into an event (unique on the position instead).
    Column("event_id", Text, nullable=True),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("bin_id", Text, nullable=True),
    Column("image_uri", Text, nullable=True),
    Column("captured_at", DateTime(timezone=True), nullable=True),
    Column("expected_quantity", Integer, nullable=True),
    Column("predicted_quantity", Integer, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("class_probabilities", JSONB, nullable=True),
    Column("p_expected", Float, nullable=True),
    Column("discrepancy_score", Float, nullable=True),
    Column("status", Text, nullable=False),
    Column("error_kind", Text, nullable=True),
    Column("error_message", Text, nullable=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("run_id", "event_id", name="uq_backtest_results_run_event"),
    UniqueConstraint("run_id", "topic", "partition", "offset",
                     name="uq_backtest_results_run_position"),
    CheckConstraint(
        "status IN ('match','mismatch','uncertain','unsupported','error')",
        name="ck_backtest_results_status",
    ),
)

# A run shared by N replay processes (migration 0008): one row per partition a process took
# up. The first process pins its [start, stop) bounds; next_offset is the checkpoint (every
# record below it has a row or needs none), written with the rows; finished_at when done.
backtest_run_partitions = Table(
    "backtest_run_partitions",
    metadata,
    Column("run_id", Text, ForeignKey("backtest_runs.run_id", ondelete="CASCADE"),
           primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("start_offset", BigInteger, nullable=False),
    Column("stop_offset", BigInteger, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("worker", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("start_offset <= next_offset AND next_offset <= stop_offset",
                    name="ck_backtest_run_partitions_offsets"),
)

# ---- auditor console (migration 0004) --------------------------------------------------------
CONSOLE_USER_ROLES = ("viewer", "reviewer")
# Database roles the console's login role becomes per request (SET LOCAL ROLE), by user role.
CONSOLE_DB_ROLES = {"viewer": "binaudit_auditor", "reviewer": "binaudit_reviewer"}
CONSOLE_LOGIN_ROLE = "binaudit_console"

console_users = Table(
    "console_users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    # argon2id; NULL for accounts that sign in only through the SSO proxy header.
    Column("password_hash", Text, nullable=True),
    Column("role", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("name", name="uq_console_users_name"),
    CheckConstraint("role IN ('viewer','reviewer')", name="ck_console_users_role"),
)

# ---- review history (migration 0006) ---------------------------------------------------------
# Append-only: filled by a trigger on every update of a discrepancy's review columns (the
# reviewer named by the database, not the client); no application role may change it.
discrepancy_reviews = Table(
    "discrepancy_reviews",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("discrepancy_id", BigInteger, nullable=False),
    Column("reviewer", Text, nullable=True),
    Column("db_user", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("review_state", Text, nullable=False),
    Column("reviewed_quantity", Integer, nullable=True),
    Column("note", Text, nullable=True),
    Column("reviewed_at", DateTime(timezone=True), nullable=True),
    Column("previous_state", Text, nullable=True),
    Column("previous_reviewer", Text, nullable=True),
    Column("previous_quantity", Integer, nullable=True),
    Column("previous_note", Text, nullable=True),
    Column("previous_reviewed_at", DateTime(timezone=True), nullable=True),
)
Index("ix_discrepancy_reviews_discrepancy", discrepancy_reviews.c.discrepancy_id,
      discrepancy_reviews.c.id)

# ---- model lifecycle (migration 0009) ----------------------------------------------------------
MODEL_STAGES = ("candidate", "shadow", "production", "archived")
_STAGES_SQL = ", ".join(f"'{s}'" for s in MODEL_STAGES)

# A version's stage in one named deployment (default: one per topic); a change notifies
# channel binaudit_model_stages (trigger), so running processes switch without restart.
model_stages = Table(
    "model_stages",
    metadata,
    Column("deployment", Text, primary_key=True),
    Column("version", Text, ForeignKey("model_versions.version"), primary_key=True),
    Column("stage", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"stage IN ({_STAGES_SQL})", name="ck_model_stages_stage"),
)
Index("uq_model_stages_one_production", model_stages.c.deployment, unique=True,
      postgresql_where=model_stages.c.stage == "production")
Index("uq_model_stages_one_shadow", model_stages.c.deployment, unique=True,
      postgresql_where=model_stages.c.stage == "shadow")

# Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE).
model_stage_history = Table(
    "model_stage_history",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("deployment", Text, nullable=False),
    Column("version", Text, ForeignKey("model_versions.version"), nullable=False),
    Column("from_stage", Text, nullable=True),
    Column("to_stage", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("db_user", Text, nullable=False, server_default=text("session_user")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reason", Text, nullable=False),
    Column("evidence", JSONB, nullable=True),
    Column("forced", Boolean, nullable=False, server_default="false"),
    CheckConstraint(f"to_stage IN ({_STAGES_SQL})", name="ck_model_stage_history_to"),
    CheckConstraint("length(reason) > 0", name="ck_model_stage_history_reason"),
)
Index("ix_model_stage_history_deployment", model_stage_history.c.deployment,
      model_stage_history.c.id)

# The shadow model's verdicts: never read by the auditors' queue.
shadow_results = Table(
    "shadow_results",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("deployment", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("production_version", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("bin_id", Text, nullable=False),
    Column("expected_quantity", Integer, nullable=False),
    Column("predicted_quantity", Integer, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("p_expected", Float, nullable=True),
    Column("discrepancy_score", Float, nullable=True),
    Column("status", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("event_id", "model_version", name="uq_shadow_results_event_model"),
    CheckConstraint("status IN ('match','mismatch','uncertain','unsupported')",
                    name="ck_shadow_results_status"),
)
Index("ix_shadow_results_deployment", shadow_results.c.deployment,
      shadow_results.c.model_version, shadow_results.c.processed_at)
