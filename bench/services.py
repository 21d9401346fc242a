"""The benchmark's own corner of the shared services: a database, a bucket, fresh topics.

Benchmarks write to their own database (``binaudit_bench`` by default, created and migrated
here) so that tests truncating ``binaudit`` and benchmarks never see each other's rows; topics
are created per scenario (``bench-…``) and deleted afterwards. Nothing here starts or stops a
service.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.samples import SAMPLE_DIR
from core.settings import InferenceSettings, Settings, WorkerSettings
from migrations.runner import upgrade
from robots.publisher import EventPlan, PublishOptions, publish

log = logging.getLogger(__name__)

BENCH_BUCKET = "binaudit-bench"


def bench_settings(base: Settings, *, db_name: str, bucket: str = BENCH_BUCKET,
                   worker: dict[str, object] | None = None,
                   inference: dict[str, object] | None = None) -> Settings:
    """``base`` pointed at the bench database and bucket, metrics endpoint off; ``worker``
    and ``inference`` override fields of those sections (validated like settings)."""
    url = make_url(base.db.url.get_secret_value()).set(database=db_name)
    return base.model_copy(update={
        "db": base.db.model_copy(update={
            "url": SecretStr(url.render_as_string(hide_password=False))}),
        "s3": base.s3.model_copy(update={"bucket": bucket, "allowed_buckets": (bucket,)}),
        "worker": WorkerSettings.model_validate(
            {**base.worker.model_dump(), "metrics_port": None, **(worker or {})}),
        "inference": InferenceSettings.model_validate(
            {**base.inference.model_dump(), **(inference or {})}),
    })


def prepare_database(settings: Settings) -> None:
    """Create the bench database if missing, migrate it to head, empty its tables."""
    url = make_url(settings.db.url.get_secret_value())
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": url.database}).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{url.database}"'))
                log.info("created database %s", url.database)
    finally:
        admin.dispose()
    upgrade(settings, "head")
    truncate(settings)


def truncate(settings: Settings) -> None:
    engine = create_engine(settings.db.url.get_secret_value())
    try:
        with engine.begin() as conn:
            tables = conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' "
                "AND tablename <> 'alembic_version'")).scalars().all()
            if tables:
                conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


def count_rows(settings: Settings, table: str, model_version: str) -> int:
    engine = create_engine(settings.db.url.get_secret_value())
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                f"SELECT count(*) FROM {table} WHERE model_version = :v"),  # noqa: S608
                {"v": model_version}).scalar_one())
    finally:
        engine.dispose()


@contextmanager
def published_topic(settings: Settings, count: int, *, prefix: str = "bench",
                    source: Path = SAMPLE_DIR) -> Iterator[str]:
    """A fresh topic holding ``count`` events (the sample replicated); deleted afterwards."""
    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    publish(settings, PublishOptions(
        source=source, topic=topic, progress=False,
        plan=EventPlan(bucket=settings.s3.bucket, count=count, loop=True)))
    try:
        yield topic
    finally:
        delete_topics(settings, [topic])


def delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        admin.delete_topics(topics)
    except KafkaError as exc:  # best effort: a leftover bench topic harms nobody
        log.warning("could not delete topics %s: %s", topics, exc)
    finally:
        admin.close()


def kafka_for(settings: Settings, *, topic: str, group: str | None = None) -> Settings:
    """Settings consuming ``topic`` with a fresh consumer group."""
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={
        "topic": topic, "group_id": group or f"bench-{uuid.uuid4().hex[:10]}"})})
