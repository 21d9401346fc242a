"""The worker's delivery guarantees on real Kafka, Postgres and moto S3: a dead letter too large
for the DLQ topic never stalls its partition, and an event id reused by a different event is a
dead letter instead of a silent no-op."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import Engine, text

from core.producer import REDRIVE_COUNT_HEADER, EventProducer
from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, PublishReport, publish
from schemas.events import BinEvent, encode_event
from tests.conftest import read_topic
from worker.app import Worker

pytestmark = pytest.mark.services

BIG_KEY = 2 * 1024 * 1024  # over the producer's 1 MiB limit, under the local broker's 10 MB


@pytest.fixture
def one_partition(settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
                  model_artifact: Path) -> Settings:
    topic = topic_factory(partitions=1)
    return settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": str(model_artifact), "device": "cpu"},
        worker={"exit_when_idle_s": 2.0, "metrics_port": None})


def publish_sample(settings: Settings, sample_dir: Path, count: int) -> PublishReport:
    return publish(settings, PublishOptions(
        source=sample_dir, topic=settings.kafka.topic,
        plan=EventPlan(bucket=settings.s3.bucket, count=count), create_topic=False,
        progress=False))


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def committed(settings: Settings) -> int | None:
    consumer = KafkaConsumer(**settings.kafka.client_kwargs(),
                             group_id=settings.kafka.group_id, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(settings.kafka.topic, 0))
    finally:
        consumer.close(autocommit=False)


def test_a_huge_key_with_a_dlq_topic_is_truncated_and_the_partition_moves_on(
        one_partition: Settings, sample_dir: Path, clean_db: Engine,
        topic_factory: Callable[..., str],
        worker_process_factory: Callable[..., Any]) -> None:
    settings, dlq = one_partition, topic_factory(partitions=1, prefix="test-dlq")
    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all",
                             max_request_size=4 * 1024 * 1024)
    try:
        producer.send(settings.kafka.topic, key=b"k" * BIG_KEY, value=b"{not json" * 20_000)
        # A re-driven record (its header says so) that fails again: the count carries on.
        producer.send(settings.kafka.topic, key=b"bin-2", value=b"[]",
                      headers=[(REDRIVE_COUNT_HEADER, b"2")])
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    report = publish_sample(settings, sample_dir, 3)  # good events behind the bad ones

    wp = worker_process_factory(
        "huge-key", kafka={"topic": settings.kafka.topic, "group_id": settings.kafka.group_id,
                           "dlq_topic": dlq},
        inference={"model": settings.inference.model, "device": "cpu"},
        worker={"exit_when_idle_s": 2.0})
    assert wp.wait(timeout=180) == 0, wp.log()[-3000:]

    assert committed(settings) == 2 + report.valid
    letters = rows(clean_db, 'SELECT "offset", error_kind, length(key) AS key_len, '
                             "payload_truncated, redrive_count FROM dead_letters "
                             'WHERE topic=:t ORDER BY "offset"', t=settings.kafka.topic)
    assert [(r.offset, r.error_kind) for r in letters] == [(0, "invalid_json"),
                                                           (1, "invalid_json")]
    assert letters[0].key_len == BIG_KEY and letters[0].payload_truncated
    assert [r.redrive_count for r in letters] == [0, 2]
    assert rows(clean_db, "SELECT count(*) FROM audit_results WHERE topic=:t",
                t=settings.kafka.topic) == [(report.valid,)]

    messages = read_topic(settings, dlq, 2)
    big = json.loads(messages[0].value)
    assert len(messages[0].key) + len(messages[0].value) < settings.kafka.max_message_bytes
    assert big["truncated"] is True and big["key_truncated"] is True
    assert big["key_bytes"] == BIG_KEY and big["payload_truncated"] is True
    assert (big["offset"], big["error_kind"]) == (0, "invalid_json")
    assert json.loads(messages[1].value)["truncated"] is False


def test_a_reused_event_id_with_another_payload_is_a_dead_letter(
        one_partition: Settings, sample_dir: Path, clean_db: Engine) -> None:
    settings = one_partition
    topic = settings.kafka.topic
    report = publish_sample(settings, sample_dir, 2)
    [original] = read_topic(settings, topic, 1)
    event = BinEvent.model_validate_json(original.value)
    reused = event.model_copy(update={"bin_id": "another-bin"})
    with EventProducer(settings.kafka) as producer:
        producer.send(topic, key=event.bin_id, value=original.value)  # a redelivery: no-op
        producer.send(topic, key="another-bin", value=encode_event(reused))

    first = Worker(settings).run()
    assert first.dead_letters == {"duplicate_event_id": 1}, first
    letters = rows(clean_db, 'SELECT "offset", error_kind, event_id, message FROM dead_letters '
                             "WHERE topic=:t", t=topic)
    assert [(r.offset, r.error_kind, r.event_id) for r in letters] == [
        (3, "duplicate_event_id", event.event_id)]
    # @0 and its redelivery @2 are the same event: with two infer streams either batch may be
    # written first, and the verdict names whichever was.
    assert any(f"from {topic}[0]@{o}," in letters[0].message for o in (0, 2)), letters[0].message

    # Against the row written by the first run: a later batch.
    with EventProducer(settings.kafka) as producer:
        producer.send(topic, key=event.bin_id, value=encode_event(
            event.model_copy(update={"expected_quantity": event.expected_quantity + 1,
                                     "manifest": None})))
    second = Worker(settings).run()
    assert second.events == 1 and second.dead_letters == {"duplicate_event_id": 1}
    verdicts = rows(clean_db, 'SELECT event_id, "offset" FROM audit_results WHERE topic=:t '
                              'ORDER BY "offset"', t=topic)
    assert dict(verdicts) in [{report.event_ids[0]: o, report.event_ids[1]: 1} for o in (0, 2)]
    assert committed(settings) == 5
