"""A bounded soak through the whole system: publisher → Kafka → worker (S3, model) → Postgres.

3,000 events by default; ``SOAK_EVENTS=20000 make reliability`` for the long run. Worker RSS
and throughput are sampled every ~2 s and plotted into ``reliability/soak.png``; the run fails
on any lost event or on an RSS growth trend.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.slow]

SOAK_EVENTS = int(os.environ.get("SOAK_EVENTS", "3000"))
SAMPLE_EVERY_S = 2.0
WARM_UP_SHARE = 0.2  # samples before this share of the run are start-up, not trend
# Memory must not trend upward: the last quarter's mean RSS may exceed the first quarter's
# (after warm-up) by at most this much ...
RSS_QUARTER_BOUND_MB = 100.0
# ... and on runs long enough for a slope to mean something, the least-squares slope over the
# second half must stay under this.
RSS_SLOPE_BOUND_MB_PER_MIN = 10.0
SLOPE_MIN_RUN_S = 300.0


class Sampler(threading.Thread):
    def __init__(self, worker: Any, harness: Any, topic: str, report: Any) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.worker, self.h, self.topic, self.report = worker, harness, topic, report
        self.samples: list[Any] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY_S):
            rss = self.worker.rss_mb()
            if rss is None:
                return
            self.samples.append(self.report.RssSample(
                t=time.monotonic() - self._t0, rss_mb=rss, rows=self.h.verdicts(self.topic)))

    def stop(self) -> list[Any]:
        self._halt.set()
        self.join(timeout=30)
        return self.samples


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def test_soak(harness: Any, sample_dir: Path, scenario_log: Any, offset_watch: Any,
              waiter: Any, report_module: Any) -> None:
    h = harness
    topic = h.topic(partitions=4)
    group = f"g-{topic}"
    pub = h.publish(topic, sample_dir, SOAK_EVENTS)
    with offset_watch(topic, group) as watch:
        wp = h.worker("soak", topic=topic, group=group, max_batch_size=16)
        sampler = Sampler(wp, h, topic, report_module)
        sampler.start()
        waiter(lambda: h.verdicts(topic) >= pub.published, 120 + SOAK_EVENTS * 0.2,
               f"{pub.published} rows", workers=(wp,), interval=2.0)
        samples = sampler.stop()
        code = wp.stop()
    audit = h.audit(topic, pub.event_ids)

    # Start-up (model load, group join) is before the first row; the trend starts after it.
    running = [s for s in samples if s.rows > 0]
    steady = running[int(len(running) * WARM_UP_SHARE):]
    quarter = max(1, len(steady) // 4)
    first_q = mean([s.rss_mb for s in steady[:quarter]])
    last_q = mean([s.rss_mb for s in steady[-quarter:]])
    half = steady[len(steady) // 2:]
    slope = report_module.linear_slope([s.t / 60 for s in half], [s.rss_mb for s in half])
    span = (running[-1].t - running[0].t) if len(running) > 1 else 0.0
    rate = (running[-1].rows - running[0].rows) / span if span else 0.0
    report_module.write_soak_plot(
        samples, title=f"soak: {pub.published} events, {rate:.0f} rows/s, "
                       f"RSS {first_q:.0f} → {last_q:.0f} MB")

    problems = []
    if audit["lost"] or audit["duplicated"] or audit["unexpected"] or audit["dead_letters"]:
        problems.append(f"rows: {audit}")
    if code != 0:
        problems.append(f"worker exit code {code}")
    if len(steady) < 8:
        problems.append(f"only {len(steady)} steady-state samples: run too short to judge")
    if last_q > first_q + RSS_QUARTER_BOUND_MB:
        problems.append(f"RSS last quarter {last_q:.0f} MB > first quarter {first_q:.0f} MB + "
                        f"{RSS_QUARTER_BOUND_MB:.0f} MB")
    judged_slope = span >= SLOPE_MIN_RUN_S
    if judged_slope and slope > RSS_SLOPE_BOUND_MB_PER_MIN:
        problems.append(f"RSS slope {slope:.1f} MB/min over the second half")
    problems += [f"offset watch: {v}" for v in watch.violations[:5]]
    scenario_log.add(
        name=f"soak: {pub.published} events through the whole system", sent=pub.published,
        good=pub.valid, rows=audit["rows"], lost=audit["lost"], duplicated=audit["duplicated"],
        dead_letters=audit["dead_letters"], recovery_s=None,
        recovered_by="no fault injected (load only)", passed=not problems,
        notes="Plot: [soak.png](soak.png) (rows/s and worker RSS every ~2 s). "
              "`SOAK_EVENTS=20000 make reliability` runs the long version.",
        extra={"throughput (rows/s, first row → last row)": f"{rate:.1f} over {span:.0f} s",
               "RSS first quarter / last quarter after warm-up (MB)":
                   f"{first_q:.0f} / {last_q:.0f} (bound: +{RSS_QUARTER_BOUND_MB:.0f} MB)",
               "RSS slope over the second half (MB/min)":
                   f"{slope:.1f} (asserted < {RSS_SLOPE_BOUND_MB_PER_MIN:.0f} only on runs "
                   f"≥ {SLOPE_MIN_RUN_S:.0f} s; {'asserted' if judged_slope else 'not asserted'}"
                   " here)",
               "peak RSS (MB)": f"{max(s.rss_mb for s in samples):.0f}" if samples else "-",
               "samples": str(len(samples))})
    assert not problems, problems
