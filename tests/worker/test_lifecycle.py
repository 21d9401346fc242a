"""Model lifecycle in running workers, on real Kafka, Postgres and S3: a promotion and a
rollback under a steady stream switch a group of two workers without a restart, losing and
duplicating nothing; a shadow changes nothing in production; a broken version keeps the old
model running."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from core.artifacts import upload
from core.model.card import read_card
from core.registry import previous_production
from core.settings import Settings
from inference.watcher import RETRY_POLLS
from robots.publisher import EventPlan, PublishOptions, PublishReport, publish
from tests.conftest import ArtifactFactory, unique, wait_until
from tests.registry_fixtures import promote, register
from worker.app import Worker

pytestmark = pytest.mark.services

PARTITIONS = 4


class WorkerThread:
    """One group member running ``Worker.run()`` in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.worker = Worker(settings, registry=CollectorRegistry())
        self.error: BaseException | None = None
        self.finished = False
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        self.finished = True

    def production(self) -> str | None:
        models = getattr(self.worker, "models", None)
        return models.current.production.version if models and models.current else None

    def metric(self, name: str, **labels: str) -> float:
        return self.worker.metrics.registry.get_sample_value(name, labels) or 0.0

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


class HealthProbe:
    """Asks each worker's /healthz and /readyz answers (the functions behind them) every
    0.1 s while the ``with`` block runs."""

    def __init__(self, workers: list[WorkerThread]) -> None:
        self.workers = workers
        self.failures: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for i, w in enumerate(self.workers):
                if not w.worker.health.healthy():
                    self.failures.append(f"worker {i} unhealthy")
                if failing := w.worker.health.not_ready():
                    self.failures.append(f"worker {i} not ready: {failing}")
            self.samples += 1


@pytest.fixture
def workers() -> Iterator[list[WorkerThread]]:
    started: list[WorkerThread] = []
    yield started
    for w in started:
        if w.thread.is_alive():
            w.worker.request_stop()
            w.thread.join(timeout=60)


@pytest.fixture
def lifecycle_settings(settings_factory: Callable[..., Settings],
                       topic_factory: Callable[..., str], tmp_path: Path,
                       model_artifact_factory: ArtifactFactory) -> Callable[..., Settings]:
    def make(model: Path, *, partitions: int = PARTITIONS, **inference: Any) -> Settings:
        topic = topic_factory(partitions=partitions)
        return settings_factory(
            kafka={"topic": topic, "group_id": f"g-{topic}"},
            inference={"model": str(model), "device": "cpu", "backend": "eager",
                       "max_batch_size": 4, "artificial_delay_s": 0.0,
                       "follow_registry": True, "registry_poll_s": 1.0,
                       "artifact_cache_dir": tmp_path / "cache", **inference},
            worker={"metrics_port": None, "exit_when_idle_s": None})
    return make


@pytest.fixture
def artifact(model_artifact_factory: ArtifactFactory) -> Callable[..., Path]:
    return lambda prefix, **kw: model_artifact_factory(unique(prefix), **kw)


def publish_events(settings: Settings, sample_dir: Path, count: int, *, rate: float | None = None,
                   start: datetime | None = None) -> PublishReport:
    plan = EventPlan(bucket=settings.s3.bucket, count=count)
    if start is not None:
        plan = replace(plan, start_time=start)
    return publish(settings, PublishOptions(source=sample_dir, topic=settings.kafka.topic,
                                            plan=plan, rate=rate, create_topic=False,
                                            progress=False))


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def verdicts(engine: Engine, topic: str) -> int:
    return rows(engine, "SELECT count(*) FROM audit_results WHERE topic=:t", t=topic)[0][0]


def committed(settings: Settings) -> dict[int, int | None]:
    consumer = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=settings.kafka.group_id,
                             enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(settings.kafka.topic) or set()
        return {p: consumer.committed(TopicPartition(settings.kafka.topic, p)) for p in parts}
    finally:
        consumer.close(autocommit=False)


def test_promotion_and_rollback_switch_a_worker_group_under_a_steady_stream(
        lifecycle_settings: Callable[..., Settings], artifact: Callable[..., Path],
        db_engine: Engine, sample_dir: Path, bucket_factory: Callable[..., str],
        workers: list[WorkerThread]) -> None:
    old_path, new_path = artifact("life-old"), artifact("life-new", seed=1)
    settings = lifecycle_settings(old_path)
    topic = deployment = settings.kafka.topic
    old = read_card(old_path).version
    # The new version lives on S3: each worker downloads, verifies and caches it.
    uri = f"s3://{bucket_factory()}/models/{read_card(new_path).version}/"
    new = register(db_engine, new_path, uri=uri, sha256=upload(new_path, uri, settings.s3))

    for i in range(2):  # separate caches, as separate machines have
        cache = settings.inference.artifact_cache_dir / str(i)
        workers.append(WorkerThread(settings.model_copy(update={
            "inference": settings.inference.model_copy(update={"artifact_cache_dir": cache})})))
    wait_until(lambda: all(w.production() == old for w in workers), 60, "both workers started")
    total, published = 150, []
    publisher = threading.Thread(target=lambda: published.append(
        publish_events(settings, sample_dir, total, rate=5.0)))
    publisher.start()

    wait_until(lambda: verdicts(db_engine, topic) >= 40, 60, "verdicts of the old version")
    with HealthProbe(workers) as probe:
        promote(db_engine, deployment, new)
        wait_until(lambda: all(w.production() == new for w in workers), 30, "both switched")
        wait_until(lambda: rows(db_engine, "SELECT count(*) FROM audit_results WHERE topic=:t "
                                           "AND model_version=:v", t=topic, v=new)[0][0] >= 40,
                   60, "verdicts of the new version")
        with db_engine.begin() as conn:  # a rollback: the previous production, promoted again
            assert previous_production(conn, deployment) == old
        promote(db_engine, deployment, old)
        wait_until(lambda: all(w.production() == old for w in workers), 30, "both rolled back")
    assert probe.samples > 10 and probe.failures == []  # live and ready through both switches
    publisher.join(timeout=90)
    wait_until(lambda: verdicts(db_engine, topic) >= total, 60, "every event judged")
    for w in workers:
        assert w.thread.is_alive() and not w.finished, "a worker stopped on its own"
        w.stop()

    [report] = published
    found = rows(db_engine, 'SELECT event_id, model_version, "partition", "offset" '
                            'FROM audit_results WHERE topic=:t ORDER BY "partition", "offset"',
                 t=topic)
    assert Counter(r.event_id for r in found) == Counter(report.event_ids)  # once each
    for partition, group in groupby(found, key=lambda r: r.partition):
        runs = [version for version, _ in groupby(r.model_version for r in group)]
        assert runs == [old, new, old], (partition, runs)
    assert rows(db_engine, "SELECT count(*) FROM dead_letters WHERE topic=:t", t=topic) == [(0,)]
    for w in workers:
        assert w.metric("binaudit_model_swaps_total", deployment=deployment) == 2
        assert w.metric("binaudit_model_swap_failures_total", deployment=deployment,
                        role="production") == 0
        assert w.worker.stats.events > 0
    assert sum(v or 0 for v in committed(settings).values()) == total


def test_a_shadow_changes_nothing_in_production(
        lifecycle_settings: Callable[..., Settings], artifact: Callable[..., Path],
        db_engine: Engine, sample_dir: Path) -> None:
    prod_path, shadow_path = artifact("sh-prod"), artifact("sh-shadow", seed=1)
    prod, shadow = register(db_engine, prod_path), register(db_engine, shadow_path)
    plain = lifecycle_settings(prod_path, partitions=3)
    shadowed = lifecycle_settings(prod_path, partitions=3, shadow_queue_batches=64)
    promote(db_engine, shadowed.kafka.topic, prod)
    promote(db_engine, shadowed.kafka.topic, shadow, "shadow")
    count = 40
    # The same bins in the same order (same keys, partitions and offsets); other capture
    # times, so the two topics' events have their own ids.
    for settings, start in ((plain, None), (shadowed, datetime(2026, 2, 1, tzinfo=UTC))):
        publish_events(settings, sample_dir, count, start=start)
        run = settings.model_copy(update={"worker": settings.worker.model_copy(
            update={"exit_when_idle_s": 2.0})})
        assert Worker(run).run().events == count

    def production_rows(topic: str) -> list[Any]:
        return rows(db_engine, 'SELECT "partition", "offset", status, predicted_quantity, '
                               "model_version FROM audit_results WHERE topic=:t "
                               'ORDER BY "partition", "offset"', t=topic)

    assert production_rows(plain.kafka.topic) == production_rows(shadowed.kafka.topic)
    assert len(production_rows(plain.kafka.topic)) == count
    assert committed(plain) == committed(shadowed)
    assert sum(v or 0 for v in committed(shadowed).values()) == count

    found = rows(db_engine, "SELECT s.event_id, s.model_version, s.production_version, "
                            's."partition", s."offset", a.event_id AS verdict_event '
                            "FROM shadow_results s LEFT JOIN audit_results a ON "
                            'a.topic = s.topic AND a."partition" = s."partition" AND '
                            'a."offset" = s."offset" WHERE s.deployment=:d',
                 d=shadowed.kafka.topic)
    assert len(found) == count and len({r.event_id for r in found}) == count
    assert {(r.model_version, r.production_version) for r in found} == {(shadow, prod)}
    assert all(r.event_id == r.verdict_event for r in found)
    for table in ("audit_results", "discrepancies"):
        assert rows(db_engine, f"SELECT count(*) FROM {table} WHERE model_version=:v",
                    v=shadow) == [(0,)]
    assert rows(db_engine, "SELECT count(*) FROM shadow_results WHERE topic=:t",
                t=plain.kafka.topic) == [(0,)]


@pytest.mark.parametrize("broken", ["missing", "checksum"])
def test_a_broken_version_keeps_the_running_model(
        broken: str, lifecycle_settings: Callable[..., Settings], artifact: Callable[..., Path],
        db_engine: Engine, sample_dir: Path, workers: list[WorkerThread],
        tmp_path: Path) -> None:
    good_path = artifact("keep")
    settings = lifecycle_settings(good_path, partitions=2)
    topic = deployment = settings.kafka.topic
    good = read_card(good_path).version
    workers.append(WorkerThread(settings))
    w = workers[0]
    wait_until(lambda: w.production() == good, 60, "the worker started")

    bad_path = artifact("bad", seed=2)
    if broken == "missing":
        bad = register(db_engine, bad_path, uri=str(tmp_path / "gone"))
    else:  # the registry's checksum is not the artifact's
        bad = register(db_engine, bad_path, sha256="0" * 64)
    promote(db_engine, deployment, bad)
    promoted_at = time.monotonic()
    wait_until(lambda: w.metric("binaudit_model_swap_failures_total", deployment=deployment,
                                role="production") >= 1, 30, "the failed load counted")

    publish_events(settings, sample_dir, 20)
    wait_until(lambda: verdicts(db_engine, topic) >= 20, 60, "verdicts after the failure")
    assert w.production() == good and w.worker.health.healthy()
    failures = w.metric("binaudit_model_swap_failures_total", deployment=deployment,
                        role="production")
    elapsed = time.monotonic() - promoted_at
    w.stop()
    assert rows(db_engine, "SELECT DISTINCT model_version FROM audit_results WHERE topic=:t",
                t=topic) == [(good,)]
    assert w.metric("binaudit_model_swaps_total", deployment=deployment) == 0
    # Retried every RETRY_POLLS polls (1 s each), never in a hot loop.
    assert failures <= 2 + elapsed / (settings.inference.registry_poll_s * RETRY_POLLS)
