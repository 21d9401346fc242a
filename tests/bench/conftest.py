"""``bench/`` is run from the repository root (``python -m bench.run``) and is not part of the
installed distribution, so with ``--import-mode=importlib`` it is importable only once the
root is on ``sys.path``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


# ---- a hand-made e2e section in rounds (bench/e2e.py's shape) -------------------------------

def _cpu(items: int, per_item: dict[str, float], foreign: float = 0.02) -> dict[str, Any]:
    return {"wall_s": 5.0, "items": items, "cores": {}, "cpu_ms_per_item": per_item,
            "foreign_cores": foreign}


ALONE_MS = {"own: infer": 40.0, "own: model threads (native pools)": 8.0, "other": 0.5}
WORKER_MS = {"own: infer": 50.0, "own: model threads (native pools)": 10.0,
             "own: decode": 6.0, "own: main thread": 3.0, "s3 server (moto)": 4.0,
             "kafka broker": 1.0, "postgres": 1.0, "other": 0.5}


def _window(best: float, worker: float, old: float | None = None,
            foreign: float = 0.02) -> dict[str, Any]:
    w = {"best": {"images_per_s": best, "cpu": _cpu(100, ALONE_MS, foreign)},
         "worker": {"images_per_s": worker, "cpu": _cpu(100, ALONE_MS, foreign)}}
    if old is not None:
        w["old_default"] = {"images_per_s": old, "cpu": _cpu(50, ALONE_MS, foreign)}
    return w


def _run(rate: float, foreign: float = 0.02) -> dict[str, Any]:
    stages = {k: {"sum_s": 1.0, "count": 10, "mean_ms": 100.0} for k in ("fetch", "decode",
                                                                          "infer")}
    return {"events": 400, "worker": {
        "events_per_s": rate, "rows_written": 400, "window_s": 10.0, "mean_batch_size": 4.0,
        "bottleneck": "model (infer thread): 90% of the window", "busy": {"infer_thread": 0.9},
        "stages": stages, "window_machine_cpu_busy": 0.97, "window_process_cpu_cores": 1.7,
        "rss_start_mib": 500.0, "rss_peak_mib": 700.0, "rss_growth_mib": 200.0,
        "cpu": _cpu(400, WORKER_MS, foreign)}}


def _section(worker_rates: list[float], best: list[float], *, load: float = 0.3,
             settled: float = 0.3, foreign: float = 0.02) -> dict[str, Any]:
    """A rounds section: len(best) = rounds + 1 windows; the old default (20 img/s) in the
    first and the last; the worker's own config alone at 90 % of the best."""
    windows = [_window(b, 0.9 * b, 20.0 if i in (0, len(best) - 1) else None, foreign)
               for i, b in enumerate(best)]
    sec: dict[str, Any] = {
        "format": "rounds", "backend": "onnxruntime", "batch_size": 4, "streams": 2,
        "max_wait_ms": 50, "best": {"backend": "onnxruntime", "batch_size": 4, "streams": 2},
        "configs": {k: {"backend": "onnxruntime", "batch_size": 4, "streams": 2}
                    for k in ("best", "worker")}
        | {"old_default": {"backend": "eager", "batch_size": 16, "streams": 1}},
        "backends": [{"backend": "eager", "batch_size": 1, "streams": 1,
                      "images_per_s": {"median": 9.0}},
                     {"backend": "onnxruntime", "batch_size": 4, "streams": 2,
                      "images_per_s": {"median": 45.0}}],
        "startup": {"cold_s": 80.0, "warm_s": 2.0, "tuning": {"backend": "onnxruntime",
                                                              "batch_size": 4, "streams": 2}},
        "per_event": {"events_per_s": 8.0, "events": 100, "window_s": 12.5},
        "windows": windows, "rounds": [_run(r, foreign) for r in worker_rates],
        "load_at_start": [load, 0.2, 0.1], "load_at_end": [2.4, 1.0, 0.5],
        "load_settled": [settled, 0.9, 0.5], "settle_s": 75.0, "cores": 2}
    from bench.summary_e2e import foreign_cores

    sec["foreign_cores"] = foreign_cores(sec)
    return sec


@pytest.fixture
def rounds_section() -> Callable[..., dict[str, Any]]:
    """``rounds_section(worker_rates, best_alone, load=, settled=, foreign=)``: an e2e
    section as ``bench.e2e.run_e2e`` writes it, with made-up numbers."""
    return _section
