"""Memory of a whole process tree (a parent and every descendant, e.g. DataLoader workers),
sampled from /proc while it runs.

Two sums are kept: RSS (each process's resident pages; pages shared between the parent and
its forked workers are counted once per process, so the sum overstates the tree) and PSS
(proportional set size: each shared page divided among the processes that map it, so the sum
is what the tree really holds in RAM). Linux only (``/proc/<pid>/smaps_rollup``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # The command name may hold spaces or parentheses: fields start after the last ')'.
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (one scan of /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _parent_of(name)
            if parent is not None:
                children[parent].append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_pss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) when it has exited."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        return 0, 0
    return rss, pss


@dataclass
class TreeSample:
    """One look at the tree: seconds since start, processes, summed RSS and PSS (MiB)."""

    t: float
    processes: int
    rss_mib: float
    pss_mib: float
    root_rss_mib: float


def sample_tree(root: int, t: float) -> TreeSample:
    """Sum RSS and PSS over ``root``'s tree now."""
    pids = descendants(root)
    sizes = [rss_pss_kib(pid) for pid in pids]
    alive = sum(1 for rss, _ in sizes if rss)
    return TreeSample(t=round(t, 1), processes=alive,
                      rss_mib=round(sum(r for r, _ in sizes) / 1024, 1),
                      pss_mib=round(sum(p for _, p in sizes) / 1024, 1),
                      root_rss_mib=round(sizes[0][0] / 1024, 1))


@dataclass
class TreeSampler:
    """Samples a process tree every ``interval_s`` in a thread; logs a line every ``report_s``.

    ``peak`` keeps the largest PSS sum (with the RSS sum and process count of that moment);
    ``peak_rss_mib`` the largest RSS sum and ``max_processes`` the most processes seen.
    """

    root: int
    label: str
    interval_s: float = 0.25
    report_s: float = 30.0
    keep_every_s: float = 5.0
    timeline: list[TreeSample] = field(default_factory=list)
    peak: TreeSample | None = None
    peak_rss_mib: float = 0.0
    peak_root_rss_mib: float = 0.0
    max_processes: int = 0
    on_report: Callable[[TreeSample], str] | None = None
    # Processes while the training loop runs (parent + train-loader workers, per rank, + the
    # torchrun agent): the samples with this count before any more processes appear (the
    # val/test loaders' workers) are the training window.
    train_processes: int | None = None
    _window: list[tuple[float, float]] = field(default_factory=list)
    _window_closed: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        last_report = last_kept = -1e9
        while not self._stop.is_set():
            now = time.monotonic() - start
            sample = sample_tree(self.root, now)
            if sample.processes:
                self._record(sample)
            if now - last_kept >= self.keep_every_s:
                self.timeline.append(sample)
                last_kept = now
            if now - last_report >= self.report_s:
                extra = self.on_report(sample) if self.on_report else ""
                log.info("%s %4.0f s: %d processes, tree PSS %.0f MiB (peak %.0f), RSS sum "
                         "%.0f MiB%s", self.label, now, sample.processes, sample.pss_mib,
                         self.peak.pss_mib if self.peak else 0.0, sample.rss_mib, extra)
                last_report = now
            self._stop.wait(self.interval_s)

    def _record(self, sample: TreeSample) -> None:
        if self.peak is None or sample.pss_mib > self.peak.pss_mib:
            self.peak = sample
        self.peak_rss_mib = max(self.peak_rss_mib, sample.rss_mib)
        self.peak_root_rss_mib = max(self.peak_root_rss_mib, sample.root_rss_mib)
        self.max_processes = max(self.max_processes, sample.processes)
        if self.train_processes is None or self._window_closed:
            return
        if sample.processes == self.train_processes:
            self._window.append((sample.t, sample.pss_mib))
        elif sample.processes > self.train_processes and self._window:
            self._window_closed = True

    def training_window(self) -> dict[str, Any] | None:
        """Peak tree PSS in the first and the last third of the training loop: a cache of
        decoded images would grow from one to the other (the loop sees 3x the images)."""
        if len(self._window) < 6:
            return None
        start, end = self._window[0][0], self._window[-1][0]
        third = (end - start) / 3
        first = max(p for t, p in self._window if t <= start + third)
        last = max(p for t, p in self._window if t >= end - third)
        return {"seconds": round(end - start, 1), "samples": len(self._window),
                "peak_pss_mib": max(p for _, p in self._window),
                "peak_pss_first_third_mib": first, "peak_pss_last_third_mib": last,
                "last_over_first": round(last / first, 3) if first else None}

    def as_dict(self) -> dict[str, Any]:
        """Peaks and the kept timeline (one sample every ``keep_every_s``)."""
        peak = self.peak
        return {
            "peak_tree_pss_mib": peak.pss_mib if peak else None,
            "peak_tree_pss_at_s": peak.t if peak else None,
            "peak_tree_rss_sum_mib": self.peak_rss_mib,
            "peak_parent_rss_mib": self.peak_root_rss_mib,
            "max_processes": self.max_processes,
            "training_window": self.training_window(),
            "sample_interval_s": self.interval_s,
            "timeline": [vars(s) for s in self.timeline],
        }
