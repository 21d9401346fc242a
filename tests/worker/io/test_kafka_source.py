"""The Kafka adapter's work-arounds for two kafka-python 3.0.12 stalls, on real Kafka.

Both were found by tests/reliability and both left a worker idle for good with lag:
- a partition paused while the fetcher holds parsed, undelivered records for it is never
  fetched again once resumed (parked records);
- a rebalance started by a metadata change after the leader's first assignment is never
  finished when the poll that started it timed out (forgotten rebalance).
Each is shown once with the plain consumer and once with the work-around.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition

from core.settings import Settings
from worker.io.kafka_source import finish_forgotten_rebalance, release_parked_records

pytestmark = pytest.mark.services

PER_PARTITION = 10


def produce(settings: Settings, topic: str) -> None:
    """PER_PARTITION more records on each of the two partitions."""
    producer = KafkaProducer(**settings.kafka.client_kwargs(), linger_ms=20)
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()


@pytest.fixture
def two_partitions(services: Settings, topic_factory: Callable[..., str]) -> list[TopicPartition]:
    topic = topic_factory(partitions=2, prefix="test-parked")
    produce(services, topic)
    return [TopicPartition(topic, 0), TopicPartition(topic, 1)]


@pytest.fixture
def consumer(services: Settings, two_partitions: list[TopicPartition]) -> Iterator[KafkaConsumer]:
    c = KafkaConsumer(**services.kafka.client_kwargs(), enable_auto_commit=False,
                      auto_offset_reset="earliest")
    c.assign(two_partitions)
    yield c
    c.close(autocommit=False)


def take(consumer: KafkaConsumer, n: int, seconds: float,
         before_poll: Callable[[], Any] = lambda: None) -> list[tuple[int, int]]:
    """Poll until ``n`` records or ``seconds``; (partition, offset) pairs."""
    end, out = time.monotonic() + seconds, list[tuple[int, int]]()
    while time.monotonic() < end and len(out) < n:
        before_poll()
        batches = consumer.poll(timeout_ms=100, max_records=n - len(out))
        out += [(tp.partition, r.offset) for tp, recs in batches.items() for r in recs]
    return out


def park_one_partition(consumer: KafkaConsumer,
                       partitions: list[TopicPartition]) -> TopicPartition:
    """Take one record, pause its partition, drain the other: the paused partition's nine
    parsed records are now parked, and the fetcher's "next records" slot is not empty."""
    first = take(consumer, 1, 10)
    assert len(first) == 1
    paused = partitions[first[0][0]]
    consumer.pause(paused)
    other = take(consumer, PER_PARTITION, 10)
    assert {p for p, _ in other} == {1 - paused.partition} and len(other) == PER_PARTITION
    parked = getattr(getattr(consumer, "_fetcher", None), "_paused_partition_records", None)
    # Fail, never skip: an upgrade that moves these internals turns the work-around into a
    # silent no-op, and the stall it prevents would come back unnoticed.
    if parked is None:
        pytest.fail("kafka-python's fetcher no longer has _paused_partition_records: "
                    "re-check release_parked_records against the new version")
    assert paused in parked
    return paused


def test_kafka_python_alone_never_returns_the_resumed_partition(
        consumer: KafkaConsumer, two_partitions: list[TopicPartition]) -> None:
    """Documents the upstream bug the work-around exists for. If this starts failing after a
    kafka-python upgrade, the bug is fixed there and release_parked_records can go."""
    paused = park_one_partition(consumer, two_partitions)
    consumer.resume(paused)
    assert take(consumer, PER_PARTITION - 1, 3) == []
    assert consumer.position(paused) == 1


def test_released_partition_is_fetched_again_from_its_position(
        consumer: KafkaConsumer, two_partitions: list[TopicPartition]) -> None:
    paused = park_one_partition(consumer, two_partitions)
    assert release_parked_records(consumer) == []  # still paused: its records stay parked
    consumer.resume(paused)
    got = take(consumer, PER_PARTITION - 1, 10, lambda: release_parked_records(consumer))
    assert got == [(paused.partition, offset) for offset in range(1, PER_PARTITION)]
    assert consumer.position(paused) == PER_PARTITION


def test_records_parked_before_a_partition_left_the_assignment_are_released(
        consumer: KafkaConsumer, two_partitions: list[TopicPartition]) -> None:
    """A rebalance can take a paused partition away and hand it back later, unpaused."""
    paused = park_one_partition(consumer, two_partitions)
    other = next(tp for tp in two_partitions if tp != paused)
    consumer.assign([other])
    assert release_parked_records(consumer) == [paused]
    consumer.assign(two_partitions)
    consumer.seek(paused, 1)
    got = take(consumer, PER_PARTITION - 1, 10, lambda: release_parked_records(consumer))
    assert got == [(paused.partition, offset) for offset in range(1, PER_PARTITION)]


class NoOpListener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass


@pytest.fixture
def member(services: Settings, two_partitions: list[TopicPartition]) -> Iterator[KafkaConsumer]:
    """A group member that has joined, been assigned both partitions and read them."""
    c = KafkaConsumer(**services.kafka.client_kwargs(), enable_auto_commit=False,
                      auto_offset_reset="earliest", group_id=f"g-{two_partitions[0].topic}",
                      session_timeout_ms=6000, heartbeat_interval_ms=2000)
    # With a listener (the worker has one) kafka-python stops fetching revoked partitions.
    c.subscribe([two_partitions[0].topic], listener=NoOpListener())
    assert len(take(c, 2 * PER_PARTITION, 30, lambda: finish_forgotten_rebalance(c))) == 20
    yield c
    c.close(autocommit=False)


def start_a_rebalance_and_look_away(consumer: KafkaConsumer) -> None:
    """The leader's view of the metadata changes; one poll too short to finish the rejoin
    starts it, and it completes on the IO thread while nobody polls."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_assignment_snapshot") \
            or not hasattr(coordinator, "rejoining"):
        pytest.fail("kafka-python's coordinator changed (_assignment_snapshot/rejoining): "
                    "re-check finish_forgotten_rebalance against the new version")
    coordinator._assignment_snapshot = {}  # what it holds when metadata arrives late
    consumer.poll(timeout_ms=0)
    assert coordinator.rejoining
    time.sleep(2)  # JoinGroup + SyncGroup finish in the background
    assert not coordinator.need_rejoin()


def test_kafka_python_alone_never_finishes_a_forgotten_rebalance(
        services: Settings, member: KafkaConsumer,
        two_partitions: list[TopicPartition]) -> None:
    """If this starts failing after a kafka-python upgrade, the bug is fixed there and
    finish_forgotten_rebalance can go."""
    start_a_rebalance_and_look_away(member)
    produce(services, two_partitions[0].topic)
    assert take(member, 2 * PER_PARTITION, 4) == []  # every partition stays revoked


def test_a_forgotten_rebalance_is_finished_and_consumption_resumes(
        services: Settings, member: KafkaConsumer,
        two_partitions: list[TopicPartition]) -> None:
    start_a_rebalance_and_look_away(member)
    produce(services, two_partitions[0].topic)
    assert finish_forgotten_rebalance(member)
    got = take(member, 2 * PER_PARTITION, 20, lambda: finish_forgotten_rebalance(member))
    # The partitions came back with their positions: the new records, once each.
    assert sorted(got) == [(p, o) for p in (0, 1) for o in range(PER_PARTITION, 20)]
    assert not finish_forgotten_rebalance(member)  # nothing left to finish
