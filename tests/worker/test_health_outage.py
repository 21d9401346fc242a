"""``/healthz`` and ``/readyz`` of a real worker process while its Postgres is stopped: alive
(paused on a known fault: a restart would not help) but not ready; ready again once it is back.
Idle, the loop's periodic ``SELECT 1`` finds the outage too."""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.settings import Settings
from devstack.services import LocalServices
from robots.publisher import EventPlan, PublishOptions, publish

pytestmark = pytest.mark.services

STALL_S = 3.0


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_stays_200_and_readyz_503_while_postgres_is_down(
        settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
        model_artifact: Path, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], count_rows: Callable[..., int],
        wait_for: Callable[..., None]) -> None:
    topic = topic_factory(partitions=2)
    settings = settings_factory(kafka={"topic": topic, "group_id": f"g-{topic}"})
    publish(settings, PublishOptions(source=sample_dir, topic=topic, create_topic=False,
                                     plan=EventPlan(bucket=settings.s3.bucket, count=60),
                                     progress=False))
    wp = worker_process_factory(
        "health", kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": model_artifact, "device": "cpu", "max_batch_size": 4,
                   "artificial_delay_s": 0.05},
        worker={"health_stall_s": STALL_S, "retry_backoff_max_s": 1.0, "health_ping_s": 1.0})
    wait_for(lambda: re.search(r"health on :(\d+)", wp.log()) is not None, 120, "the port")
    match = re.search(r"health on :(\d+)", wp.log())
    assert match is not None
    port = int(match.group(1))
    wait_for(lambda: count_rows("audit_results", topic=topic) >= 8, 120, "the first rows")
    supervisor = LocalServices(settings)
    try:
        supervisor.down(only=("postgres",))
        wait_for(lambda: "postgres unavailable" in wp.log(), 60, "the worker to notice")
        seen = []
        end = time.monotonic() + 3 * STALL_S  # well past the stall limit
        while time.monotonic() < end:
            seen.append((probe(port, "/healthz")[0], *probe(port, "/readyz")))
            time.sleep(0.5)
    finally:
        supervisor.up(only=("postgres",))
    assert {h for h, _, _ in seen} == {200}, seen
    assert {r for _, r, _ in seen} == {503} and "postgres" in seen[-1][2], seen
    wait_for(lambda: count_rows("audit_results", topic=topic) == 60, 180, "every row")
    wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, "ready again")
    assert probe(port, "/healthz")[0] == 200
    # Idle (nothing to write): the loop's periodic SELECT 1 finds Postgres gone.
    try:
        supervisor.down(only=("postgres",))
        wait_for(lambda: probe(port, "/readyz")[0] == 503, 30, "not ready while idle")
        assert probe(port, "/healthz")[0] == 200
    finally:
        supervisor.up(only=("postgres",))
    wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, "ready again after the ping")
    wp.proc.send_signal(signal.SIGTERM)
    assert wp.wait(timeout=60) == 0, wp.log()[-3000:]
