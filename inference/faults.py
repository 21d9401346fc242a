"""Broken dependencies, as the pipeline stages see them (thread-safe, no I/O).

A stage that meets an infrastructure fault (S3 refusing our credentials, a deleted bucket, a
model that raises) reports it here and retries; the first success clears it. Front ends read
the board to pause consumption, raise the alert metric, log the cause and answer health checks.
None of this is ever a dead letter: the events are not at fault.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    dependency: str  # "s3" or "model"
    cause: str  # e.g. "AccessDenied: Access Denied" or "RuntimeError('CUDA out of memory')"
    since: float  # time.monotonic() of the first failure of this outage


class FaultBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._retries: dict[str, int] = {}

    def report(self, dependency: str, cause: str) -> None:
        """One more failed attempt against ``dependency`` (it will be retried)."""
        with self._lock:
            old = self._faults.get(dependency)
            since = old.since if old is not None else time.monotonic()
            self._faults[dependency] = Fault(dependency, cause, since)
            self._retries[dependency] = self._retries.get(dependency, 0) + 1

    def retried(self, dependency: str) -> None:
        """A retry that is not an outage (an unclassified error for one object): counted in
        the retry metric, no alert."""
        with self._lock:
            self._retries[dependency] = self._retries.get(dependency, 0) + 1

    def clear(self, dependency: str) -> None:
        """``dependency`` answered normally: the outage (if any) is over."""
        with self._lock:
            self._faults.pop(dependency, None)

    def active(self) -> dict[str, Fault]:
        with self._lock:
            return dict(self._faults)

    def retries(self) -> dict[str, int]:
        """Failed attempts per dependency since start (each was retried)."""
        with self._lock:
            return dict(self._retries)
