"""Sign-in throttling: failures counted per account name and per client address within a
sliding window, and a bound on password checks running at once (each argon2id check costs
64 MiB and tens of milliseconds of CPU).

State lives in this process: behind several console replicas each one limits separately.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Past this many tracked keys the oldest are forgotten, so a flood of made-up names cannot
# grow the process without bound.
MAX_KEYS = 10_000


class Busy(Exception):
    """Too many password checks running at once (answer 503 at once, no queueing)."""


class LoginThrottle:
    """Thread-safe (FastAPI runs the sign-in handler in its thread pool)."""

    def __init__(self, *, max_failures: int, max_failures_per_address: int, window_s: float,
                 concurrency: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = {"name": max_failures, "addr": max_failures_per_address}
        self._window = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._checks = threading.BoundedSemaphore(concurrency)

    def _keys(self, name: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        # Case-folded: "Rita" and "rita" share one budget.
        return ("name", name.strip().casefold()), ("addr", address)

    def retry_after(self, name: str, address: str) -> float | None:
        """Seconds until ``name`` from ``address`` may try again; None: now."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in self._keys(name, address):
                times = self._failures.get(key)
                if times is None:
                    continue
                while times and now - times[0] >= self._window:
                    times.popleft()
                if len(times) >= self._limits[key[0]]:
                    wait = max(wait, times[-self._limits[key[0]]] + self._window - now)
        return wait if wait > 0 else None

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(name, address):
                times = self._failures.setdefault(key, deque())
                times.append(now)
                while len(times) > self._limits[key[0]]:
                    times.popleft()
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """A correct password clears the name's failures (not the address's)."""
        with self._lock:
            self._failures.pop(self._keys(name, "")[0], None)

    @contextmanager
    def password_check(self) -> Iterator[None]:
        """A slot for one password check, or Busy when all are taken."""
        if not self._checks.acquire(blocking=False):
            raise Busy()
        try:
            yield
        finally:
            self._checks.release()
