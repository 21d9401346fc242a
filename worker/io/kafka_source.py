"""Kafka consumer adapter: a consumer-group member with manual commits.

The commit order (quix-streams' checkpoint): write rows → (produce DLQ, flush) → commit the
next offsets. Commits also happen on partition revoke (through ``on_revoke``) and shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from binaudit.settings import KafkaSettings
from worker.offsets import TopicPartitionKey

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartitionKey]], None]
# Returns the offsets to commit for the revoked partitions (their finished work).
RevokeCallback = Callable[[list[TopicPartitionKey]], dict[TopicPartitionKey, int]]


def _keys(partitions: Any) -> list[TopicPartitionKey]:
    return sorted(TopicPartitionKey(tp.topic, tp.partition) for tp in partitions)


def _payload(offsets: dict[TopicPartitionKey, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(pos, "", -1)
            for tp, pos in offsets.items()}


class _Listener(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread while the main thread is blocked in poll()/close().

    kafka-python 3 forbids blocking consumer calls here, so the commit on revoke is the
    awaited ``commit_async``; the worker's callback only writes what already finished.
    """

    def __init__(self, source: EventSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self._source.on_revoke(_keys(revoked))
        if not offsets:
            return
        try:
            await self._source.consumer.commit_async(_payload(offsets))
        except KafkaError as exc:
            log.warning("commit on revoke failed (%s): the next owner re-processes "
                        "from the last committed offset", exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._source.on_assign(_keys(assigned))


class EventSource:
    def __init__(self, cfg: KafkaSettings, *, on_revoke: RevokeCallback,
                 on_assign: PartitionsCallback) -> None:
        self.cfg = cfg
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self._consumer: KafkaConsumer | None = None

    def __enter__(self) -> EventSource:
        self._consumer = KafkaConsumer(**self.cfg.consumer_kwargs(
            group_id=self.cfg.group_id,
            client_id=self.cfg.client_id,
            max_poll_interval_ms=self.cfg.max_poll_interval_ms,
            session_timeout_ms=self.cfg.session_timeout_ms,
            heartbeat_interval_ms=self.cfg.heartbeat_interval_ms,
        ))
        # Learn the topic's partitions before the first join. Otherwise the group leader can
        # assign from metadata that lacks the topic ("No partition metadata for topic") and
        # kafka-python 3.0.12 then never rejoins: the member idled with no partitions.
        self._consumer.partitions_for_topic(self.cfg.topic)
        self._consumer.subscribe(topics=[self.cfg.topic], listener=_Listener(self))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            # Offsets were committed explicitly; closing must not commit anything else.
            self._consumer.close(autocommit=False)

    @property
    def consumer(self) -> KafkaConsumer:
        assert self._consumer is not None, "EventSource used outside its `with` block"
        return self._consumer

    def poll(self, timeout_ms: int, max_records: int) -> list[Any]:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    def assignment(self) -> list[TopicPartitionKey]:
        return _keys(self.consumer.assignment())

    def pause_all(self) -> None:
        self.consumer.pause(*self.consumer.assignment())

    def resume_all(self) -> None:
        self.consumer.resume(*self.consumer.paused())

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        """Commit next offsets; False (and logged) when the broker/group refused it."""
        if not offsets:
            return True
        try:
            self.consumer.commit(_payload(offsets))
        except KafkaError as exc:
            log.warning("offset commit failed (%s); will retry: %s",
                        type(exc).__name__, {str(k): v for k, v in offsets.items()})
            return False
        return True

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Records between each assigned partition's position and its end offset."""
        assigned = list(self.consumer.assignment())
        if not assigned:
            return {}
        try:
            ends = self.consumer.end_offsets(assigned)
        except KafkaError:
            return {}
        out = {}
        for tp in assigned:
            try:
                position = self.consumer.position(tp)
            except KafkaError:
                continue
            out[TopicPartitionKey(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        return out
