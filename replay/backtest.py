"""`binaudit replay`: backtest a candidate model on recorded Kafka traffic.

A bounded window of a topic is read by a group-less consumer (``assign`` + ``seek``), so no
consumer group is joined and the production group's committed offsets are never touched. Each
record goes through the worker's own stages (``InferencePipeline``: ImageFetcher → Preprocessor
→ micro-batch → BinCounter) and verdict logic (``inference.outcomes``), and becomes exactly one
``backtest_results`` row: a verdict, or an error (``error_kind`` set; never a dead letter).
Nothing is written to ``audit_results``. Rows are idempotent on (run_id, event_id) and on
(run_id, position), so re-running a run id adds no rows; the run row is upserted.

One run id may be shared by N processes, each replaying a share of the partitions
(``replay.shards``: ``--shard i/N`` or ``--partitions``). Each records its partitions'
bounds, checkpoint and completion (``replay.store``); a restart resumes at the checkpoint and
skips finished partitions. ``replay report RUN`` merges every process's rows.

The window is resolved to offsets first (``core.timewindow``); records inside those
offsets whose timestamp still falls outside a time window (a robot clock going backwards) are
skipped, not stored.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine

from core.db import open_engine
from core.model.card import DecisionPolicy, ModelCard
from core.model.preprocess import ImageLimits, Preprocessor
from core.progress import progress
from core.settings import KafkaSettings, Settings
from core.timewindow import Bounds, WindowRequest, derive_run_id, ms, resolve_bounds
from inference.autotune import open_counter
from inference.compare import Prediction, policy_for
from inference.counter import BinCounter
from inference.images import ImageFetcher
from inference.outcomes import verdict_records
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from inference.positions import Position
from inference.retries import RetryBudget
from replay.shards import PartitionProgress, PartitionSelection
from replay.store import (
    PartitionState,
    ReplayError,
    claim_partitions,
    close_run,
    finish_partitions,
    open_run,
    write_batch,
)
from schemas.events import BinEvent, decode_event, unexpected_error
from schemas.records import ErrorKind, EventError

log = logging.getLogger(__name__)

__all__ = ["Replay", "ReplayError", "ReplayOptions", "ReplaySummary", "result_row"]


def result_row(run_id: str, position: Position, *, event: BinEvent | None,
               prediction: Prediction | None = None, error: EventError | None = None,
               card: ModelCard, policy: DecisionPolicy) -> dict[str, Any]:
    """One backtest_results row (every key always present, for executemany)."""
    row: dict[str, Any] = {
        "run_id": run_id, "event_id": event.event_id if event else None,
        "topic": position.topic, "partition": position.partition, "offset": position.offset,
        "bin_id": event.bin_id if event else None,
        "image_uri": event.image_uri if event else None,
        "captured_at": event.captured_at if event else None,
        "expected_quantity": event.expected_quantity if event else None,
        "predicted_quantity": None, "confidence": None, "class_probabilities": None,
        "p_expected": None, "discrepancy_score": None, "status": "error",
        "error_kind": None, "error_message": None,
    }
    if prediction is not None and event is not None:
        verdict, _ = verdict_records(
            event=event, topic=position.topic, partition=position.partition,
            offset=position.offset, prediction=prediction, model_version=card.version,
            supported_counts=card.class_counts, policy=policy)
        row |= {"predicted_quantity": verdict.predicted_quantity,
                "confidence": verdict.confidence,
                "class_probabilities": verdict.class_probabilities,
                "p_expected": verdict.p_expected, "discrepancy_score": verdict.discrepancy_score,
                "status": verdict.status.value}
    else:
        failure = error or EventError(ErrorKind.DECODE_ERROR, "no prediction")
        row |= {"error_kind": failure.kind.value, "error_message": str(failure)[:2000]}
    return row


# ---- Kafka (group-less) -------------------------------------------------------------------------

class ReplaySource:
    """A consumer without a group: ``assign`` + ``seek`` over fixed bounds, commits nothing."""

    def __init__(self, cfg: KafkaSettings, topic: str) -> None:
        self.cfg = cfg
        self.topic = topic
        self._consumer: KafkaConsumer | None = None
        self._stops: dict[TopicPartition, int] = {}
        self._remaining: set[TopicPartition] = set()

    def __enter__(self) -> ReplaySource:
        self._consumer = KafkaConsumer(**self.cfg.consumer_kwargs(
            group_id=None, client_id=f"{self.cfg.client_id}-replay",
            allow_auto_create_topics=False))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)

    @property
    def consumer(self) -> KafkaConsumer:
        assert self._consumer is not None, "ReplaySource used outside its `with` block"
        return self._consumer

    def partitions(self) -> list[int]:
        """The topic's partitions (all of them, whichever this process replays)."""
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise ReplayError(f"topic {self.topic!r} does not exist or has no partitions")
        return sorted(partitions)

    def resolve(self, request: WindowRequest, partitions: Sequence[int]) -> Bounds:
        """The window's [start, stop) offsets in these partitions."""
        if not partitions:
            return {}
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        beginning = {tp.partition: o for tp, o in self.consumer.beginning_offsets(tps).items()}
        end = {tp.partition: o for tp, o in self.consumer.end_offsets(tps).items()}
        return resolve_bounds(request, beginning=beginning, end=end,
                              start_at_time=self._offsets_at(tps, request.from_time),
                              stop_at_time=self._offsets_at(tps, request.to_time))

    def _offsets_at(self, tps: list[TopicPartition], moment: datetime | None
                    ) -> dict[int, int | None]:
        if moment is None:
            return {}
        found = self.consumer.offsets_for_times({tp: ms(moment) for tp in tps})
        return {tp.partition: (hit.offset if hit is not None else None)
                for tp, hit in found.items()}

    def start(self, bounds: Bounds) -> None:
        self._stops = {TopicPartition(self.topic, p): stop for p, (start, stop) in bounds.items()
                       if stop > start}
        self._remaining = set(self._stops)
        if not self._stops:
            return  # an empty window: nothing to assign
        self.consumer.assign(list(self._stops))
        for tp in self._stops:
            self.consumer.seek(tp, bounds[tp.partition][0])

    @property
    def done(self) -> bool:
        return not self._remaining

    def poll(self, max_records: int, timeout_ms: int = 100) -> list[Any]:
        """Records below each partition's stop; a partition that reached it is paused."""
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [r for tp, rs in batches.items() for r in rs if r.offset < self._stops[tp]]
        for tp in list(self._remaining):
            if self.consumer.position(tp) >= self._stops[tp]:
                self.consumer.pause(tp)
                self._remaining.discard(tp)
        return records


# ---- the run ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayOptions:
    topic: str
    window: WindowRequest
    model_path: Path
    run_id: str | None = None
    progress: bool = True
    write_every: int = 64
    # Records taken per poll, and events fetched or decoded but not yet written (a bound on
    # memory): replay's own, like the worker's settings of the same names.
    poll_max_records: int = 64
    max_in_flight: int = 256
    # This process's share of the partitions (default: all of them).
    selection: PartitionSelection = PartitionSelection()


@dataclass
class ReplaySummary:
    run_id: str
    model_version: str
    bounds: Bounds  # this process's partitions, as pinned for the run
    events: int = 0  # rows of the run (every process of this id together)
    errors: int = 0
    added: int = 0  # rows this invocation added (0 on a re-run)
    replayed: list[int] = field(default_factory=list)  # partitions this invocation read
    complete: bool = False  # every partition of the topic finished for this run
    status: str = "running"
    skipped: int = 0  # records inside the offsets but outside the time window
    seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        """Records this invocation read (a row each, or skipped as outside the time window)."""
        return sum(self.by_status.values()) + self.skipped


class Replay:
    """One backtest run; ``run()`` returns when every record of the window has a row."""

    def __init__(self, settings: Settings, options: ReplayOptions, *,
                 counter: BinCounter | None = None) -> None:
        self.settings = settings
        self.options = options
        self._counter = counter
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._retries = RetryBudget()

    def run(self) -> ReplaySummary:
        started = time.monotonic()
        inference = self.settings.inference
        options = self.options
        counter = self._counter or open_counter(inference, options.model_path)
        with ExitStack() as stack:
            engine = stack.enter_context(open_engine(self.settings.db, pool_pre_ping=True))
            source = stack.enter_context(ReplaySource(self.settings.kafka, options.topic))
            topic_partitions = source.partitions()
            try:
                mine = options.selection.select(topic_partitions)
            except ValueError as exc:
                raise ReplayError(str(exc)) from exc
            run_id = options.run_id or derive_run_id(counter.version, options.topic,
                                                     options.window)
            open_run(engine, run_id=run_id, model_version=counter.version, topic=options.topic,
                     request=options.window, partitions=topic_partitions,
                     class_counts=list(counter.card.class_counts))
            worker = f"{options.selection.label} on {socket.gethostname()} pid {os.getpid()}"
            claimed = claim_partitions(engine, run_id=run_id, worker=worker,
                                       bounds=source.resolve(options.window, mine))
            todo = _still_to_do(claimed)
            summary = ReplaySummary(run_id, counter.version,
                                    {p: (s.start, s.stop) for p, s in claimed.items()},
                                    replayed=sorted(todo))
            log.info("replay %s: model %s on %s, %s: offsets %s, to do %s", run_id,
                     counter.version, options.topic, options.selection.label,
                     {p: list(b) for p, b in summary.bounds.items()},
                     {p: list(b) for p, b in todo.items()})
            try:
                fetcher = stack.enter_context(ImageFetcher.from_settings(self.settings))
                pipeline = stack.enter_context(InferencePipeline(
                    counter, Preprocessor(counter.card, ImageLimits.from_settings(inference)),
                    PipelineConfig.from_settings(inference, plan=counter.plan),
                    self._outcomes.put, fetcher=fetcher))
                self._consume(source, pipeline, engine, counter.card, todo, summary)
                finish_partitions(engine, run_id=run_id, partitions=list(todo))
            except BaseException:
                try:
                    close_run(engine, run_id, failed=True)
                except Exception:  # keep the original error; the run row stays "running"
                    log.exception("replay %s: could not mark the run failed", run_id)
                raise
            totals = close_run(engine, run_id)
            summary.events, summary.errors = totals.events, totals.errors
            summary.complete, summary.status = totals.complete, totals.status
        summary.seconds = time.monotonic() - started
        return summary

    def _consume(self, source: ReplaySource, pipeline: InferencePipeline, engine: Engine,
                 card: ModelCard, bounds: Bounds, summary: ReplaySummary) -> None:
        cfg = self.options
        policy = policy_for(card, self.settings.inference)
        window = self.options.window
        rows: list[dict[str, Any]] = []
        checkpoint = PartitionProgress()  # written with the rows, so a restart resumes
        last_write = time.monotonic()

        def write() -> None:
            checkpoints = checkpoint.written([(r["partition"], r["offset"]) for r in rows])
            summary.added += write_batch(engine, run_id=summary.run_id, rows=rows,
                                         checkpoints=checkpoints)
            rows.clear()

        def row(position: Position, event: BinEvent | None, **kw: Any) -> None:
            rows.append(result_row(summary.run_id, position, event=event, card=card,
                                   policy=policy, **kw))
            status = rows[-1]["status"]
            summary.by_status[status] = summary.by_status.get(status, 0) + 1
            bar.update(1)

        total = sum(stop - start for start, stop in bounds.values())
        bar = progress(total=total, unit="ev", desc=f"replay {self.options.topic}",
                   disable=not self.options.progress)
        source.start(bounds)
        try:
            while True:
                self._collect(pipeline, row)
                if rows and (len(rows) >= self.options.write_every
                             or time.monotonic() - last_write > 1.0):
                    write()
                    last_write = time.monotonic()
                if source.done:
                    if pipeline.in_flight == 0 and self._outcomes.empty():
                        break
                    pipeline.drain(timeout=0.2)
                    continue
                room = min(cfg.poll_max_records, cfg.max_in_flight - pipeline.in_flight)
                if room <= 0:
                    time.sleep(0.02)
                    continue
                for record in source.poll(room):
                    position = Position(record.topic, record.partition, record.offset)
                    if not window.contains(record.timestamp):
                        checkpoint.passed(record.partition, record.offset)
                        summary.skipped += 1
                        bar.update(1)
                        continue
                    checkpoint.taken(record.partition, record.offset)
                    event = self._decode(position, record.value)
                    if isinstance(event, EventError):
                        row(position, None, error=event)
                        continue
                    pipeline.submit(WorkItem(position, event))
            write()
        finally:
            bar.close()

    def _decode(self, position: Position, value: bytes | None) -> BinEvent | EventError:
        """The record's event, or the error its row records (never an exception: one bad
        record must not end a backtest)."""
        try:
            return decode_event(value or b"", max_bytes=self.settings.kafka.max_message_bytes)
        except EventError as exc:
            log.info("%s: not an event (%s): %s", position, exc.kind, exc)
            return exc
        except Exception as exc:  # noqa: BLE001 - an input nobody anticipated
            log.exception("%s event -: decoding raised %s", position, type(exc).__name__)
            return unexpected_error(exc)

    def _collect(self, pipeline: InferencePipeline, row: Any) -> None:
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return
            item = outcome.item
            assert item.position is not None
            retry = outcome.retryable and not self._retries.exhausted(
                self._retries.failed(item.position))
            if retry:
                pipeline.submit(WorkItem(item.position, item.event))
                continue
            if outcome.error is not None:
                log.info("%s: counted as an error (%s): %s", item.describe(),
                         outcome.error.kind, outcome.error)
            row(item.position, item.event, prediction=outcome.prediction, error=outcome.error)


def _still_to_do(claimed: dict[int, PartitionState]) -> Bounds:
    """[resume, stop) of the partitions not finished yet (a restart starts at the checkpoint)."""
    return {p: (s.resume, s.stop) for p, s in sorted(claimed.items()) if not s.finished}
