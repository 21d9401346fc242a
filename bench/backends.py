"""Model alone per inference backend × batch size, on the worker's ``BinCounter.infer`` path.

The "best model alone" of a device is the fastest row. All configurations are measured in
one process with their timed windows interleaved (one window of each in turn, ``repeats``
times), so load drifting on a shared machine hits every configuration alike and the ratios
between them stay fair. A backend that cannot run here is a row with its reason.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.env import Rate, measure_rate
from bench.model_speed import counter_step
from core.model.artifact import load_artifact
from inference.autotune import artifact_fingerprint
from inference.backends import BackendUnavailable, LoadContext, load_backend
from inference.counter import BinCounter

log = logging.getLogger(__name__)

# The worker's configuration before autotuning: eager PyTorch, channels_last, batch 16.
OLD_DEFAULT = ("eager", 16)


@dataclass(frozen=True)
class Config:
    backend: str
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.backend} @ {self.batch_size}"


def backend_counter(artifact: Path, device: torch.device, backend: str, batch_size: int,
                    cache_dir: Path) -> BinCounter:
    """A counter on ``backend`` (exports/compiles into ``cache_dir`` when needed)."""
    model, card = load_artifact(artifact)
    # The same per-artifact folder autotuning uses: its ONNX/OpenVINO exports are reused.
    folder = cache_dir / artifact_fingerprint(artifact)[:16]
    ctx = LoadContext(artifact=artifact, card=card, device=device,
                      load_model=lambda: load_artifact(artifact)[0], cache_dir=folder,
                      max_batch_size=batch_size, threads=torch.get_num_threads())
    return BinCounter(load_backend(backend, ctx), card)


def measure_configs(counters: dict[str, tuple[BinCounter, int]], *, repeats: int,
                    min_seconds: float) -> dict[str, Rate]:
    """Interleaved windows: config A, B, C, A, B, C, ... (one warm-up step each first)."""
    steps = {}
    for label, (counter, bs) in counters.items():
        side = counter.card.input_size
        steps[label] = counter_step(counter, torch.randn(bs, 3, side, side))
        steps[label]()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    rates = {label: Rate() for label in counters}
    for _ in range(repeats):
        for label, step in steps.items():
            rates[label].samples += measure_rate(step, repeats=1, min_seconds=min_seconds,
                                                 sync=sync).samples
    return rates


def sweep(artifact: Path, device: torch.device, backends: list[str], batch_sizes: list[int],
          *, repeats: int, min_seconds: float, cache_dir: Path
          ) -> tuple[list[dict[str, Any]], dict[Config, BinCounter]]:
    """Every backend at every batch size; (rows, the counters that loaded, for re-use)."""
    rows: list[dict[str, Any]] = []
    counters: dict[Config, BinCounter] = {}
    for name in backends:
        for bs in sorted(set(batch_sizes)):
            started = time.perf_counter()
            try:
                counters[Config(name, bs)] = _reuse_or_load(counters, artifact, device, name,
                                                            bs, cache_dir)
            except BackendUnavailable as exc:
                log.warning("backend %s unavailable: %s", name, exc)
                rows.append({"backend": name, "batch_size": None, "error": str(exc)})
                break
            log.info("%s at batch %d loaded in %.1fs", name, bs, time.perf_counter() - started)
    rates = measure_configs({c.label: (counter, c.batch_size) for c, counter in counters.items()},
                            repeats=repeats, min_seconds=min_seconds)
    for cfg in counters:
        rate = rates[cfg.label]
        rows.append({"backend": cfg.backend, "batch_size": cfg.batch_size,
                     "images_per_s": rate.as_dict()})
        log.info("%s: %.2f img/s", cfg.label, rate.median)
    return rows, counters


def _reuse_or_load(counters: dict[Config, BinCounter], artifact: Path, device: torch.device,
                   name: str, bs: int, cache_dir: Path) -> BinCounter:
    # Dynamic-batch backends serve every size from one instance; compiled ones need their own.
    if name != "compiled":
        for cfg, counter in counters.items():
            if cfg.backend == name:
                return counter
    return backend_counter(artifact, device, name, bs, cache_dir)


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
