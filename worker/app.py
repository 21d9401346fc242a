"""The worker: Kafka consumer-group member → shared inference pipeline → Postgres → commit.

Delivery is at-least-once with idempotent writes, so effectively once:
rows of a batch are written in one transaction (ON CONFLICT DO NOTHING), dead letters are
mirrored to the DLQ topic (if set) and confirmed, then the next offsets are committed; commits
also run on partition revoke and on shutdown. A bad message (or an event id reused by another
event) becomes a dead-letter row and its offset advances; a broken dependency (Postgres, S3) pauses
consumption and is retried, and no offset passes an unwritten row. So does a failing S3 (denied,
bucket gone, unreachable) or a failing model: the pipeline retries, the worker pauses its
partitions and raises the alert (``worker/health.py``), and resumes when the fault clears.

Models (``worker/models.py``): the deployment's production (and shadow) version from the
registry, or the configured model when pinned. A promotion is picked up without restart: the
worker pauses its partitions, lets everything taken finish, writes and commits it, then
switches, so per partition every verdict before the switch point has the old version and every
one after it the new. Shadow verdicts are written along with the batches, never waited for.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from contextlib import ExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from core.producer import EventProducer
from core.settings import Settings
from inference.counter import BinCounter
from inference.images import ImageFetcher
from inference.outcomes import dead_letter_record, verdict_records
from inference.pipeline import Outcome, WorkItem
from inference.positions import Position, TopicPartitionKey
from inference.retries import RetryBudget
from schemas.events import decode_event, unexpected_error
from schemas.records import EventError
from worker.health import WorkerHealth
from worker.io.dlq import DeadLetterPublisher
from worker.io.dlq import Position as LetterPosition
from worker.io.duplicates import RecordSource
from worker.io.kafka_source import EventSource
from worker.io.pg_sink import ResultSink, SinkUnavailable, WriteBatch, WriteResult
from worker.metrics import HealthServer, RunStats, WorkerMetrics
from worker.models import WorkerModels
from worker.offsets import OffsetTracker

log = logging.getLogger(__name__)

class Worker:
    def __init__(self, settings: Settings, *, counter: BinCounter | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.cfg = settings.worker
        self.inference = settings.inference
        self._counter = counter
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.tracker = OffsetTracker()
        self.stats = RunStats()
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._pending = WriteBatch()
        self._pending_positions: list[Position] = []
        self._written_now = WriteResult()  # what the last write of the pending batch added
        self._dlq_done: set[LetterPosition] = set()  # letters the DLQ topic confirmed
        self._retries = RetryBudget()
        self._stop = threading.Event()
        self._sink_failed = False
        self._sink_retry_at = 0.0
        self._commit_retry_at = 0.0
        self._backoff = self.cfg.retry_backoff_initial_s
        self._paused = False
        self._faulty = False  # a dependency (S3, the model) is failing right now
        self._last_activity = time.monotonic()
        self._idle_checked_at = 0.0
        self.health = WorkerHealth(self.metrics, self.cfg.health_stall_s)
        self._dlq: DeadLetterPublisher | None = None

    # ---- public ---------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        log.info("stop requested: draining in-flight events")
        self.health.stopping = True
        self._stop.set()

    def run(self) -> RunStats:
        """Consume until stopped (signal, or idle when ``exit_when_idle_s`` is set)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        with ExitStack() as stack:
            self.sink = stack.enter_context(ResultSink(self.settings.db))
            self.models = stack.enter_context(WorkerModels(
                self.settings, self.metrics, counter=self._counter, backoff=self._next_backoff))
            fetcher = stack.enter_context(ImageFetcher.from_settings(self.settings))
            self.pipeline = stack.enter_context(self.models.pipeline(fetcher,
                                                                     self._outcomes.put))
            if self.settings.kafka.dlq_topic:
                self._dlq = DeadLetterPublisher(
                    stack.enter_context(EventProducer(self.settings.kafka, idempotent=False)),
                    self.settings.kafka.dlq_topic,
                    max_bytes=self.settings.kafka.max_message_bytes,
                    on_refused=self.metrics.dlq_refused.inc)
            if self.cfg.metrics_port is not None:
                stack.enter_context(HealthServer(self.cfg.metrics_port, self.metrics.registry,
                                                 self.health.healthy, self.health.not_ready))
            self.source = stack.enter_context(EventSource(
                self.settings.kafka, on_revoke=self._on_revoke, on_assign=self._on_assign))
            self.health.started = True
            self._loop()
            self._shutdown()
        self.stats.finished_at = time.monotonic()
        return self.stats

    # ---- construction ---------------------------------------------------------------
    @property
    def counter(self) -> BinCounter:
        """The production model running now."""
        return self.models.running.production

    # ---- main loop ------------------------------------------------------------------
    def _loop(self) -> None:
        last_lag = 0.0
        self._last_activity = time.monotonic()
        while not self._stop.is_set():
            self.health.turned()
            self._faulty = bool(self.health.watch(self.pipeline.faults))
            self.health.coordinator(self.source.coordinator_known())
            self._collect()
            self._write_and_commit()
            self._switch_models()
            self._apply_backpressure()
            self._ping_postgres()
            for record in self.source.poll(timeout_ms=100, max_records=self._room()):
                self._accept(record)
            if time.monotonic() - last_lag > 10:
                last_lag = time.monotonic()
                self._update_lag()
            if self._idle_long_enough():
                log.info("topic drained and idle for %.1fs: stopping", self.cfg.exit_when_idle_s)
                break

    def _room(self) -> int:
        return max(1, min(self.cfg.poll_max_records,
                          self.cfg.max_in_flight - self.tracker.in_flight()))

    def _apply_backpressure(self) -> None:
        # Pause when the pipeline is full, Postgres is down, or S3/the model is failing while
        # events wait on it (with nothing in flight, new records are the probe that finds
        # out whether it is back); resume at half, so the consumer keeps calling poll()
        # (group membership) without taking more records.
        in_flight = self.tracker.in_flight()
        should_pause = (in_flight >= self.cfg.max_in_flight or self._sink_failed
                        or (self._faulty and in_flight > 0) or self.models.pending is not None)
        if should_pause and not self._paused:
            self.source.pause_all()
            self._paused = True
        elif self._paused and not should_pause and in_flight <= self.cfg.max_in_flight // 2:
            self.source.resume_all()
            self._paused = False
        self.metrics.paused.set(1 if self._paused else 0)
        self.metrics.in_flight.set(in_flight)

    def _accept(self, record: Any) -> None:
        self._last_activity = time.monotonic()
        self.stats.events += 1
        position = Position(record.topic, record.partition, record.offset)
        self.tracker.started(TopicPartitionKey(record.topic, record.partition), record.offset)
        try:
            event = decode_event(record.value or b"",
                                 max_bytes=self.settings.kafka.max_message_bytes)
        except EventError as exc:
            self._outcomes.put(Outcome(WorkItem(position, None, context=record), error=exc))
            return
        except Exception as exc:  # noqa: BLE001 - one record must never end the process
            # The offset is already tracked: a crash here would re-read it on every restart.
            log.exception("%s event -: decoding raised %s", position, type(exc).__name__)
            self._outcomes.put(Outcome(WorkItem(position, None, context=record),
                                       error=unexpected_error(exc)))
            return
        self.pipeline.submit(WorkItem(position, event, context=record))

    def _switch_models(self) -> None:
        """Switch to a set the watcher prepared once the switch point is clean: nothing in
        flight, every row written and every offset committed (partitions stay paused until
        then, see _apply_backpressure)."""
        pending = self.models.next_set()
        if pending is None or self.tracker.in_flight() or self._pending_positions \
                or self.tracker.committable() or self.pipeline.in_flight:
            return
        if self.pipeline.swap(pending, timeout=self.cfg.shutdown_deadline_s):
            self.models.switched(pending)

    def _collect(self) -> None:
        """Turn finished outcomes (and shadow answers) into pending rows (main thread)."""
        self._pending.shadow += self.models.shadow_rows()
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return
            before = len(self._pending_positions)
            self._add_outcome(outcome)
            if len(self._pending_positions) > before and outcome.item.position is not None:
                pos = outcome.item.position
                self._pending.sources[(pos.topic, pos.partition, pos.offset)] = RecordSource.of(
                    outcome.item.context)

    def _add_outcome(self, outcome: Outcome) -> None:
        item = outcome.item
        pos = item.position
        assert pos is not None
        if outcome.retryable and self._retry(outcome):
            return
        error = outcome.error
        if outcome.prediction is not None and item.event is not None:
            try:
                version, policy, counts = self.models.judging(outcome.model_version)
                verdict, discrepancy = verdict_records(
                    event=item.event, topic=pos.topic, partition=pos.partition,
                    offset=pos.offset, prediction=outcome.prediction, model_version=version,
                    supported_counts=counts, policy=policy)
            except Exception as exc:  # noqa: BLE001 - this record's dead letter, not a crash
                log.exception("%s: building the verdict raised %s", item.describe(),
                              type(exc).__name__)
                error = unexpected_error(exc)
            else:
                self._pending.verdicts.append(verdict)
                if discrepancy is not None:
                    self._pending.discrepancies.append(discrepancy)
                self._pending_positions.append(pos)
                return
        assert error is not None
        record = item.context
        log.warning("%s: dead letter %s: %s", item.describe(), error.kind, error)
        self._pending.dead_letters.append(dead_letter_record(
            topic=pos.topic, partition=pos.partition, offset=pos.offset,
            key=getattr(record, "key", None), payload=getattr(record, "value", None),
            event_id=item.event.event_id if item.event else None, error=error))
        self._pending_positions.append(pos)

    def _retry(self, outcome: Outcome) -> bool:
        """Resubmit a not-the-event's-fault failure; True if it was resubmitted."""
        item = outcome.item
        assert item.position is not None
        if self._stop.is_set():
            return True  # left uncommitted on purpose: the next owner processes it
        attempts = self._retries.failed(item.position)
        if self._retries.exhausted(attempts):
            return False  # dead-letter it rather than block the partition forever
        log.warning("%s: %s; retrying (attempt %d)", item.describe(), outcome.error, attempts)
        self.pipeline.submit(WorkItem(item.position, item.event, context=item.context))
        return True

    # ---- write, then commit ---------------------------------------------------------
    def _write_and_commit(self, *, commit: bool = True) -> None:
        if (self._pending_positions or self._pending.shadow) \
                and time.monotonic() >= self._sink_retry_at:
            try:
                self._written_now = self.sink.write(self._pending)
            except SinkUnavailable as exc:
                delay = self._next_backoff()
                self._sink_failed = True
                self.health.postgres_ok(False, held=True)
                self._sink_retry_at = time.monotonic() + delay
                self.metrics.infra_retries.labels("postgres").inc()
                log.warning("postgres unavailable (%s); %d rows held, retry in %.1fs",
                            exc, len(self._pending), delay)
                return
            self.health.postgres_ok(True)
            if not self._publish_dead_letters():
                self._sink_retry_at = time.monotonic() + self._next_backoff()
                self.health.dlq_ok(False)
                return
            self.health.dlq_ok(True)
            self._written()
        if commit:
            self._commit()

    def _publish_dead_letters(self) -> bool:
        """Mirror dead letters to the DLQ topic (if set), each confirmed, before their offsets
        are committed. On a broker failure the rows are re-written (a no-op) and the letters
        not confirmed yet re-sent on the next try: at-least-once like everything else."""
        letters = [*self._pending.dead_letters, *self._written_now.duplicates]
        if self._dlq is None or not letters:
            return True
        return self._dlq.publish(letters, done=self._dlq_done)

    def _ping_postgres(self) -> None:
        # Readiness while nothing is written; the probe itself only reads the cached state.
        if not self._sink_failed and self.health.postgres_check_due(self.cfg.health_ping_s):
            self.health.postgres_ok(self.sink.reachable())

    def _written(self) -> None:
        if self._sink_failed:
            log.info("postgres is back; wrote %d held rows", len(self._pending))
        self._sink_failed = False
        self._sink_retry_at = 0.0
        self._backoff = self.cfg.retry_backoff_initial_s
        not_judged = self._written_now.not_judged
        self.metrics.count_written(
            self.stats, [v for v in self._pending.verdicts
                         if (v.topic, v.partition, v.offset) not in not_judged],
            [*self._pending.dead_letters, *self._written_now.duplicates])
        for pos in self._pending_positions:
            self.tracker.finished(pos.key, pos.offset)
            self._retries.forget(pos)
        self._pending = WriteBatch()
        self._pending_positions = []
        self._written_now = WriteResult()
        self._dlq_done = set()

    def _commit(self) -> None:
        offsets = self.tracker.committable()
        if not offsets or time.monotonic() < self._commit_retry_at:
            return
        committed = self.source.commit(offsets)
        self.health.kafka_ok(committed)
        if committed:
            self.tracker.mark_committed(offsets)
            self.metrics.commits.inc()
            self.health.committed()
            self._commit_retry_at = 0.0
        else:
            # Broker down or group rebalancing: rows keep being written meanwhile, and a later
            # commit covers these offsets too.
            self._commit_retry_at = time.monotonic() + self.cfg.retry_backoff_initial_s

    def _next_backoff(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.cfg.retry_backoff_max_s)
        return delay

    # ---- rebalance and shutdown -----------------------------------------------------
    def _drain(self, deadline_s: float) -> None:
        """Finish everything in flight, write it (retrying) and commit, within a deadline."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            step = max(0.1, min(1.0, end - time.monotonic()))
            drained = self.pipeline.drain(timeout=step) and self.pipeline.drain_shadow(step)
            # A slow model can drain for longer than max.poll.interval.ms: without polls the
            # member would leave the group and its final commits be refused.
            self.source.keep_alive()
            self._collect()
            self._sink_retry_at = self._commit_retry_at = 0.0  # the deadline bounds retries
            self._write_and_commit()
            if drained and not self._pending_positions and not self._pending.shadow \
                    and self.tracker.in_flight() == 0:
                return
            if self._pending_positions:
                time.sleep(min(self._next_backoff(), max(0.0, end - time.monotonic())))
        log.warning("drain deadline passed with %d events in flight: left uncommitted",
                    self.tracker.in_flight())

    def _on_revoke(self, revoked: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Write what already finished and return the revoked partitions' commit positions.

        Events still in flight for them are not waited for: the new owner re-processes them
        from the committed offset and the idempotent insert absorbs our late rows.
        """
        if not revoked or not hasattr(self, "pipeline"):
            return {}
        self._collect()
        if self._pending_positions:
            self._sink_retry_at = 0.0
            self._write_and_commit(commit=False)
        offsets = {tp: pos for tp, pos in self.tracker.committable().items() if tp in revoked}
        log.info("partitions revoked: %s; committing %s, %d events still in flight",
                 ", ".join(map(str, revoked)), {str(k): v for k, v in offsets.items()},
                 self.tracker.in_flight())
        # kafka-python (EAGER) keeps a partition's fetch position when the rebalance hands it
        # back to us: its in-flight offsets must then stay pending, or later commits would
        # pass records that were never written (lost if we crash before they are).
        self.tracker.detach(revoked)
        self._last_activity = time.monotonic()  # a rejoin is under way: not idle
        return offsets

    def _on_assign(self, assigned: list[TopicPartitionKey]) -> None:
        log.info("partitions assigned: %s", ", ".join(map(str, assigned)) or "none")
        self.tracker.reattach(assigned)
        self._last_activity = time.monotonic()

    def _shutdown(self) -> None:
        self._drain(self.cfg.shutdown_deadline_s)
        log.info("worker stopped: %d events, verdicts %s, dead letters %s", self.stats.events,
                 self.stats.verdicts, self.stats.dead_letters)

    def _update_lag(self) -> None:
        lags = self.source.lag() or {}
        committed = self.source.committed_lag()
        self.metrics.record_lag(lags, committed or {})
        self.health.backlog(None if committed is None else sum(committed.values()))
        written = sum(self.stats.verdicts.values()) + sum(self.stats.dead_letters.values())
        # Progress for people watching a long drain (the demo, a backlog after an outage).
        log.info("progress: %d events taken, %d written (%.1f/s), %d in flight, lag %d%s",
                 self.stats.events, written, written / max(self.stats.seconds, 1e-9),
                 self.tracker.in_flight(), sum(lags.values()),
                 ", paused" if self._paused else "")

    def _idle_long_enough(self) -> bool:
        """Idle means the group has nothing left: on every partition of the topic, whoever
        owns it, the committed offset is the end offset. What this member was assigned
        lately says nothing (a rebalance may be about to hand it a dead member's work)."""
        idle = self.cfg.exit_when_idle_s
        if idle is None or self.tracker.in_flight() or self._pending_positions:
            return False
        now = time.monotonic()
        if now - self._last_activity < idle or now - self._idle_checked_at < 1.0:
            return False
        self._idle_checked_at = now
        lags = self.source.committed_lag(whole_topic=True)
        if lags is None:
            return False  # the broker cannot say: an outage is not the end of the topic
        return all(lag == 0 for lag in lags.values())
