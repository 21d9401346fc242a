"""What the worker's ``/healthz`` and ``/readyz`` say, and its alert for a broken dependency.

Liveness is about progress, not about the process being up: unhealthy when the consume loop
has not turned for ``stall_s`` seconds, or when the group has a backlog and no commit has
succeeded for ``stall_s`` seconds. Readiness: started, not stopping, no dependency failing.
"""

from __future__ import annotations

import logging
import time

from inference.faults import Fault, FaultBoard
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# While a dependency keeps failing, the alert line is repeated this often.
ALERT_REPEAT_S = 30.0


class WorkerHealth:
    def __init__(self, metrics: WorkerMetrics, stall_s: float) -> None:
        self.metrics = metrics
        self.stall_s = stall_s
        self.started = False
        self.stopping = False
        now = time.monotonic()
        self._last_turn = now
        self._last_progress = now
        self._alerted: dict[str, float] = {}  # dependency -> when its alert was last logged
        self._retries_seen: dict[str, int] = {}

    # ---- what the loop reports ------------------------------------------------------
    def turned(self) -> None:
        """The consume loop went round once."""
        self._last_turn = time.monotonic()

    def committed(self) -> None:
        """A commit succeeded."""
        self._last_progress = time.monotonic()

    def backlog(self, committed_lag: int | None) -> None:
        """The group's committed lag on our partitions (None: the broker could not say)."""
        if committed_lag == 0:
            self._last_progress = time.monotonic()  # nothing to commit is not a stall

    # ---- what the probes ask --------------------------------------------------------
    def healthy(self) -> bool:
        now = time.monotonic()
        return (self.started and now - self._last_turn < self.stall_s
                and now - self._last_progress < self.stall_s)

    def ready(self) -> bool:
        return self.started and not self.stopping and not self._alerted

    # ---- the alert ------------------------------------------------------------------
    def watch(self, board: FaultBoard) -> dict[str, Fault]:
        """Sync the alert metric, retry counters and log lines with ``board``; return the
        faults that are active now."""
        active = board.active()
        now = time.monotonic()
        for dependency, fault in active.items():
            last = self._alerted.get(dependency)
            if last is None:
                self.metrics.outages.labels(dependency).inc()
                log.error("ALERT %s failing: %s; partitions paused, retrying with backoff "
                          "(no dead letters, no commit past the affected events)",
                          dependency, fault.cause)
            elif now - last >= ALERT_REPEAT_S:
                log.error("ALERT %s still failing after %.0fs: %s", dependency,
                          now - fault.since, fault.cause)
            else:
                continue
            self._alerted[dependency] = now
        for dependency in [d for d in self._alerted if d not in active]:
            del self._alerted[dependency]
            log.warning("%s recovered: resuming consumption", dependency)
        for dependency in {*active, *self._known()}:
            self.metrics.dependency_down.labels(dependency).set(1 if dependency in active else 0)
        for dependency, count in board.retries().items():
            delta = count - self._retries_seen.get(dependency, 0)
            if delta > 0:
                self.metrics.infra_retries.labels(dependency).inc(delta)
            self._retries_seen[dependency] = count
        return active

    def _known(self) -> set[str]:
        return {"s3", "model", *self._retries_seen}
