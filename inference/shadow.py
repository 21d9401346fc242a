"""Shadow traffic: a second model on production's decoded batches, off the production path.

After production's forward pass on a batch, the pipeline offers the same stacked tensor (and
its items) to a :class:`ShadowRunner`: a bounded queue of ``shadow_queue_batches`` batches
feeding one thread of its own. A full queue skips the batch (``binaudit_shadow_skipped_total``),
so production never waits on the shadow, and nothing is fetched or decoded twice. Every batch
the shadow ran ends as one :class:`ShadowBatch` passed to ``on_result`` (from the shadow
thread); the worker turns it into ``shadow_results`` rows, never into verdicts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.model.card import ModelCard
from inference.compare import Prediction
from inference.counter import BinCounter
from inference.metrics import PipelineMetrics

if TYPE_CHECKING:
    from inference.pipeline import WorkItem

log = logging.getLogger(__name__)

# How often the idle shadow thread looks at its stop flag.
_IDLE_WAKE_S = 0.5


@dataclass(frozen=True)
class ShadowBatch:
    """The shadow's answer for one production batch: one prediction per item, in order, or
    the error that made the whole forward pass fail."""

    items: Sequence[WorkItem]
    predictions: Sequence[Prediction] | None
    error: Exception | None
    model_version: str
    production_version: str
    card: ModelCard


@dataclass(frozen=True)
class _Job:
    items: Sequence[WorkItem]
    batch: torch.Tensor
    production_version: str


class ShadowRunner:
    """One shadow model behind a bounded queue and one thread (``with`` starts and stops it)."""

    def __init__(self, counter: BinCounter, *, queue_batches: int,
                 on_result: Callable[[ShadowBatch], None],
                 metrics: PipelineMetrics | None = None) -> None:
        self.counter = counter
        self.on_result = on_result
        self.metrics = metrics or PipelineMetrics.disabled()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_batches)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str:
        return self.counter.version

    def start(self) -> ShadowRunner:
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> ShadowRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(timeout=0.0)

    def offer(self, items: Sequence[WorkItem], batch: torch.Tensor, *,
              production_version: str) -> bool:
        """Queue one production batch for the shadow; False (counted) when the queue is full
        or the runner is closing: production goes on either way."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait(_Job(tuple(items), batch, production_version))
        except queue.Full:
            self.metrics.shadow_skipped.inc()
            return False
        return True

    def drain(self, timeout: float | None) -> bool:
        """Wait until every queued batch has been run and delivered (False at the deadline)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                done.wait(timeout=remaining if remaining is not None else _IDLE_WAKE_S)
        return True

    def close(self, timeout: float | None) -> None:
        """Run what is queued within ``timeout``, then stop; batches still queued after it are
        dropped (counted as skipped)."""
        self.drain(timeout)
        self._stop.set()
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            dropped += 1
        if dropped:
            self.metrics.shadow_skipped.inc(dropped)
            log.warning("shadow %s stopped with %d batches not run (deadline)", self.version,
                        dropped)
        if self._thread is not None:
            self._thread.join(timeout=max(timeout or 0.0, 5.0))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=_IDLE_WAKE_S)
            except queue.Empty:
                continue
            try:
                self._run(job)
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        predictions: list[Prediction] | None = None
        error: Exception | None = None
        try:
            predictions = self.counter.infer(job.batch)
        except Exception as exc:  # noqa: BLE001 - the shadow's failure never reaches production
            error = exc
            self.metrics.shadow_failures.inc()
            log.error("shadow %s failed on a batch of %d: %r", self.version, len(job.items), exc)
        else:
            self.metrics.shadow_batches.inc()
            self.metrics.observe_stage("shadow", time.perf_counter() - started)
        result = ShadowBatch(items=job.items, predictions=predictions, error=error,
                             model_version=self.version,
                             production_version=job.production_version,
                             card=self.counter.card)
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001 - a handler bug must not end the shadow thread
            log.exception("shadow result handler failed")
