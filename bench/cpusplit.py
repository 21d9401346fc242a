"""Where a window's CPU went: this process's threads by role, the local services, the rest.

A worker on 2 cores shares them with everything else on the machine: its own stages (decode
pool, S3 client loop, Kafka/Postgres on the main thread), the local services it talks to
(moto's S3 server, the Kafka broker, Postgres) and anything foreign. The model is only as fast
as the cycles left to it, so the gap between "worker end to end" and "model alone" is
explained by these shares; the foreign share also says whether the window was contended.

CPU time is read from /proc (utime + stime, in clock ticks) at the start and the end of the
window; a process or thread that ends inside the window loses its ticks (they are few here:
the services and the worker's pools live for the whole run). Linux only.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# Process command lines → the service they are (the rest of the machine is "other").
SERVICES = (("s3 server (moto)", "moto_server"), ("kafka broker", "kafka"),
            ("postgres", "postgres"))
NATIVE = "model threads (native pools)"


def _ticks(stat_path: str) -> int | None:
    try:
        with open(stat_path) as fh:
            # The command name may hold spaces or parentheses: fields start after the last ')'.
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def service_of(cmdline: str) -> str:
    """The group a foreign process's CPU is counted in."""
    return next((name for name, needle in SERVICES if needle in cmdline), "other")


def thread_role(name: str) -> str:
    """A Python thread's name without its pool index (``decode_3`` → ``decode``)."""
    return re.sub(r"[-_ ]?\d+$", "", name) or name


def _own_threads() -> dict[int, str]:
    """Native thread id → role, for the Python threads of this process; the others (torch,
    ONNX Runtime and OpenVINO pools) are counted as the model's."""
    roles = {t.native_id: thread_role(t.name) for t in threading.enumerate()
             if t.native_id is not None}
    roles[threading.main_thread().native_id or os.getpid()] = "main thread"
    return roles


@dataclass
class Snapshot:
    at: float
    procs: dict[str, tuple[str, int]] = field(default_factory=dict)  # pid → (group, ticks)
    threads: dict[int, int] = field(default_factory=dict)  # own tid → ticks


def snapshot() -> Snapshot:
    """The CPU ticks of every other process and of this process's threads (~2 ms of CPU)."""
    me = str(os.getpid())
    snap = Snapshot(at=time.monotonic())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        ticks = _ticks(f"/proc/{pid}/stat")
        if ticks is not None:
            snap.procs[pid] = (service_of(_cmdline(pid)), ticks)
    for tid in os.listdir(f"/proc/{me}/task"):
        ticks = _ticks(f"/proc/{me}/task/{tid}/stat")
        if ticks is not None:
            snap.threads[int(tid)] = ticks
    return snap


def split(start: Snapshot, end: Snapshot, roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds per group between two snapshots: ``own: <role>`` for this process's
    threads, the services by name, ``other`` for the rest of the machine. ``end`` holds the
    last ticks seen of everything that lived in the window (see ``CpuSplit``)."""
    seconds: dict[str, float] = defaultdict(float)
    for tid, ticks in end.threads.items():
        role = roles.get(tid, NATIVE)
        seconds[f"own: {role}"] += (ticks - start.threads.get(tid, 0)) * TICK_S
    for pid, (group, ticks) in end.procs.items():
        before = start.procs.get(pid)
        # A process born inside the window counts from zero; a reused pid is too rare to matter.
        seconds[group] += (ticks - (before[1] if before else 0)) * TICK_S
    return {k: round(v, 3) for k, v in seconds.items() if v > 0}


class CpuSplit:
    """``with CpuSplit() as s: ...`` then ``s.as_dict(items)``: cores and CPU ms per item.

    A sampler thread re-reads /proc every ``interval_s`` and keeps the last ticks seen of each
    thread and process, so the pools, connections and backends that end before the window
    does (a worker shuts its pools down on exit) keep their CPU; at most one interval of a
    finished thread's time is lost. The sampler's own cost (~2 ms a snapshot) is its role."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.roles: dict[int, str] = {}

    def __enter__(self) -> CpuSplit:
        self.start = snapshot()
        self.last = Snapshot(at=self.start.at, procs=dict(self.start.procs),
                             threads=dict(self.start.threads))
        self._thread = threading.Thread(target=self._run, name="cpusplit", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read /proc now (the sampler does every interval; call it once more where threads
        are about to end, so that their last ticks count)."""
        with self._lock:
            self.roles.update(_own_threads())  # pools start lazily, inside the window
            snap = snapshot()
            self.last.procs.update(snap.procs)
            self.last.threads.update(snap.threads)
            self.last.at = snap.at

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def as_dict(self, items: int) -> dict[str, Any]:
        wall = max(1e-9, self.last.at - self.start.at)
        seconds = split(self.start, self.last, self.roles)
        return {"wall_s": round(wall, 2), "items": items,
                "cores": {k: round(v / wall, 3) for k, v in sorted(seconds.items())},
                "cpu_ms_per_item": {k: round(1000 * v / max(items, 1), 2)
                                    for k, v in sorted(seconds.items())},
                "foreign_cores": round(seconds.get("other", 0.0) / wall, 3)}
