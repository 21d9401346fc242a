"""Measuring inference configurations: (backend, batch size, streams) in interleaved rounds.

Pure timing and choice, no loading: inference/autotune.py builds the backends and calls
these. Each round gives every configuration one throughput; the median is its rate and the
slowest..fastest round its spread, and a configuration is only preferred when it beats the
others beyond that spread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict

from inference.backends import Backend

# The deadline is one forward pass of the chosen batch, within these bounds (ms): waiting
# longer than a forward buys no throughput (the next batch fills while this one runs).
MIN_WAIT_MS, MAX_WAIT_MS = 5, 1000
# Interleaved passes over every configuration: each yields one throughput per configuration,
# and their spread says how far apart two configurations must be to differ at all.
ROUNDS = 3


class Measurement(BaseModel):
    model_config = ConfigDict(frozen=True)

    backend: str
    batch_size: int
    images_per_s: float  # the median of the rounds' throughputs
    seconds_per_batch: float
    # The slowest and the fastest round (None in caches written before rounds were kept).
    rate_min: float | None = None
    rate_max: float | None = None
    streams: int = 1  # caches written before streams were tuned ran one

    @property
    def label(self) -> str:
        return f"{self.backend} at batch {self.batch_size} x{self.streams}"

    @property
    def low(self) -> float:
        return self.images_per_s if self.rate_min is None else self.rate_min

    @property
    def high(self) -> float:
        return self.images_per_s if self.rate_max is None else self.rate_max


# (backend, batch size, streams): one configuration to measure.
Config = tuple[Backend, int, int]


def threads_per_stream(streams: int) -> int:
    """The CPU threads each of ``streams`` inference streams gets."""
    return max(1, torch.get_num_threads() // streams)


def run_streams(call: Callable[[], object], streams: int, seconds: float, *,
                name: str = "stream", at_end: Callable[[], None] | None = None
                ) -> tuple[int, float]:
    """``call`` from ``streams`` threads at once for ``seconds`` (each thread makes at least
    one call; the window ends when the last one returns): (calls, elapsed seconds). The
    threads are named ``<name>-<i>``; ``at_end`` runs once every thread is done but before
    any exits (a profiler reading per-thread CPU loses a thread's ticks when it ends)."""
    counts = [0] * streams
    start, done = threading.Barrier(streams + 1), threading.Barrier(streams + 1)
    release = threading.Event()
    until: list[float] = []

    def run(i: int) -> None:
        start.wait()
        while counts[i] < 1 or time.perf_counter() < until[0]:
            call()
            counts[i] += 1
        done.wait()
        release.wait()

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}", daemon=True)
               for i in range(streams)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    until.append(started + seconds)
    start.wait()
    done.wait()
    elapsed = time.perf_counter() - started
    if at_end is not None:
        at_end()
    release.set()
    for t in threads:
        t.join()
    return sum(counts), elapsed


def stream_rate(call: Callable[[], object], streams: int, seconds: float) -> float:
    """Calls/s of ``call`` from ``streams`` threads at once over ``seconds``."""
    calls, elapsed = run_streams(call, streams, seconds, name="tune")
    return calls / elapsed


def _forward(backend: Backend, x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        out = backend.logits(x)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        return out
    return call


def measure_interleaved(configs: list[Config], input_size: int,
                        seconds: float) -> list[Measurement]:
    """Images/s of each (backend, batch size, streams): one warm-up forward each, then ROUNDS
    passes over all of them, ``seconds / ROUNDS`` (at least one forward per stream) per
    configuration and pass. Each pass gives every configuration one throughput (images over
    the window's forwards); the median is its rate and min..max its spread. Interleaving
    exposes every configuration to the same drift in load, so their spreads are comparable."""
    calls = [_forward(backend, torch.randn(bs, 3, input_size, input_size))
             for backend, bs, _ in configs]
    for call in calls:
        call()
    rates: list[list[float]] = [[] for _ in configs]
    for _ in range(ROUNDS):
        for i, ((_, bs, streams), call) in enumerate(zip(configs, calls, strict=True)):
            rates[i].append(bs * stream_rate(call, streams, seconds / ROUNDS))
    return [_measurement(backend.name, bs, streams, r)
            for (backend, bs, streams), r in zip(configs, rates, strict=True)]


def _measurement(backend: str, batch_size: int, streams: int,
                 rates: list[float]) -> Measurement:
    median = statistics.median(rates)
    # A batch's time in one stream: the streams run theirs side by side.
    return Measurement(backend=backend, batch_size=batch_size, images_per_s=median,
                       seconds_per_batch=batch_size * streams / median, rate_min=min(rates),
                       rate_max=max(rates), streams=streams)


def choose(measurements: list[Measurement]) -> Measurement:
    """The configuration with the best median, unless it does not beat the others beyond
    their spread: every configuration whose fastest round reaches the best one's slowest is
    as fast as far as the measurement can tell, and among those the one with the highest
    slowest round wins (the most dependable), then the smaller batch (less latency), then
    fewer streams (less memory)."""
    best = max(measurements, key=lambda m: m.images_per_s)
    tied = [m for m in measurements if m.high >= best.low]
    return max(tied, key=lambda m: (m.low, -m.batch_size, -m.streams))


def wait_ms_for(m: Measurement) -> int:
    return int(min(MAX_WAIT_MS, max(MIN_WAIT_MS, round(m.seconds_per_batch * 1000))))
