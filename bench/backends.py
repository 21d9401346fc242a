"""Model alone per inference backend × batch size × streams, on the worker's
``BinCounter.infer`` path.

The "best model alone" of a device is the fastest row. All configurations are measured in
one process with their timed windows interleaved (one window of each in turn, ``repeats``
times), so load drifting on a shared machine hits every configuration alike and the ratios
between them stay fair. A configuration with ``streams`` > 1 is one counter (built with the
threads of one stream, ``threads_per_stream``) called from that many threads at once, as the
worker's pipeline does with ``streams`` infer threads; a backend that cannot be called
concurrently (``Backend.concurrent`` False) is measured as one stream only. A backend that
cannot run here is a row with its reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cpusplit import CpuSplit
from bench.env import Rate
from core.model.artifact import load_artifact
from inference.autotune import artifact_fingerprint
from inference.backends import BackendUnavailable, LoadContext, load_backend
from inference.counter import BinCounter
from inference.measure import run_streams, threads_per_stream

log = logging.getLogger(__name__)

# The worker's configuration before autotuning: eager PyTorch, channels_last, batch 16.
OLD_DEFAULT = ("eager", 16)


@dataclass(frozen=True)
class Config:
    backend: str
    batch_size: int
    streams: int = 1

    @property
    def label(self) -> str:
        return f"{self.backend} @ {self.batch_size} x{self.streams}"


# A configuration ready to measure: (counter, batch size, streams).
Measured = tuple[BinCounter, int, int]


def backend_counter(artifact: Path, device: torch.device, backend: str, batch_size: int,
                    cache_dir: Path, streams: int = 1) -> BinCounter:
    """A counter on ``backend`` with the threads of one of ``streams`` streams (exports or
    compiles into ``cache_dir`` when needed)."""
    model, card = load_artifact(artifact)
    # The same per-artifact folder autotuning uses: its ONNX/OpenVINO exports are reused.
    folder = cache_dir / artifact_fingerprint(artifact)[:16]
    ctx = LoadContext(artifact=artifact, card=card, device=device,
                      load_model=lambda: load_artifact(artifact)[0], cache_dir=folder,
                      max_batch_size=batch_size, threads=threads_per_stream(streams),
                      streams=streams)
    return BinCounter(load_backend(backend, ctx), card)


def counter_streams(counter: BinCounter, batch_size: int, streams: int, seconds: float, *,
                    at_end: Callable[[], None] | None = None) -> tuple[int, float]:
    """``counter.infer`` on a batch of ``batch_size`` from ``streams`` threads at once
    (``inference.measure.run_streams``): (images, elapsed seconds). The threads are named like
    the worker's (``infer-<i>``), so a ``CpuSplit`` counts their CPU as the model's in both
    places; ``at_end`` samples it before they exit."""
    side = counter.card.input_size
    x = torch.randn(batch_size, 3, side, side)
    # counter.infer returns host-side predictions: the device is synchronised
    calls, elapsed = run_streams(lambda: counter.infer(x), streams, seconds, name="infer",
                                 at_end=at_end)
    return batch_size * calls, elapsed


def alone_window(counter: BinCounter, batch_size: int, streams: int,
                 seconds: float) -> dict[str, Any]:
    """One model-alone window: images/s and where the CPU went (``bench.cpusplit``)."""
    with CpuSplit() as split:
        images, elapsed = counter_streams(counter, batch_size, streams, seconds,
                                          at_end=split.sample)
    return {"images_per_s": round(images / elapsed, 2), "images": images,
            "seconds": round(elapsed, 2), "cpu": split.as_dict(images)}


def measure_configs(counters: Mapping[str, tuple[BinCounter, int] | Measured], *,
                    repeats: int, min_seconds: float) -> dict[str, Rate]:
    """Interleaved windows: config A, B, C, A, B, C, ... (one warm-up call each first).
    A value is (counter, batch size[, streams]); one stream when streams is left out."""
    configs = {label: (c[0], c[1], c[2] if len(c) == 3 else 1)
               for label, c in counters.items()}
    for counter, bs, streams in configs.values():
        counter_streams(counter, bs, streams, 0.0)
    rates = {label: Rate() for label in configs}
    for _ in range(repeats):
        for label, (counter, bs, streams) in configs.items():
            images, elapsed = counter_streams(counter, bs, streams, min_seconds)
            rates[label].samples.append(images / elapsed)
    return rates


def sweep_streams(device: torch.device, tune_streams: list[int] | tuple[int, ...]
                  ) -> tuple[int, ...]:
    """The stream counts to sweep, as autotuning picks them: up to the CPU's threads; one on
    a GPU (its batches already run one after another on the device)."""
    if device.type != "cpu":
        return (1,)
    return tuple(sorted({n for n in tune_streams if 1 <= n <= torch.get_num_threads()})) or (1,)


def sweep(artifact: Path, device: torch.device, backends: list[str], batch_sizes: list[int],
          *, repeats: int, min_seconds: float, cache_dir: Path,
          streams: tuple[int, ...] = (1,)
          ) -> tuple[list[dict[str, Any]], dict[Config, BinCounter]]:
    """Every backend at every batch size and stream count (one stream only for a backend
    that cannot be called concurrently); (rows, the counters that loaded, for re-use)."""
    rows: list[dict[str, Any]] = []
    counters: dict[Config, BinCounter] = {}
    for name in backends:
        try:
            _load_backend_configs(counters, artifact, device, name, sorted(set(batch_sizes)),
                                  sorted(set(streams)), cache_dir)
        except BackendUnavailable as exc:
            log.warning("backend %s unavailable: %s", name, exc)
            rows.append({"backend": name, "batch_size": None, "error": str(exc)})
    rates = measure_configs({c.label: (counter, c.batch_size, c.streams)
                             for c, counter in counters.items()},
                            repeats=repeats, min_seconds=min_seconds)
    for cfg in counters:
        rate = rates[cfg.label]
        rows.append({"backend": cfg.backend, "batch_size": cfg.batch_size,
                     "streams": cfg.streams, "images_per_s": rate.as_dict()})
        log.info("%s: %.2f img/s", cfg.label, rate.median)
    return rows, counters


def _load_backend_configs(counters: dict[Config, BinCounter], artifact: Path,
                          device: torch.device, name: str, sizes: list[int],
                          streams: list[int], cache_dir: Path) -> None:
    # Dynamic-batch backends serve every size from one instance per stream count (its
    # threads differ); a static-shape one ("compiled") needs one per size. Stream counts
    # ascend, so the first instance says whether the backend may run several at all.
    concurrent = True
    for n in streams:
        if n > 1 and not concurrent:
            return
        shared: BinCounter | None = None
        for bs in sizes:
            started = time.perf_counter()
            if shared is None or name == "compiled":
                shared = backend_counter(artifact, device, name, bs, cache_dir, streams=n)
            concurrent = shared.backend.concurrent
            counters[Config(name, bs, n)] = shared
            log.info("%s at batch %d x%d ready in %.1fs", name, bs, n,
                     time.perf_counter() - started)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest configuration measured (the device's "best model alone")."""
    ok = [r for r in rows if "images_per_s" in r]
    return max(ok, key=lambda r: r["images_per_s"]["median"], default=None)


def process_startup(artifact: Path, device: str, cache_dir: Path, backends: list[str],
                    batch_sizes: list[int], *, timeout: float = 1500) -> dict[str, Any]:
    """Wall time of ``binaudit model tune-inference`` in a fresh process (imports, artifact,
    tuning or the cached choice, loading the chosen backend): once with an empty cache, once
    with it warm — the start-up a worker pays before its first poll."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BINAUDIT_INFERENCE__DEVICE": device,
           "BINAUDIT_INFERENCE__INFERENCE_CACHE_DIR": str(cache_dir),
           "BINAUDIT_INFERENCE__BACKEND": "auto",
           "BINAUDIT_INFERENCE__TUNE_BACKENDS": json.dumps([b for b in backends if b != "eager"]),
           "BINAUDIT_INFERENCE__TUNE_BATCH_SIZES": json.dumps(batch_sizes)}
    env.pop("BINAUDIT_INFERENCE__MAX_BATCH_SIZE", None)
    out: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "binaudit", "model", "tune-inference",
                               str(artifact)], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        out[f"{phase}_s"] = round(time.perf_counter() - started, 1)
        out[f"{phase}_rc"] = done.returncode
        out[f"{phase}_chosen"] = next((line for line in done.stdout.splitlines()
                                       if line.startswith("chosen:")), done.stderr[-300:])
        log.info("process start-up (%s cache): %.1fs", phase, out[f"{phase}_s"])
    return out
