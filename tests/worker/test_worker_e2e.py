"""The worker against real Kafka, Postgres and moto S3 with the real sample of 350 bins."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from core.settings import Settings
from devstack.services import LocalServices
from robots.publisher import EventPlan, PublishOptions, PublishReport, publish
from worker.app import Worker

pytestmark = pytest.mark.services


def publish_sample(settings: Settings, sample_dir: Path, topic: str, *, count: int | None = None,
                   faults: tuple[str, ...] = (), fault_rate: float = 0.1) -> PublishReport:
    plan = EventPlan(bucket=settings.s3.bucket, count=count)
    return publish(settings, PublishOptions(source=sample_dir, topic=topic, plan=plan,
                                            faults=faults, fault_rate=fault_rate,
                                            create_topic=False, progress=False))


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


@pytest.fixture
def worker_settings(settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
                    model_artifact: Path) -> Settings:
    topic = topic_factory(partitions=3)
    return settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": str(model_artifact), "device": "cpu", "max_batch_size": 16,
                   # The untrained fixture model: the argmax rule, so mismatches exist.
                   "match_min_p": 0.0, "mismatch_min_score": 0.0},
        worker={"exit_when_idle_s": 3.0, "metrics_port": None},
    )


@pytest.fixture
def verdict_rows(worker_settings: Settings, count_rows: Callable[..., int]) -> Callable[[], int]:
    """Rows of this test's topic only: other suites share the database."""
    return lambda: count_rows("audit_results", topic=worker_settings.kafka.topic)


def test_sample_events_give_one_verdict_each(worker_settings: Settings, sample_dir: Path,
                                             clean_db: Engine) -> None:
    report = publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic)
    assert report.valid == 350

    stats = Worker(worker_settings).run()

    found = rows(clean_db, "SELECT event_id, status, expected_quantity, predicted_quantity, "
                           "class_probabilities, p_expected, discrepancy_score "
                           "FROM audit_results WHERE topic = :t", t=worker_settings.kafka.topic)
    assert len(found) == 350 and stats.events == 350
    assert {r.event_id for r in found} == set(report.event_ids)
    for r in found:
        assert sum(r.class_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        if r.expected_quantity not in (1, 2, 3, 4, 5):
            assert r.status == "unsupported"
            assert r.p_expected is None and r.discrepancy_score is None
        else:
            assert r.status == ("match" if r.predicted_quantity == r.expected_quantity
                                else "mismatch")
            assert r.p_expected == r.class_probabilities[str(r.expected_quantity)]
            assert r.discrepancy_score == pytest.approx(1 - r.p_expected)
    mismatched = {r.event_id for r in found if r.status == "mismatch"}
    mirrored = rows(clean_db, "SELECT d.event_id, d.review_state, d.discrepancy_score, "
                              "a.discrepancy_score AS verdict_score FROM discrepancies d "
                              "JOIN audit_results a USING (event_id, model_version) "
                              "WHERE a.topic = :t", t=worker_settings.kafka.topic)
    assert {r.event_id for r in mirrored} == mismatched
    assert {r.review_state for r in mirrored} <= {"open"}
    assert all(r.discrepancy_score == r.verdict_score is not None for r in mirrored)
    unsupported = sum(1 for r in found if r.status == "unsupported")
    assert unsupported == 15 + 111  # zero-item bins and bins of more than 5 items


def test_bad_inputs_become_dead_letters_and_good_events_still_flow(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine) -> None:
    faults = ("malformed_json", "schema_violation", "missing_image", "corrupt_jpeg",
              "oversized_image", "not_an_image")
    report = publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic,
                            count=120, faults=faults, fault_rate=0.25)
    assert report.fault_count > 0

    Worker(worker_settings).run()

    letters = rows(clean_db, 'SELECT "partition", "offset", error_kind FROM dead_letters '
                   'WHERE topic = :t', t=worker_settings.kafka.topic)
    by_position = {(r.partition, r.offset): r.error_kind for r in letters}
    expected_kind = {"malformed_json": "invalid_json", "schema_violation": "schema_violation",
                     "missing_image": "missing_object", "corrupt_jpeg": "truncated_image",
                     "oversized_image": "image_too_many_pixels",
                     "not_an_image": "not_an_image"}
    for name, records in report.faults.items():
        for rec in records:
            assert by_position[(rec.partition, rec.offset)] == expected_kind[name], name
    assert len(letters) == report.fault_count
    good = rows(clean_db, "SELECT count(*) AS n FROM audit_results WHERE topic = :t",
                t=worker_settings.kafka.topic)[0].n
    assert good == report.valid


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], verdict_rows: Callable[[], int],
        wait_for: Callable[..., None]) -> None:
    report = publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic)
    env = {"kafka": {"topic": worker_settings.kafka.topic,
                     "group_id": worker_settings.kafka.group_id},
           "inference": {"model": worker_settings.inference.model, "device": "cpu",
                         "max_batch_size": 4, "artificial_delay_s": 0.1},
           "worker": {}}
    first = worker_process_factory("victim", **env)
    wait_for(lambda: verdict_rows() >= 60, 120, "the first rows")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=30)
    written_at_kill = verdict_rows()
    assert written_at_kill < 350, "the kill came too late to test anything"

    env["worker"] |= {"exit_when_idle_s": 3.0}
    env["inference"] |= {"artificial_delay_s": 0.0}
    second = worker_process_factory("restarted", **env)
    assert second.wait(timeout=240) == 0, second.log()[-3000:]

    found = rows(clean_db, "SELECT event_id, count(*) AS n FROM audit_results WHERE topic = :t "
                         "GROUP BY 1", t=worker_settings.kafka.topic)
    assert len(found) == 350 and all(r.n == 1 for r in found)
    assert {r.event_id for r in found} == set(report.event_ids)


def test_postgres_outage_pauses_then_recovers_without_loss(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], verdict_rows: Callable[[], int],
        wait_for: Callable[..., None]) -> None:
    publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic, count=200)
    supervisor = LocalServices(worker_settings)
    wp = worker_process_factory(
        "pg-outage",
        kafka={"topic": worker_settings.kafka.topic, "group_id": worker_settings.kafka.group_id},
        inference={"model": worker_settings.inference.model, "device": "cpu",
                   "max_batch_size": 4, "artificial_delay_s": 0.05},
        worker={"exit_when_idle_s": 5.0, "retry_backoff_max_s": 2.0})
    try:
        wait_for(lambda: verdict_rows() >= 20, 120, "the first rows")
        supervisor.down(only=("postgres",))
        time.sleep(10)
    finally:
        supervisor.up(only=("postgres",))
    assert wp.wait(timeout=240) == 0, wp.log()[-3000:]
    assert "postgres unavailable" in wp.log()
    assert verdict_rows() == 200
    dupes = rows(clean_db, "SELECT event_id FROM audit_results WHERE topic = :t GROUP BY 1 "
                         "HAVING count(*) > 1", t=worker_settings.kafka.topic)
    assert dupes == []


def test_two_workers_one_killed_the_other_finishes_every_partition(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], verdict_rows: Callable[[], int],
        wait_for: Callable[..., None]) -> None:
    publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic)
    env = {"kafka": {"topic": worker_settings.kafka.topic,
                     "group_id": worker_settings.kafka.group_id},
           "inference": {"model": worker_settings.inference.model, "device": "cpu",
                         "max_batch_size": 4, "artificial_delay_s": 0.1},
           # Short on purpose: idle means no committed lag on any partition of the topic, so
           # the survivor waits for the victim's partitions however long the rebalance takes
           # (it once exited at 134 of 350 rows).
           "worker": {"exit_when_idle_s": 1.0}}
    survivor = worker_process_factory("survivor", **env)
    victim = worker_process_factory("victim", **env)
    wait_for(lambda: verdict_rows() >= 40, 120, "both workers writing")
    os.kill(victim.proc.pid, signal.SIGKILL)
    assert survivor.wait(timeout=300) == 0, survivor.log()[-3000:]
    assert verdict_rows() == 350
    dupes = rows(clean_db, "SELECT event_id FROM audit_results WHERE topic = :t GROUP BY 1 "
                         "HAVING count(*) > 1", t=worker_settings.kafka.topic)
    assert dupes == []


def test_sigterm_drains_and_exits_zero(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], verdict_rows: Callable[[], int],
        wait_for: Callable[..., None]) -> None:
    publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic, count=150)
    wp = worker_process_factory(
        "sigterm",
        kafka={"topic": worker_settings.kafka.topic, "group_id": worker_settings.kafka.group_id},
        inference={"model": worker_settings.inference.model, "device": "cpu",
                   "max_batch_size": 4, "artificial_delay_s": 0.1})
    wait_for(lambda: verdict_rows() >= 20, 120, "the first rows")
    wp.proc.send_signal(signal.SIGTERM)
    assert wp.wait(timeout=60) == 0, wp.log()[-3000:]
    written = verdict_rows()
    # Everything written was committed: a fresh member of the group starts after it.
    rest = Worker(worker_settings).run()
    assert rest.events == 150 - written
    assert verdict_rows() == 150


def test_a_drain_longer_than_max_poll_interval_still_commits(
        worker_settings: Settings, sample_dir: Path, clean_db: Engine,
        worker_process_factory: Callable[..., Any], verdict_rows: Callable[[], int],
        wait_for: Callable[..., None]) -> None:
    """SIGTERM with ~16 s of batches in flight and max.poll.interval.ms = 6 s: the drain keeps
    polling (all partitions paused), so the member stays in the group and its final commits
    land; a fresh member of the group then finds nothing left to do."""
    publish_sample(worker_settings, sample_dir, worker_settings.kafka.topic, count=40)
    wp = worker_process_factory(
        "slow-drain",
        kafka={"topic": worker_settings.kafka.topic, "group_id": worker_settings.kafka.group_id,
               "max_poll_interval_ms": 6000, "session_timeout_ms": 6000,
               "heartbeat_interval_ms": 2000},
        inference={"model": worker_settings.inference.model, "device": "cpu",
                   "max_batch_size": 16, "max_wait_ms": 500, "artificial_delay_s": 8.0},
        worker={"shutdown_deadline_s": 90})
    # The first poll took all 40; 24 are still queued behind the first 8 s batch.
    wait_for(lambda: verdict_rows() >= 16, 120, "the first batch")
    wp.proc.send_signal(signal.SIGTERM)
    assert wp.wait(timeout=120) == 0, wp.log()[-3000:]
    assert verdict_rows() == 40, wp.log()[-3000:]
    assert "commit failed" not in wp.log(), wp.log()[-3000:]
    assert Worker(worker_settings).run().events == 0
