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

from core.settings import KafkaSettings
from inference.positions import TopicPartitionKey

log = logging.getLogger(__name__)

LAG_QUERY_TIMEOUT_MS = 2_000
# A commit that times out may still land; either way a later commit covers its offsets.
COMMIT_TIMEOUT_MS = 5_000

PartitionsCallback = Callable[[list[TopicPartitionKey]], None]
# Returns the offsets to commit for the revoked partitions (their finished work).
RevokeCallback = Callable[[list[TopicPartitionKey]], dict[TopicPartitionKey, int]]


def _keys(partitions: Any) -> list[TopicPartitionKey]:
    return sorted(TopicPartitionKey(tp.topic, tp.partition) for tp in partitions)


def _payload(offsets: dict[TopicPartitionKey, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(pos, "", -1)
            for tp, pos in offsets.items()}


def release_parked_records(consumer: KafkaConsumer) -> list[TopicPartition]:
    """Work around a kafka-python 3.0.12 stall: drop records parked for a partition that is
    no longer paused, so the partition is fetched again from its position.

    When a partition is paused while the fetcher holds parsed, undelivered records for it,
    kafka-python parks them (its KAFKA-7548 port, dpkp/kafka-python#2981) and skips fetching
    the partition while they are parked. It gives them back only when its "next records"
    slot is ``None``, which it never is again once any fetch has been parsed: after a resume
    (or after a rebalance takes the partition away and hands it back) the partition is
    neither returned nor fetched, and the worker sits with lag and nothing in flight
    (tests/worker/io/test_kafka_source.py shows it with a plain KafkaConsumer).
    The consumer's position never moved past the parked records, so dropping them loses
    nothing: the next fetch starts at the position. No-op if the internals change.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    subscription = getattr(consumer, "_subscription", None)
    if not parked or subscription is None:
        return []
    released = [tp for tp in list(parked) if not subscription.is_paused(tp)]
    for tp in released:
        parked.pop(tp).drain()
        log.debug("released parked records of %s[%d]: it is fetched again from its position",
                  tp.topic, tp.partition)
    return released


def finish_forgotten_rebalance(consumer: KafkaConsumer) -> bool:
    """Work around a kafka-python 3.0.12 stall: a rebalance that was started but is no
    longer driven to completion. True when it had to step in.

    A leader that rejoins because the topic metadata changed after it assigned partitions
    (typical right after a group's first join) revokes everything and sends JoinGroup; its
    own assignment then makes the metadata snapshots equal, so ``need_rejoin()`` turns False
    while the join is still in flight. If the poll that started it timed out first, no
    later poll awaits the join: the new assignment is never applied and every partition
    stays revoked for good (the worker idled with lag, 1 first join in ~30;
    tests/worker/io/test_kafka_source.py). Asking for a rejoin makes the next poll finish
    the join (or send a fresh one). No-op if the internals change.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not getattr(coordinator, "rejoining", False):
        return False
    if coordinator.need_rejoin():
        return False  # a rebalance in progress that poll() is still driving
    log.info("group %s: a rebalance was left unfinished by the client; rejoining",
             coordinator.group_id)
    coordinator.request_rejoin()
    return True


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

    async def on_partitions_lost(self, lost: Any) -> None:
        # The group already gave these partitions to others (our session expired): rows that
        # finished are still written, but committing for them would be refused.
        self._source.on_revoke(_keys(lost))
        log.warning("partitions lost (group membership expired): %s; their next owner "
                    "re-processes from the last committed offset",
                    ", ".join(map(str, _keys(lost))))

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
        # Learn the topic's partitions before the first join, so the leader rarely assigns
        # from metadata that lacks the topic ("No partition metadata for topic"); the rejoin
        # that follows when it does is the one finish_forgotten_rebalance may have to finish.
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
        finish_forgotten_rebalance(self.consumer)
        release_parked_records(self.consumer)
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    def coordinator_known(self) -> bool:
        """Whether the consumer knows its group coordinator (readiness). Reads the client's
        state only, no request; True if kafka-python's internals change."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return coordinator is None or getattr(coordinator, "coordinator_id", 0) is not None

    def assignment(self) -> list[TopicPartitionKey]:
        return _keys(self.consumer.assignment())

    def pause_all(self) -> None:
        self.consumer.pause(*self.consumer.assignment())

    def resume_all(self) -> None:
        self.consumer.resume(*self.consumer.paused())

    def keep_alive(self) -> None:
        """Poll with every partition paused: stays in the group (max.poll.interval.ms) while
        the worker drains, without taking records. Records returned anyway (a rebalance just
        handed over unpaused partitions) are not processed and never committed: their owner
        reads them again from the committed offset."""
        self.pause_all()
        skipped = self.poll(timeout_ms=0, max_records=1)
        if skipped:
            log.debug("draining: left %s[%d]@%d for the next owner", skipped[0].topic,
                      skipped[0].partition, skipped[0].offset)
            self.pause_all()

    def commit(self, offsets: dict[TopicPartitionKey, int]) -> bool:
        """Commit next offsets; False (and logged) when the broker/group refused it."""
        if not offsets:
            return True
        try:
            self.consumer.commit(_payload(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); will retry: %s",
                        type(exc).__name__, {str(k): v for k, v in offsets.items()})
            return False
        return True

    def committed_lag(self, *, whole_topic: bool = False) -> dict[TopicPartitionKey, int] | None:
        """Records between the group's committed offset and the end offset: of each assigned
        partition, or (``whole_topic``) of every partition of the topic, whoever owns it.

        This is the group's real backlog: a record fetched (position lag 0) but not yet
        written is still lag here. None when the broker cannot say.
        """
        try:
            if whole_topic:
                ids = self.consumer.partitions_for_topic(self.cfg.topic)
                if not ids:
                    return None  # metadata not known (yet): cannot say "no lag"
                partitions = [TopicPartition(self.cfg.topic, p) for p in sorted(ids)]
            else:
                partitions = list(self.consumer.assignment())
            if not partitions:
                return {}
            ends = self.consumer.end_offsets(partitions, timeout_ms=LAG_QUERY_TIMEOUT_MS)
            committed = {tp: self.consumer.committed(tp, timeout_ms=LAG_QUERY_TIMEOUT_MS)
                         for tp in partitions}
            # No commit yet: the group starts at the earliest record (auto_offset_reset).
            never = [tp for tp, offset in committed.items() if offset is None]
            starts = (self.consumer.beginning_offsets(never, timeout_ms=LAG_QUERY_TIMEOUT_MS)
                      if never else {})
        except KafkaError:
            return None
        if any(tp not in ends or (tp in never and tp not in starts) for tp in partitions):
            return None
        return {TopicPartitionKey(tp.topic, tp.partition):
                max(0, ends[tp] - (starts[tp] if tp in never else committed[tp]))
                for tp in partitions}

    def lag(self) -> dict[TopicPartitionKey, int] | None:
        """Records between each assigned partition's position and its end offset; ``{}`` with
        no partitions, None when the broker cannot say (it is down, or a position is not
        known yet)."""
        assigned = list(self.consumer.assignment())
        if not assigned:
            return {}
        # Bounded: the main loop asks every 10 s and must not hang in a broker outage.
        try:
            ends = self.consumer.end_offsets(assigned, timeout_ms=LAG_QUERY_TIMEOUT_MS)
            positions = {tp: self.consumer.position(tp, timeout_ms=LAG_QUERY_TIMEOUT_MS)
                         for tp in assigned}
        except KafkaError:
            return None
        if any(tp not in ends or positions[tp] is None for tp in assigned):
            return None
        return {TopicPartitionKey(tp.topic, tp.partition): max(0, ends[tp] - positions[tp])
                for tp in assigned}
