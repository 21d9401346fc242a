"""The in-process stages shared by the worker, replay and the HTTP endpoint:

    fetch (S3, async) → decode + preprocess (thread pool) → micro-batch → infer (one thread)

Stages overlap: the pool decodes batch n+1 while the model runs batch n. Each submitted item
ends as exactly one ``Outcome`` passed to ``on_outcome`` (a prediction or an error), from a
pipeline thread; callers hand outcomes to their own thread through a queue or a future.

A model switch (``swap``) happens between batches: new submissions wait while the batches in
flight finish with the old model, then counter, preprocessing and shadow change together, and
every Outcome names the model version that produced it. With a shadow model, each batch
production ran is also offered to it (``inference/shadow.py``), never waited for.

A batch whose forward pass runs out of memory is split in halves, down to single images, and
later forward passes are kept to the size that fitted. An image that still fails alone while
others succeed is that event's ``internal_error`` dead letter; a model that fails on every
image is a model fault (retried with backoff, alerted, never a dead letter).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.model.preprocess import Preprocessor
from core.settings import InferenceSettings
from inference.batching import BatchPlan, MicroBatcher
from inference.compare import Prediction
from inference.counter import BinCounter
from inference.faults import FaultBoard
from inference.forward import Result, SplittingForward
from inference.images import FetcherStopped, ImageFetcher
from inference.metrics import PipelineMetrics
from inference.positions import Position
from inference.retries import Backoff
from inference.shadow import ShadowBatch, ShadowRunner
from schemas.events import BinEvent
from schemas.records import ErrorKind, EventError

if TYPE_CHECKING:
    from inference.switcher import ModelSet

log = logging.getLogger(__name__)

MODEL = "model"  # the dependency's name on the FaultBoard and in metrics


@dataclass
class WorkItem:
    """One unit of work: an event to fetch, or image bytes already in hand (HTTP)."""

    position: Position | None
    event: BinEvent | None
    image: bytes | None = None
    context: Any = None  # caller's own (a Future for HTTP, the raw record for Kafka)
    submitted_at: float = field(default_factory=time.perf_counter)

    def describe(self) -> str:
        where = str(self.position) if self.position else "request"
        return f"{where} event {self.event.event_id if self.event else '-'}"


@dataclass(frozen=True)
class Outcome:
    item: WorkItem
    prediction: Prediction | None = None
    error: EventError | None = None
    # Not the event's fault (model failure, stopping): the caller retries or leaves it
    # uncommitted; never a dead letter on the first try.
    retryable: bool = False
    # The version of the model that produced ``prediction`` (None: no forward pass).
    model_version: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    max_batch_size: int
    max_wait_s: float
    decode_workers: int
    artificial_delay_s: float = 0.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    model_fault_flag: Path | None = None
    oom_above_batch: int | None = None  # test hook (InferenceSettings.oom_above_batch)

    @classmethod
    def from_settings(cls, inference: InferenceSettings, *, max_batch_size: int | None = None,
                      max_wait_ms: int | None = None, plan: BatchPlan | None = None
                      ) -> PipelineConfig:
        """Batch limits: the arguments (serve's own), else pinned inference settings, else the
        autotuned ``plan``, else batch 16 / 50 ms (the defaults from before autotuning)."""
        size = (max_batch_size or inference.max_batch_size or (plan and plan.max_batch_size)
                or 16)
        wait = max_wait_ms or inference.max_wait_ms or (plan and plan.max_wait_ms) or 50
        return cls(max_batch_size=size, max_wait_s=wait / 1000,
                   decode_workers=inference.decode_workers,
                   artificial_delay_s=inference.artificial_delay_s,
                   backoff_initial_s=inference.retry_backoff_initial_s,
                   backoff_max_s=inference.retry_backoff_max_s,
                   model_fault_flag=inference.model_fault_flag,
                   oom_above_batch=inference.oom_above_batch)


class InferencePipeline:
    """``on_shadow`` receives the shadow's answers (from its thread) when ``shadow`` is set."""

    def __init__(self, counter: BinCounter, preprocessor: Preprocessor, config: PipelineConfig,
                 on_outcome: Callable[[Outcome], None], *, fetcher: ImageFetcher | None = None,
                 metrics: PipelineMetrics | None = None, shadow: BinCounter | None = None,
                 on_shadow: Callable[[ShadowBatch], None] | None = None,
                 shadow_queue_batches: int = 8) -> None:
        # One board for every stage: the fetcher reports S3, the model stage reports itself.
        self.faults = fetcher.faults if fetcher is not None else FaultBoard()
        self.counter = counter
        self.preprocess = preprocessor
        self.config = config
        self.on_outcome = on_outcome
        self.fetcher = fetcher
        self.metrics = metrics or PipelineMetrics.disabled()
        self.metrics.observe_backend(counter.backend_name, config.max_batch_size, counter.tuning,
                                     streams_of(counter))
        self._batcher: MicroBatcher[tuple[WorkItem, torch.Tensor]] = MicroBatcher(
            config.max_batch_size, config.max_wait_s)
        self._ready: collections.deque[list[tuple[WorkItem, torch.Tensor]]] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._flushing = 0
        self._holding = 0  # swaps under way: submissions wait
        self._stopping = False
        self._on_shadow = on_shadow
        self._shadow_queue_batches = shadow_queue_batches
        self._shadow_counter = shadow
        self._shadow: ShadowRunner | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # One infer thread per inference stream of the current model (autotuning's plan);
        # a swap to a model with fewer streams lets the extra threads end.
        self._streams = streams_of(counter)
        self._threads: dict[int, threading.Thread] = {}
        self._forwarder = SplittingForward(config.max_batch_size)

    # ---- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> InferencePipeline:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.config.decode_workers,
                                                           thread_name_prefix="decode")
        with self._cond:
            self._start_streams()
        self._shadow = self._start_shadow(self._shadow_counter)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in list(self._threads.values()):
            thread.join(timeout=60)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._shadow is not None:
            self._shadow.close(timeout=0.0)  # the caller drained it (drain_shadow) if it cared

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    # ---- submission -------------------------------------------------------------------
    def submit(self, item: WorkItem) -> None:
        """Start an item; its Outcome arrives later through ``on_outcome`` (a swap under way
        holds it until the new model runs)."""
        with self._cond:
            while self._holding and not self._stopping:
                self._cond.wait(timeout=0.5)
            self._in_flight += 1
        if item.image is not None:
            self._decode_async(item, item.image)
            return
        if item.event is None or self.fetcher is None:
            self._finish(Outcome(item, error=EventError(ErrorKind.SCHEMA_VIOLATION,
                                                        "no image and no event to fetch")))
            return
        started = time.perf_counter()
        future = self.fetcher.fetch(item.event.image_uri)
        future.add_done_callback(lambda f: self._fetched(item, f, started))

    def drain(self, timeout: float | None = None) -> bool:
        """Close partial batches at once and wait until nothing is in flight."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(timeout=remaining if remaining is not None else 0.5)
                return True
            finally:
                self._flushing -= 1

    def drain_shadow(self, timeout: float | None = None) -> bool:
        """Wait until the shadow has run every batch it queued (True at once without one)."""
        shadow = self._shadow
        return shadow is None or shadow.drain(timeout)

    # ---- switching models -------------------------------------------------------------
    def swap(self, models: ModelSet, *, timeout: float | None = None) -> bool:
        """Run ``models`` from now on: new submissions wait while everything in flight
        finishes with the old model, then counter, preprocessing (the new card's) and shadow
        switch together. False, with nothing changed, when the work in flight did not finish
        within ``timeout``. Call it from the thread that owns the pipeline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._holding += 1
        try:
            if not self.drain(timeout):
                return False
            old_shadow = self._shadow
            if old_shadow is not None:  # its last answers still belong to the old set
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                old_shadow.close(timeout=left)
            with self._cond:
                self.counter = models.production
                self.preprocess = Preprocessor(models.production.card, self.preprocess.limits)
                self._forwarder.reset()  # another model's memory
                self._shadow = self._start_shadow(models.shadow)
                self._streams = streams_of(models.production)
                self._start_streams()
                self._cond.notify_all()  # threads beyond the new count end
            self.metrics.observe_backend(models.production.backend_name,
                                         self.config.max_batch_size, models.production.tuning,
                                         streams_of(models.production))
            return True
        finally:
            with self._cond:
                self._holding -= 1
                self._cond.notify_all()

    def _start_shadow(self, counter: BinCounter | None) -> ShadowRunner | None:
        if counter is None or self._on_shadow is None:
            return None
        return ShadowRunner(counter, queue_batches=self._shadow_queue_batches,
                            on_result=self._on_shadow, metrics=self.metrics).start()

    # ---- stages -----------------------------------------------------------------------
    def _fetched(self, item: WorkItem, future: concurrent.futures.Future[bytes],
                 started: float) -> None:
        try:
            data = future.result()
        except EventError as exc:
            self._finish(Outcome(item, error=exc))
            return
        except (FetcherStopped, concurrent.futures.CancelledError) as exc:
            self._finish(Outcome(item, error=EventError(ErrorKind.SHUTTING_DOWN,
                                                        f"fetch stopped: {exc!r}"),
                                 retryable=True))
            return
        self.metrics.observe_stage("fetch", time.perf_counter() - started)
        self._decode_async(item, data)

    def _decode_async(self, item: WorkItem, data: bytes) -> None:
        assert self._pool is not None, "pipeline used outside its `with` block"
        try:
            self._pool.submit(self._decode, item, data)
        except RuntimeError:  # pool shut down during stop: the item stays uncommitted
            self._finish(Outcome(item, error=EventError(ErrorKind.SHUTTING_DOWN, "stopping"),
                                 retryable=True))

    def _decode(self, item: WorkItem, data: bytes) -> None:
        started = time.perf_counter()
        try:
            tensor = self.preprocess(data)
        except EventError as exc:
            self._finish(Outcome(item, error=exc))
            return
        except Exception as exc:  # a decoder bug must not kill the pool thread
            log.exception("%s: unexpected decode failure", item.describe())
            self._finish(Outcome(item, error=EventError(ErrorKind.DECODE_ERROR, repr(exc))))
            return
        self.metrics.observe_stage("decode", time.perf_counter() - started)
        with self._cond:
            closed = self._batcher.add((item, tensor), time.monotonic())
            if closed:
                self._ready.append(closed)
            self._cond.notify_all()

    def _start_streams(self) -> None:
        """Start the infer threads the current stream count lacks (holding ``_cond``)."""
        for index in range(self._streams):
            thread = self._threads.get(index)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._batch_loop, args=(index,),
                                          name=f"infer-{index}", daemon=True)
                self._threads[index] = thread
                thread.start()

    def _next_batch(self, index: int) -> list[tuple[WorkItem, torch.Tensor]] | None:
        """Block until a batch is due (full, past its deadline, or draining); None ends the
        thread (stopping, or its stream is beyond the current model's count)."""
        with self._cond:
            while True:
                if index >= self._streams:
                    return None
                if self._ready:
                    return self._ready.popleft()
                batch = self._batcher.poll(time.monotonic())
                if batch is None and (self._flushing or self._stopping):
                    batch = self._batcher.flush()
                if batch:
                    return batch
                if self._stopping:
                    return None
                deadline = self._batcher.deadline()
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._cond.wait(timeout=wait if wait is not None else 0.5)

    def _batch_loop(self, index: int) -> None:
        while (batch := self._next_batch(index)) is not None:
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[WorkItem, torch.Tensor]]) -> None:
        items = [item for item, _ in batch]
        stacked = torch.stack([t for _, t in batch])
        counter = self.counter  # a swap waits for this batch: it stays this batch's model
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            started = time.perf_counter()
            results = self._forwarder.run(lambda b: self._infer(counter, b), stacked)
            if any(isinstance(r, Prediction) for r in results):
                break
            # Every image failed: the model's failure (broken artifact, no memory at all),
            # not the events'.
            exc = results[0]
            self.faults.report(MODEL, repr(exc))
            delay = backoff.next()
            log.error("inference failed for a batch of %d (first %s): %r; retrying the "
                      "batch in %.1fs", len(items), items[0].describe(), exc, delay)
            if self._wait_unless_stopping(delay):
                for item in items:  # left uncommitted: the next owner processes them
                    self._finish(Outcome(item, error=EventError(
                        ErrorKind.SHUTTING_DOWN, f"stopping while the model fails: {exc!r}"),
                        retryable=True))
                return
        self.faults.clear(MODEL)
        if self.config.artificial_delay_s:
            time.sleep(self.config.artificial_delay_s)
        self.metrics.observe_batch(len(items), time.perf_counter() - started)
        if self._shadow is not None:  # the same decoded batch; skipped when the shadow lags
            self._shadow.offer(items, stacked, production_version=counter.version)
        for item, result in zip(items, results, strict=True):
            self._finish(_outcome(item, result, counter.version))

    def _infer(self, counter: BinCounter, batch: torch.Tensor) -> list[Prediction]:
        flag = self.config.model_fault_flag
        if flag is not None and flag.exists():
            raise RuntimeError(f"injected model fault ({flag} exists)")
        limit = self.config.oom_above_batch
        if limit is not None and batch.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError(
                f"injected out of memory: a batch of {batch.shape[0]} > {limit} "
                "(test hook oom_above_batch)")
        return counter.infer(batch)

    def _wait_unless_stopping(self, seconds: float) -> bool:
        """Sleep ``seconds`` (the backoff); True at once if the pipeline is stopping."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)
            return self._stopping

    def _finish(self, outcome: Outcome) -> None:
        """Deliver exactly one outcome per submitted item."""
        try:
            self.on_outcome(outcome)
        except Exception:
            log.exception("%s: outcome handler failed", outcome.item.describe())
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()


def streams_of(counter: BinCounter) -> int:
    """The inference streams a counter was built for (1 without a tuned plan)."""
    return counter.plan.streams if counter.plan is not None else 1


def _outcome(item: WorkItem, result: Result, version: str) -> Outcome:
    if isinstance(result, Prediction):
        return Outcome(item, prediction=result, model_version=version)
    # The model fails on this image alone while others succeed: the image's problem; a dead
    # letter rather than a partition blocked for ever.
    log.error("%s: the model fails on this image alone: %r", item.describe(), result)
    return Outcome(item, error=EventError(
        ErrorKind.INTERNAL_ERROR,
        f"the model fails on this image alone ({type(result).__name__}: {result}) while "
        "other images of its batch succeed"))
