"""A `binaudit worker` child on real Kafka, Postgres and moto S3 with IAM authentication on,
signing as a user whose policy denies one image key: that event becomes one access_denied dead
letter, every other event a verdict, and every partition's committed offset reaches the end
(before, the refused object was retried for ever as an outage and its partition never
committed past it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, text

from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, image_key, load_samples, publish
from tests.inference.moto_iam import READ, MotoIam, deny_key, statement

pytestmark = pytest.mark.services

EVENTS, DENIED_AT = 30, 7


def _committed_and_end(settings: Settings, topic: str, group: str) -> tuple[dict[int, int],
                                                                            dict[int, int]]:
    """The group's committed offset and the end offset of each partition (read without
    joining the group)."""
    consumer = KafkaConsumer(**settings.kafka.consumer_kwargs(group_id=group))
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        committed = {tp.partition: consumer.committed(tp) for tp in parts}
        end = {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()
    return committed, end


def test_one_denied_object_is_a_dead_letter_and_its_partition_commits_to_the_end(
        settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
        bucket_factory: Callable[..., str], model_artifact: Path, sample_dir: Path,
        clean_db: Engine, worker_process_factory: Callable[..., Any]) -> None:
    topic, bucket = topic_factory(partitions=3), bucket_factory("denied")
    group = f"g-{topic}"
    settings = settings_factory(kafka={"topic": topic, "group_id": group},
                                s3={"bucket": bucket, "allowed_buckets": (bucket,)})
    report = publish(settings, PublishOptions(  # uploads before authentication is on
        source=sample_dir, topic=topic, plan=EventPlan(bucket=bucket, count=EVENTS),
        create_topic=False, progress=False))
    assert report.valid == EVENTS
    denied_key = image_key(load_samples(sample_dir)[DENIED_AT].id)
    denied_event = report.event_ids[DENIED_AT]

    assert settings.s3.endpoint_url is not None
    iam = MotoIam(settings.s3.endpoint_url)
    _, key = iam.user([statement("Allow", READ), deny_key(bucket, denied_key)])
    with iam.authentication():
        wp = worker_process_factory(
            "denied", kafka={"topic": topic, "group_id": group},
            s3={"allowed_buckets": json.dumps([bucket]), "object_denied_attempts": 2, **key},
            inference={"model": model_artifact, "device": "cpu", "max_batch_size": 8,
                       "retry_backoff_initial_s": 0.1, "retry_backoff_max_s": 0.5},
            worker={"exit_when_idle_s": 3.0})
        code = wp.wait(timeout=180)
    assert code == 0, wp.log()[-3000:]

    with clean_db.connect() as conn:
        letters = conn.execute(text("SELECT event_id, error_kind, message FROM dead_letters "
                                    "WHERE topic = :t"), {"t": topic}).all()
        verdicts = set(conn.execute(text("SELECT event_id FROM audit_results WHERE topic = :t"),
                                    {"t": topic}).scalars())
    assert [(r.event_id, r.error_kind) for r in letters] == [(denied_event, "access_denied")]
    assert "AccessDenied" in letters[0].message and denied_key in letters[0].message
    assert verdicts == set(report.event_ids) - {denied_event}
    committed, end = _committed_and_end(settings, topic, group)
    assert committed == end, f"committed {committed}, end offsets {end}"
