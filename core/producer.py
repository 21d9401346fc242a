"""Kafka producer adapter for bin events (used by ``binaudit publish``; the worker's DLQ topic
may reuse it). The connection opens in ``__enter__``, never in ``__init__``."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata

from core.settings import KafkaSettings
from schemas.events import BinEvent, encode_event

log = logging.getLogger(__name__)

_HEADERS = [("content-type", b"application/json"), ("schema-version", b"1")]
# `binaudit dlq redrive` stamps the letter's new re-drive count on the record it republishes;
# if that record fails again, its new dead letter inherits the count (``--max-redrives``).
REDRIVE_COUNT_HEADER = "binaudit-redrive-count"


class EventProducer:
    """``with EventProducer(settings.kafka) as p: p.send_event(topic, ev)``; flushes on exit."""

    def __init__(self, kafka: KafkaSettings, *, linger_ms: int = 20,
                 flush_timeout_s: float = 60.0, idempotent: bool = True) -> None:
        self._kafka = kafka
        self._linger_ms = linger_ms
        # kafka-python's idempotent producer turns every later send into the same error once
        # the broker refused one record for its size; the DLQ (at-least-once anyway) opts out.
        self._idempotent = idempotent
        self._flush_timeout_s = flush_timeout_s
        self._producer: KafkaProducer | None = None

    def __enter__(self) -> EventProducer:
        self._producer = KafkaProducer(
            **self._kafka.client_kwargs(),
            client_id=f"{self._kafka.client_id}-publisher",
            acks="all",
            linger_ms=self._linger_ms,
            max_request_size=self._kafka.max_message_bytes,
            enable_idempotence=self._idempotent,
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            # On error too: what was already handed to the producer should still be delivered.
            producer.flush(timeout=self._flush_timeout_s)
        finally:
            producer.close(timeout=self._flush_timeout_s)

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            raise RuntimeError("EventProducer used outside its `with` block")
        return self._producer

    def send(self, topic: str, *, key: str, value: bytes,
             timestamp_ms: int | None = None) -> FutureRecordMetadata:
        """Send raw bytes (also used for deliberately malformed records)."""
        return self.producer.send(topic, value=value, key=key.encode("utf-8"),
                                  timestamp_ms=timestamp_ms, headers=list(_HEADERS))

    def send_raw(self, topic: str, *, key: bytes, value: bytes,
                 headers: list[tuple[str, bytes]] | None = None) -> FutureRecordMetadata:
        """Send a bytes key and value, with extra ``headers`` after the standard ones (the
        DLQ topic; a re-drive's count). Raises ``MessageSizeTooLargeError`` when the record is
        over ``max_request_size``."""
        return self.producer.send(topic, value=value, key=key,
                                  headers=[*_HEADERS, *(headers or [])])

    def send_event(self, topic: str, event: BinEvent) -> FutureRecordMetadata:
        """Send ``event`` keyed by bin id, with the record timestamp = captured_at (ms)."""
        return self.send(topic, key=event.bin_id, value=encode_event(event),
                         timestamp_ms=event.timestamp_ms)

    def flush(self) -> None:
        self.producer.flush(timeout=self._flush_timeout_s)


def ensure_topic(kafka: KafkaSettings, topic: str, *, partitions: int = 4,
                 retention_ms: int = -1, oldest_timestamp_ms: int | None = None) -> bool:
    """Create ``topic`` if missing; return True if it was created.

    Record timestamps are capture times, which may be far in the past (the simulator's default
    start is 2026-01-01): with the broker's time-based retention such records would be deleted
    at the next retention check, so topics we create keep records until deleted explicitly.
    """
    admin = KafkaAdminClient(**kafka.client_kwargs())
    try:
        if topic in set(admin.list_topics()):
            if oldest_timestamp_ms is not None:
                _warn_on_retention(admin, topic, oldest_timestamp_ms)
            return False
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                          topic_configs={"retention.ms": str(retention_ms)})])
        except TopicAlreadyExistsError:
            return False
        log.info("created topic %s (%d partitions, retention.ms=%d)", topic, partitions,
                 retention_ms)
        return True
    finally:
        admin.close()


def _warn_on_retention(admin: Any, topic: str, oldest_timestamp_ms: int) -> None:
    try:
        result = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        value = result["topic"][topic]["retention.ms"]["value"]
    except Exception as exc:  # noqa: BLE001 - advisory only; never block publishing on it
        log.debug("could not read retention.ms of %s: %s", topic, exc)
        return
    age_ms = time.time() * 1000 - oldest_timestamp_ms
    if 0 <= int(value) < age_ms:
        log.warning("topic %s has retention.ms=%s but the records' timestamps (captured_at) "
                    "are older: the broker deletes them at its next retention check "
                    "(set retention.ms=-1 on the topic)", topic, value)
