"""Running scenarios as child processes with timeouts, and waiting for a quiet machine."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import load_average, usable_cores

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChildRunner:
    """``run(name, config, timeout)`` → the scenario's JSON, or ``{"error": ...}``."""

    log_dir: Path
    deadline: float | None = None  # monotonic; no child may run past it
    env: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def run(self, name: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._n += 1
        stem = f"{self._n:02d}-{name}"
        json_out, log_path = self.log_dir / f"{stem}.json", self.log_dir / f"{stem}.log"
        timeout = min(timeout, self.remaining())
        meta: dict[str, Any] = {"load_average_before": load_average(), "log": str(log_path)}
        if timeout < 5:
            return {**meta, "error": "skipped: the time budget is spent"}
        cmd = [sys.executable, "-m", "bench.scenario", name, "--config", json.dumps(config),
               "--json-out", str(json_out)]
        log.info("%s (timeout %.0fs, load %s)", stem, timeout, meta["load_average_before"])
        started = time.monotonic()
        with log_path.open("wb") as fh:
            # Own session: a timeout kills the child and anything it started (compile workers).
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    env={**os.environ, **self.env}, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {**meta, "error": f"timed out after {timeout:.0f}s",
                        "seconds": round(time.monotonic() - started, 1)}
        meta["seconds"] = round(time.monotonic() - started, 1)
        if rc != 0 or not json_out.is_file():
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return {**meta, "error": f"exit {rc}: {' | '.join(tail)}"[:600]}
        result: dict[str, Any] = json.loads(json_out.read_text())
        return {**result, **meta}


def wait_for_quiet(*, max_load_per_core: float, max_wait_s: float,
                   poll_s: float = 15.0) -> dict[str, Any]:
    """Wait (bounded) until the 1-minute load per core drops below ``max_load_per_core``."""
    cores = usable_cores()
    started = time.monotonic()
    first = load_average()
    while load_average()[0] / cores > max_load_per_core:
        if time.monotonic() - started >= max_wait_s:
            log.warning("load %s still above %.2f per core after %.0fs: running anyway",
                        load_average(), max_load_per_core, max_wait_s)
            break
        log.info("load %s on %d cores: waiting for other jobs to finish", load_average(),
                 cores)
        time.sleep(poll_s)
    return {"load_when_asked": first, "load_at_start": load_average(),
            "waited_s": round(time.monotonic() - started, 1),
            "threshold_per_core": max_load_per_core}
