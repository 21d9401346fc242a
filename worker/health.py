"""What the worker's ``/healthz`` and ``/readyz`` say, and its alert for a broken dependency.

Liveness is about progress, not about the process being up: unhealthy when the consume loop
has not turned for ``stall_s`` seconds, or when the group has a backlog and no commit has
succeeded for ``stall_s`` seconds *and no fault explains it*. A worker paused on a known fault
(a dependency alert: S3, the model; Postgres down with the batch held; the DLQ topic refusing
sends) is doing what it should: a restart would not help, so it stays live.
Readiness: started, not stopping, no dependency failing (the alert), Postgres reachable (the
last write, or the loop's periodic ``SELECT 1``), Kafka reachable (the group coordinator is
known and the last commit did not fail). The probes only read state the loop recorded: no
network call per probe.
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
        self._backlog: int | None = None
        self._postgres_up = True
        self._postgres_held = False  # Postgres down with a batch waiting to be written
        self._postgres_seen_at = now  # last successful write or ping
        self._postgres_checked_at = now
        self._dlq_up = True
        self._coordinator_known = True
        self._commit_ok = True

    # ---- what the loop reports ------------------------------------------------------
    def turned(self) -> None:
        """The consume loop went round once."""
        self._last_turn = time.monotonic()

    def committed(self) -> None:
        """A commit succeeded."""
        self._last_progress = time.monotonic()

    def backlog(self, committed_lag: int | None) -> None:
        """The group's committed lag on our partitions (None: the broker could not say)."""
        self._backlog = committed_lag
        if committed_lag == 0:
            self._last_progress = time.monotonic()  # nothing to commit is not a stall

    def postgres_ok(self, ok: bool, *, held: bool = False) -> None:
        """The last write or ping of Postgres succeeded (or not; ``held``: a batch waits)."""
        self._postgres_up = ok
        self._postgres_held = held and not ok
        if ok:
            self._postgres_seen_at = time.monotonic()

    def postgres_check_due(self, every_s: float) -> bool:
        """Whether the loop should check Postgres now: nothing succeeded for ``every_s``
        seconds (a write counts), and no check in that time either."""
        now = time.monotonic()
        if now - max(self._postgres_seen_at, self._postgres_checked_at) < every_s:
            return False
        self._postgres_checked_at = now
        return True

    def dlq_ok(self, ok: bool) -> None:
        """The last DLQ publish was confirmed (False: the broker failed; batch held)."""
        self._dlq_up = ok

    def kafka_ok(self, ok: bool) -> None:
        """The last commit succeeded (False: refused or broker unreachable)."""
        self._commit_ok = ok

    def coordinator(self, known: bool) -> None:
        """Whether the consumer knows its group coordinator (from the loop, each turn)."""
        self._coordinator_known = known

    def known_faults(self) -> list[str]:
        """Why the worker is paused on purpose (empty: no fault explains a stall)."""
        return [*self._alerted, *(["postgres"] if self._postgres_held else []),
                *([] if self._dlq_up else ["dlq"])]

    # ---- what the probes ask --------------------------------------------------------
    def healthy(self) -> bool:
        now = time.monotonic()
        if not self.started or now - self._last_turn >= self.stall_s:
            return False
        return (now - self._last_progress < self.stall_s or self._backlog == 0
                or bool(self.known_faults()))

    def ready(self) -> bool:
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """What keeps the worker from being ready (empty: ready)."""
        checks = {"not started": not self.started, "stopping": self.stopping,
                  "postgres": not self._postgres_up, "dlq": not self._dlq_up,
                  "kafka coordinator": not self._coordinator_known,
                  "kafka commit": not self._commit_ok}
        return [*(name for name, failing in checks.items() if failing), *self._alerted]

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
