"""Kafka against the real local broker: keyed produce, group consume, manual commit, resume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from core.settings import Settings

pytestmark = pytest.mark.services


def _produce(settings: Settings, topic: str, start: int, count: int) -> None:
    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    try:
        for i in range(start, start + count):
            # 50 bins: each key recurs, so per-key ordering is observable.
            producer.send(topic, key=f"bin-{i % 50:03d}".encode(), value=f"event-{i:05d}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def _values(ids: range) -> list[bytes]:
    return [f"event-{i:05d}".encode() for i in ids]


def _consumer(settings: Settings, topic: str, group: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False,
        # earliest: were the commit lost, the second consumer would re-read everything.
        auto_offset_reset="earliest",
    )
    consumer.subscribe([topic])
    return consumer


def _drain(consumer: KafkaConsumer, want: int, *, settle_s: float = 3.0,
           timeout_s: float = 60.0) -> list:
    """Poll until ``want`` records arrived, then a little longer to catch any extra."""
    records: list = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=200).values():
            records.extend(batch)
        if len(records) >= want:
            settle_until = settle_until or time.monotonic() + settle_s
            if time.monotonic() >= settle_until:
                break
    return records


def _commit_next(consumer: KafkaConsumer, records: list) -> None:
    last: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        last[tp] = max(last.get(tp, -1), record.offset)
    # The committed offset is the *next* one to read.
    consumer.commit({tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()})


def test_group_commit_and_resume(services: Settings,
                                 topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=3)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    _produce(services, topic, 0, 1000)

    first = _consumer(services, topic, group)
    try:
        records = _drain(first, 1000)
        assert sorted(r.value for r in records) == _values(range(1000))
        partitions_of_key: dict[bytes, set[int]] = {}
        for record in records:
            partitions_of_key.setdefault(record.key, set()).add(record.partition)
        assert all(len(p) == 1 for p in partitions_of_key.values()), "a key spans partitions"
        for key in partitions_of_key:
            values = [r.value for r in records if r.key == key]
            assert values == sorted(values), f"order within key {key!r} not kept"
        assert len({r.partition for r in records}) == 3
        _commit_next(first, records)
    finally:
        first.close(autocommit=False)

    _produce(services, topic, 1000, 100)
    second = _consumer(services, topic, group)
    try:
        resumed = _drain(second, 100)
    finally:
        second.close(autocommit=False)
    # Exactly the 100 new events: nothing at or before the committed offsets came back.
    assert sorted(r.value for r in resumed) == _values(range(1000, 1100))
