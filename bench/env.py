"""The machine, its load, memory sampling and timing helpers (no services, no model)."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def write_result(out: Path, result: dict[str, Any], markdown: str) -> None:
    """``OUT.json`` (the numbers) and ``OUT.md`` (the table people read), and the table on
    stdout: what every single-purpose bench module leaves behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def machine_info(device: str) -> dict[str, Any]:
    """What ran the benchmark: host, CPU, cores, memory, GPU, library versions, date (UTC)."""
    import torch
    import torchvision

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    mem_total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    return {
        "host": socket.gethostname(),
        "device": device,
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "memory_gib": round(mem_total / 2**30, 1),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }


# ---- memory ---------------------------------------------------------------------------------

def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """Peak RSS of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples RSS in a background thread while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self.end = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end = rss_bytes()
        self.peak = max(self.peak, self.end)

    def as_dict(self) -> dict[str, float]:
        return {"rss_start_mib": mib(self.start), "rss_peak_mib": mib(self.peak),
                "rss_end_mib": mib(self.end), "rss_growth_mib": mib(self.peak - self.start)}


def mib(n: int) -> float:
    return round(n / 2**20, 1)


class CpuMeter:
    """Machine-wide and this-process CPU use over the ``with`` block (from /proc)."""

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._proc0 = process_cpu_s()
        self._busy0, self._total0 = machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._t0
        self.process_cpu_s = process_cpu_s() - self._proc0
        busy, total = machine_ticks()
        self.machine_busy = (busy - self._busy0) / max(1, total - self._total0)

    def as_dict(self) -> dict[str, float]:
        return {"process_cpu_cores": round(self.process_cpu_s / max(self.wall_s, 1e-9), 2),
                "machine_cpu_busy": round(self.machine_busy, 3)}


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


# ---- timing ---------------------------------------------------------------------------------

@dataclass
class Rate:
    """Items per second over several repeats; ``median`` is what gets reported."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"median": round(self.median, 2), "min": round(min(self.samples, default=0), 2),
                "max": round(max(self.samples, default=0), 2), "repeats": len(self.samples)}


def measure_rate(step: Callable[[], int], *, repeats: int, min_seconds: float,
                 min_steps: int = 1, sync: Callable[[], None] | None = None) -> Rate:
    """Call ``step`` (it returns how many items it processed) until ``min_seconds`` and
    ``min_steps`` are both reached; once per repeat. ``sync`` runs before each clock read
    (``torch.cuda.synchronize`` for asynchronous devices)."""
    rate = Rate()
    for _ in range(repeats):
        if sync:
            sync()
        started = time.perf_counter()
        items = steps = 0
        while True:
            items += step()
            steps += 1
            if steps >= min_steps:
                if sync:
                    sync()
                elapsed = time.perf_counter() - started
                if elapsed >= min_seconds:
                    break
        rate.samples.append(items / elapsed)
    return rate


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    """Run ``fn`` once; (items it returned, seconds)."""
    started = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - started
