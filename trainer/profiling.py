"""``--profile``: torch.profiler over a window of training steps -> Chrome trace + a Markdown
report with plots and rule checks in the spirit of SageMaker's ProfilerReport."""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from core import plots
from trainer.engine import PHASES, PassStats

log = logging.getLogger(__name__)


@dataclass
class ProfileWindow:
    """A profiler that records ``active`` steps after one warm-up step of the first epoch."""

    out_dir: Path
    device: torch.device
    steps_in_epoch: int
    active: int = 5
    top_ops: list[dict[str, Any]] = field(default_factory=list)
    trace_path: Path | None = None
    device_busy_s: float = 0.0
    profiled_steps: int = 0
    warmup_steps: int = 0
    _prof: Any = None
    _cpu_start: float = 0.0
    _wall_start: float = 0.0

    def __enter__(self) -> ProfileWindow:
        warmup = 1 if self.steps_in_epoch > 1 else 0
        active = max(1, min(self.active, self.steps_in_epoch - warmup))
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.profiled_steps, self.warmup_steps = active, warmup
        self._prof = profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._ready, record_shapes=False, profile_memory=True,
        )
        self._prof.__enter__()
        self._cpu_start, self._wall_start = time.process_time(), time.perf_counter()
        return self

    def step(self) -> None:
        self._prof.step()

    def __exit__(self, *exc: object) -> None:
        self._prof.__exit__(*exc)

    def _ready(self, prof: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trace_path = self.out_dir / "trace.json"
        prof.export_chrome_trace(str(self.trace_path))
        cuda = self.device.type == "cuda"
        rows = []
        for evt in prof.key_averages():
            device_us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0) if cuda else 0.0
            rows.append({"name": evt.key, "calls": evt.count,
                         "self_cpu_ms": evt.self_cpu_time_total / 1000,
                         "self_device_ms": device_us / 1000})
        self.device_busy_s = sum(r["self_device_ms"] for r in rows) / 1000
        key = "self_device_ms" if cuda else "self_cpu_ms"
        self.top_ops = sorted(rows, key=lambda r: r[key], reverse=True)[:15]

    def utilisation(self, stats: PassStats) -> tuple[str, float | None]:
        """(what was measured, fraction) over the profiled steps or epoch."""
        wall = time.perf_counter() - self._wall_start
        if wall <= 0:
            return "unknown", None
        if self.device.type == "cuda":
            first = self.warmup_steps
            window = stats.steps[first:first + self.profiled_steps]
            window_s = sum(sum(s.values()) for s in window)
            busy = self.device_busy_s / window_s if window_s and self.device_busy_s else None
            return "GPU kernel time / wall time (profiled steps)", busy
        cpu = time.process_time() - self._cpu_start
        return (f"process CPU time / (wall x {torch.get_num_threads()} threads)",
                cpu / (wall * torch.get_num_threads()))


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "GPU max allocated", torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux.
    return "process max RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rule_checks(
    *, steps: Sequence[dict[str, float]], batch_size: int, utilisation: float | None,
    device: torch.device,
) -> list[dict[str, str]]:
    """ProfilerReport-style rules, each with a verdict and a recommendation."""
    totals = {p: sum(s.get(p, 0.0) for s in steps) for p in PHASES}
    total = sum(totals.values()) or 1e-9
    step_times = [sum(s.values()) for s in steps]
    med = statistics.median(step_times) if step_times else 0.0
    outliers = [i for i, t in enumerate(step_times) if med and t > 3 * med]
    data_share = totals["data"] / total
    checks = [
        {"rule": "DataLoaderBottleneck", "triggered": str(data_share > 0.3),
         "detail": f"data loading is {data_share:.0%} of step time (threshold 30%)",
         "recommendation": "raise --workers, keep images cached/resized, pin memory on GPU"},
        {"rule": "LowDeviceUtilisation",
         "triggered": str(utilisation is not None and utilisation < 0.5),
         "detail": ("not measurable" if utilisation is None
                    else f"utilisation {utilisation:.0%} (threshold 50%)"),
         "recommendation": "increase the batch size or unfreeze more blocks; check input "
                           "pipeline and thread count (torch.set_num_threads)"},
        {"rule": "StepTimeOutliers", "triggered": str(bool(outliers)),
         "detail": f"{len(outliers)} of {len(step_times)} steps above 3x the median "
                   f"({med * 1000:.0f} ms)",
         "recommendation": "look for the first step (warm-up, cudnn autotune), GC pauses, "
                           "checkpoint writes or other processes sharing the cores"},
        {"rule": "BatchSize", "triggered": str(batch_size < 32 and device.type == "cuda"
                                              or batch_size < 8),
         "detail": f"batch size {batch_size}",
         "recommendation": "a larger batch amortises per-step overhead; scale lr with it"},
    ]
    return checks


def write_report(
    window: ProfileWindow, stats: PassStats, *, batch_size: int, world_size: int
) -> Path:
    """Markdown report + phase plot + step-time histogram next to the Chrome trace."""
    out = window.out_dir
    out.mkdir(parents=True, exist_ok=True)
    steps = stats.steps
    plots.step_phases(steps, out / "step_phases.png")
    plots.histogram([sum(s.values()) * 1000 for s in steps], out / "step_times.png",
                    xlabel="step time (ms)", title="step-time distribution")
    what, util = window.utilisation(stats)
    mem_what, mem_mb = peak_memory_mb(window.device)
    throughput = stats.n / stats.seconds if stats.seconds else 0.0
    total = sum(stats.phase_seconds.values()) or 1e-9
    lines = [
        "# Training profile", "",
        f"- device: {window.device}, world size {world_size}, batch size {batch_size}",
        f"- steps in the profiled epoch: {len(steps)}; throughput {throughput:.1f} img/s "
        f"(this rank), ~{throughput * world_size:.1f} img/s (all ranks)",
        f"- peak memory ({mem_what}): {mem_mb:.0f} MiB",
        f"- utilisation ({what}): " + ("n/a" if util is None else f"{util:.0%}"),
        f"- Chrome trace: `{window.trace_path.name if window.trace_path else 'not written'}` "
        "(open in chrome://tracing or https://ui.perfetto.dev)", "",
        "## Step time by phase", "", "| phase | seconds | share |", "|---|---|---|",
        *[f"| {p} | {stats.phase_seconds[p]:.3f} | {stats.phase_seconds[p] / total:.0%} |"
          for p in PHASES],
        "", "![phases](step_phases.png)", "", "![step times](step_times.png)", "",
        "## Top operators (profiled steps)", "",
        "| operator | calls | self CPU ms | self device ms |", "|---|---|---|---|",
        *[f"| `{r['name']}` | {r['calls']} | {r['self_cpu_ms']:.1f} | {r['self_device_ms']:.1f} |"
          for r in window.top_ops],
        "", "## Rules", "", "| rule | triggered | detail | recommendation |", "|---|---|---|---|",
        *[f"| {c['rule']} | {c['triggered']} | {c['detail']} | {c['recommendation']} |"
          for c in rule_checks(steps=steps, batch_size=batch_size, utilisation=util,
                               device=window.device)],
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    log.info("profile report written to %s", path)
    return path
