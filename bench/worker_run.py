"""The real worker end to end (Kafka → S3 → decode → batch → model → Postgres → commit).

``TimedWorker`` is ``worker.app.Worker`` plus clocks on its main-thread steps; everything it
does is the worker's own code. Throughput is measured over the steady window from the first
accepted record to the last durable write, so group join, model warm-up and the idle wait
before exit are not counted. Per-stage busy time comes from the worker's Prometheus
registry (``binaudit_stage_seconds``) and from the main-thread clocks.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry

from bench.env import CpuMeter, RssSampler, machine_ticks, mib, process_cpu_s, rss_bytes
from bench.stagestats import mean_batch, stage_seconds
from core.settings import Settings
from inference.counter import BinCounter
from worker.app import Worker


class TimedWorker(Worker):
    """The worker, with clocks around its main-thread steps (no behaviour change)."""

    def __init__(self, settings: Settings, *, counter: BinCounter) -> None:
        self.registry = CollectorRegistry()
        super().__init__(settings, counter=counter, registry=self.registry)
        self.first_accept: float | None = None
        self.last_write: float | None = None
        self.rows_written = 0
        self.accept_s = 0.0
        self.write_commit_s = 0.0
        # CPU counters at the window's edges: (machine busy ticks, total ticks, process s).
        self.cpu_first: tuple[int, int, float] | None = None
        self.cpu_last: tuple[int, int, float] | None = None
        self.rss_trace: list[tuple[int, int]] = []  # (rows written so far, RSS bytes)

    def _accept(self, record: Any) -> None:
        started = time.perf_counter()
        if self.first_accept is None:
            self.first_accept = started
            self.cpu_first = (*machine_ticks(), process_cpu_s())
        super()._accept(record)
        self.accept_s += time.perf_counter() - started

    def _write_and_commit(self, *, commit: bool = True) -> None:
        started = time.perf_counter()
        super()._write_and_commit(commit=commit)
        self.write_commit_s += time.perf_counter() - started

    def _written(self) -> None:
        self.rows_written += len(self._pending_positions)
        super()._written()
        self.last_write = time.perf_counter()
        self.cpu_last = (*machine_ticks(), process_cpu_s())
        self.rss_trace.append((self.rows_written, rss_bytes()))

    def rss_growth(self) -> dict[str, float]:
        """RSS once a tenth of the events are written vs at the last write: a leak shows as
        growth proportional to events, a warm-up as a step before the first tenth."""
        if not self.rss_trace:
            return {}
        total = self.rss_trace[-1][0]
        early = next(rss for rows, rss in self.rss_trace if rows >= total / 10)
        return {"rss_at_10pct_mib": mib(early), "rss_at_end_mib": mib(self.rss_trace[-1][1]),
                "rss_growth_10pct_to_end_mib": mib(self.rss_trace[-1][1] - early)}

    def window_cpu(self) -> dict[str, float]:
        """Machine CPU busy share and this process's cores over the steady window."""
        if self.cpu_first is None or self.cpu_last is None or self.first_accept is None \
                or self.last_write is None:
            return {}
        busy = self.cpu_last[0] - self.cpu_first[0]
        total = max(1, self.cpu_last[1] - self.cpu_first[1])
        window = max(1e-9, self.last_write - self.first_accept)
        return {"window_machine_cpu_busy": round(busy / total, 3),
                "window_process_cpu_cores": round((self.cpu_last[2] - self.cpu_first[2])
                                                  / window, 2)}


def run_worker(settings: Settings, counter: BinCounter, *, expected: int) -> dict[str, Any]:
    """Run one worker until the topic is drained; throughput, stage busy shares, memory."""
    worker = TimedWorker(settings, counter=counter)
    with RssSampler() as rss, CpuMeter() as cpu:
        stats = worker.run()
    if worker.first_accept is None or worker.last_write is None:
        raise RuntimeError("the worker consumed nothing (topic empty or group never joined)")
    window = worker.last_write - worker.first_accept
    stages = stage_seconds(worker.registry)
    cfg = settings.inference
    streams = counter.plan.streams if counter.plan is not None else 1
    busy = {
        # Share of the window each stage's workers were busy (1.0 = saturated); the infer
        # stage's time is summed over its ``streams`` threads.
        "infer_thread": round(stages["infer"]["sum_s"] / (window * streams), 3),
        "decode_pool": round(stages["decode"]["sum_s"] / (window * cfg.decode_workers), 3),
        # Little's law: mean GETs outstanding (queued or in flight) per semaphore slot;
        # >= 1 means every slot was busy all the time, i.e. S3 was the limit.
        "s3_outstanding_per_slot": round(
            stages["fetch"]["sum_s"] / (window * settings.s3.max_concurrency), 3),
        "main_thread_accept": round(worker.accept_s / window, 3),
        "main_thread_write_commit": round(worker.write_commit_s / window, 3),
    }
    return {
        "events": stats.events, "rows_written": worker.rows_written, "expected": expected,
        "window_s": round(window, 2), "events_per_s": round(worker.rows_written / window, 2),
        "total_s_incl_startup": round(stats.seconds, 2),
        "verdicts": stats.verdicts, "dead_letters": stats.dead_letters,
        "mean_batch_size": mean_batch(worker.registry), "infer_streams": streams,
        "stages": stages, "busy": busy,
        "bottleneck": bottleneck(busy), **rss.as_dict(), **cpu.as_dict(),
        **worker.window_cpu(), **worker.rss_growth(),
    }


def bottleneck(busy: dict[str, float]) -> str:
    """The most saturated stage (main-thread steps are one thread: added together)."""
    shares = {
        "model (infer threads)": busy["infer_thread"],
        "decode pool": busy["decode_pool"],
        "S3 fetch (GETs outstanding per concurrency slot)": busy["s3_outstanding_per_slot"],
        "main thread (Kafka poll/parse, Postgres write, commit)":
            busy["main_thread_accept"] + busy["main_thread_write_commit"],
    }
    name, share = max(shares.items(), key=lambda kv: kv[1])
    return f"{name}: {share:.0%} of the window"
