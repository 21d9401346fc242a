"""Postgres sink: one transaction per batch, idempotent on natural keys.

``ON CONFLICT DO NOTHING`` on (event_id, model_version) and on (topic, partition, offset)
makes a replayed batch (after a crash between the write and the offset commit) a no-op.
A lost connection raises ``SinkUnavailable``: the worker pauses, retries, and commits nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError

from core.db import make_engine
from core.settings import DatabaseSettings
from core.tables import audit_results, dead_letters, discrepancies, model_versions
from schemas.records import AuditVerdict, DeadLetterRecord, DiscrepancyRecord

log = logging.getLogger(__name__)


class SinkUnavailable(RuntimeError):
    """Postgres cannot be reached; nothing of the batch was written."""


@dataclass
class WriteBatch:
    verdicts: list[AuditVerdict] = field(default_factory=list)
    discrepancies: list[DiscrepancyRecord] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.verdicts) + len(self.dead_letters)


def _rows(records: list[Any]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="python") for r in records]


class ResultSink:
    def __init__(self, cfg: DatabaseSettings) -> None:
        self.cfg = cfg
        self._engine: Engine | None = None

    def __enter__(self) -> ResultSink:
        self._engine = make_engine(
            self.cfg, pool_pre_ping=True, pool_size=self.cfg.pool_size,
            # INSERT .. ON CONFLICT is not batched by insertmanyvalues; psycopg2's execute_batch
            # is (bench/: 1.1x rows/s at 16 rows per transaction, 1.7x at 256).
            **({"executemany_mode": "values_plus_batch"}
               if self.cfg.url.get_secret_value().startswith("postgresql+psycopg2") else {}),
            connect_args={"connect_timeout": 5},
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "ResultSink used outside its `with` block"
        return self._engine

    def write(self, batch: WriteBatch) -> None:
        """Write verdicts, discrepancies and dead letters atomically."""
        try:
            with self.engine.begin() as conn:
                if batch.verdicts:
                    conn.execute(insert(audit_results).on_conflict_do_nothing(
                        index_elements=["event_id", "model_version"]), _rows(batch.verdicts))
                if batch.discrepancies:
                    conn.execute(insert(discrepancies).on_conflict_do_nothing(
                        index_elements=["event_id", "model_version"]),
                        _rows(batch.discrepancies))
                if batch.dead_letters:
                    conn.execute(insert(dead_letters).on_conflict_do_nothing(
                        index_elements=["topic", "partition", "offset"]),
                        _rows(batch.dead_letters))
        except OperationalError as exc:
            raise SinkUnavailable(str(exc.orig).strip()) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise SinkUnavailable(str(exc.orig).strip()) from exc
            raise

    def register_model(self, *, version: str, architecture: str, artifact_uri: str,
                       card: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Record the model version the worker runs (idempotent)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(model_versions).on_conflict_do_nothing(), {
                    "version": version, "architecture": architecture,
                    "artifact_uri": artifact_uri, "card": card, "metrics": metrics,
                })
        except OperationalError as exc:
            raise SinkUnavailable(str(exc.orig).strip()) from exc
