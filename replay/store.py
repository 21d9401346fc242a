"""Postgres side of a backtest run shared by N processes (thin: each function one transaction).

Tables (migrations 0002 and 0008): ``backtest_runs`` (one row per run id: model, topic,
window, the topic's partitions), ``backtest_run_partitions`` (one row per partition a process
took up: its pinned [start, stop) bounds, the checkpoint ``next_offset`` and ``finished_at``)
and ``backtest_results`` (one row per record, unique on (run_id, topic, partition, offset) and
on (run_id, event_id); inserts ignore duplicates, so restarts and overlapping processes add
nothing twice).

The first process to take a partition pins its bounds: a restart, or a second process given
the same partition, replays exactly that range, even when the window's end was "the end
offsets at start" of a topic that has grown since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert

from core.tables import backtest_results, backtest_run_partitions, backtest_runs
from core.timewindow import Bounds, WindowRequest


class ReplayError(RuntimeError):
    """The replay cannot start or continue (unknown topic, run id of another model...)."""


@dataclass(frozen=True)
class PartitionState:
    """A partition of a run as stored: pinned bounds, checkpoint, finished or not."""

    partition: int
    start: int
    stop: int
    next_offset: int
    finished: bool

    @property
    def resume(self) -> int:
        """Where a process taking this partition up starts reading."""
        return min(max(self.start, self.next_offset), self.stop)


def open_run(engine: Engine, *, run_id: str, model_version: str, topic: str,
             request: WindowRequest, partitions: Sequence[int], class_counts: list[int]
             ) -> None:
    """Insert the run row, or join it: another process of the run (or a restart) must bring
    the same model, topic and window, else the run id belongs to something else."""
    stmt = insert(backtest_runs).values(
        run_id=run_id, model_version=model_version, topic=topic,
        requested_window=request.as_json(), resolved_offsets={},
        partitions=sorted(partitions), class_counts=class_counts,
        started_at=datetime.now(UTC), status="running")
    runs = backtest_runs.c
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id"],
        set_={"finished_at": None, "status": "running",
              # runs written before migration 0008 learn the topic's partitions here
              "partitions": func.coalesce(runs.partitions, stmt.excluded.partitions)},
        where=(runs.model_version == stmt.excluded.model_version)
        & (runs.topic == stmt.excluded.topic)
        & (runs.requested_window == stmt.excluded.requested_window))
    with engine.begin() as conn:
        if conn.execute(stmt).rowcount == 0:
            raise ReplayError(f"run id {run_id!r} already belongs to another model, topic "
                              "or window")


def claim_partitions(engine: Engine, *, run_id: str, bounds: Bounds, worker: str
                     ) -> dict[int, PartitionState]:
    """Record this process's partitions (first bounds win) and return them as stored."""
    if not bounds:
        return {}
    now = datetime.now(UTC)
    parts = backtest_run_partitions.c
    values = [{"run_id": run_id, "partition": p, "start_offset": start, "stop_offset": stop,
               "next_offset": start, "worker": worker, "started_at": now, "updated_at": now}
              for p, (start, stop) in sorted(bounds.items())]
    with engine.begin() as conn:
        conn.execute(insert(backtest_run_partitions).on_conflict_do_nothing(), values)
        # Unfinished partitions now belong to this process (a restart, or a takeover).
        conn.execute(update(backtest_run_partitions)
                     .where(parts.run_id == run_id, parts.partition.in_(list(bounds)),
                            parts.finished_at.is_(None))
                     .values(worker=worker, updated_at=now))
        stored = conn.execute(select(backtest_run_partitions)
                              .where(parts.run_id == run_id, parts.partition.in_(list(bounds)))
                              ).mappings().all()
        pinned = {str(r["partition"]): [r["start_offset"], r["stop_offset"]] for r in stored}
        runs = backtest_runs.c
        conn.execute(update(backtest_runs).where(runs.run_id == run_id).values(
            resolved_offsets=runs.resolved_offsets.op("||")(literal(pinned, JSONB))))
    return {r["partition"]: PartitionState(r["partition"], r["start_offset"],
                                           r["stop_offset"], r["next_offset"],
                                           r["finished_at"] is not None) for r in stored}


def write_batch(engine: Engine, *, run_id: str, rows: list[dict[str, Any]],
                checkpoints: Mapping[int, int]) -> int:
    """Insert result rows (duplicates ignored) and move the partitions' checkpoints forward,
    in one transaction; the number of rows actually added."""
    added = 0
    with engine.begin() as conn:
        if rows:
            stmt = insert(backtest_results).on_conflict_do_nothing().returning(
                backtest_results.c.id)
            added = len(conn.execute(stmt, rows).all())
        _checkpoint(conn, run_id, checkpoints)
    return added


def _checkpoint(conn: Connection, run_id: str, checkpoints: Mapping[int, int]) -> None:
    parts = backtest_run_partitions.c
    now = datetime.now(UTC)
    for partition, offset in sorted(checkpoints.items()):
        # GREATEST: an overlapping process may be further on; LEAST: never past the bounds.
        conn.execute(update(backtest_run_partitions)
                     .where(parts.run_id == run_id, parts.partition == partition)
                     .values(next_offset=func.least(func.greatest(parts.next_offset, offset),
                                                    parts.stop_offset),
                             updated_at=now))


def finish_partitions(engine: Engine, *, run_id: str, partitions: Sequence[int]) -> None:
    """Every record of these partitions has a durable row: mark them done."""
    if not partitions:
        return
    parts = backtest_run_partitions.c
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(update(backtest_run_partitions)
                     .where(parts.run_id == run_id, parts.partition.in_(list(partitions)))
                     .values(next_offset=parts.stop_offset, updated_at=now,
                             finished_at=func.coalesce(parts.finished_at, now)))


@dataclass(frozen=True)
class RunTotals:
    events: int  # rows of the run, every process's
    errors: int
    complete: bool  # every partition of the topic finished for this run
    status: str


def close_run(engine: Engine, run_id: str, *, failed: bool = False) -> RunTotals:
    """After one process ends: count the run's rows; the run is ``finished`` once every
    partition of the topic is, ``failed`` when this process failed, else still ``running``.

    The run row is locked first, so two processes ending at once do not both miss the
    other's partitions (each statement below sees the other's commit)."""
    runs, rows, parts = backtest_runs.c, backtest_results.c, backtest_run_partitions.c
    with engine.begin() as conn:
        # FOR NO KEY UPDATE: serialises the closes without waiting on other processes'
        # inserts (their foreign key checks hold only a key-share lock on this row).
        run = conn.execute(select(runs.partitions, runs.status).where(runs.run_id == run_id)
                           .with_for_update(key_share=True)).one()
        done = set(conn.execute(select(parts.partition).where(
            parts.run_id == run_id, parts.finished_at.is_not(None))).scalars())
        complete = set(run.partitions or ()) <= done
        status = "failed" if failed else "finished" if complete else run.status
        events = select(func.count()).where(rows.run_id == run_id).scalar_subquery()
        errors = select(func.count()).where(rows.run_id == run_id,
                                            rows.status == "error").scalar_subquery()
        got = conn.execute(
            update(backtest_runs).where(runs.run_id == run_id)
            .values(status=status, events=events, errors=errors,
                    finished_at=datetime.now(UTC) if status != "running" else None)
            .returning(runs.events, runs.errors)).one()
    return RunTotals(int(got.events), int(got.errors), complete, status)
