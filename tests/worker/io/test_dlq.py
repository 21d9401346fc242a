"""Dead-letter topic messages: cut to fit the producer's limit and say so; a size refusal by the
broker is permanent (never retried), the rest are confirmed before the caller may commit."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from core.producer import EventProducer
from core.settings import Settings
from schemas.records import MAX_DEAD_LETTER_PAYLOAD, DeadLetterRecord, ErrorKind
from tests.conftest import read_topic, unique
from worker.io.dlq import ENVELOPE_HEADROOM, MAX_DLQ_KEY_BYTES, DeadLetterPublisher, dlq_message


def letter(*, key: str | None = "bin-1", payload: bytes | None = b"{}", offset: int = 0,
           message: str = "invalid JSON") -> DeadLetterRecord:
    body = payload[:MAX_DEAD_LETTER_PAYLOAD] if payload is not None else None
    return DeadLetterRecord(topic="t", partition=0, offset=offset, key=key, event_id=None,
                            payload=body, payload_truncated=payload is not None
                            and len(payload) > MAX_DEAD_LETTER_PAYLOAD,
                            error_kind=ErrorKind.INVALID_JSON, message=message)


def test_a_small_letter_is_sent_whole_and_says_nothing_was_cut() -> None:
    msg = dlq_message(letter(), max_bytes=1_048_576)
    doc = json.loads(msg.value)
    assert msg.key == b"bin-1" and not msg.truncated
    assert doc["truncated"] is False and doc["key_truncated"] is False
    assert base64.b64decode(doc["payload"]) == b"{}" and doc["error_kind"] == "invalid_json"


@pytest.mark.parametrize("max_bytes", [1_048_576, 64 * 1024, 8 * 1024, 2 * 1024])
@pytest.mark.parametrize("key_bytes", [0, 3, 2 * 1024 * 1024])
def test_a_large_key_and_payload_are_cut_to_fit(max_bytes: int, key_bytes: int) -> None:
    big = letter(key="k" * key_bytes, payload=b"\xff" * (MAX_DEAD_LETTER_PAYLOAD + 10),
                 message="m" * 2000)
    msg = dlq_message(big, max_bytes=max_bytes)
    doc = json.loads(msg.value)
    assert len(msg.key) + len(msg.value) <= max_bytes - ENVELOPE_HEADROOM
    assert len(msg.key) <= MAX_DLQ_KEY_BYTES and doc["key"] == msg.key.decode()
    assert doc["key_bytes"] == key_bytes
    assert doc["key_truncated"] is (key_bytes > len(msg.key))
    assert doc["payload_truncated"] is True and doc["truncated"] is True
    assert doc["payload_bytes"] == MAX_DEAD_LETTER_PAYLOAD


@pytest.mark.parametrize("max_bytes", [2 * 1024, 8 * 1024])
def test_json_escapes_still_fit(max_bytes: int) -> None:
    msg = dlq_message(letter(key="\x00" * 5000, message="\x01" * 2000), max_bytes=max_bytes)
    assert len(msg.key) + len(msg.value) <= max_bytes - ENVELOPE_HEADROOM
    assert json.loads(msg.value)["truncated"] is True


def test_a_key_is_never_cut_inside_a_character() -> None:
    msg = dlq_message(letter(key="é" * 4000), max_bytes=1_048_576)
    assert msg.key.decode("utf-8") == "é" * (MAX_DLQ_KEY_BYTES // 2)


@pytest.fixture
def small_topic(services: Settings) -> Iterator[str]:
    """A topic whose broker-side limit (max.message.bytes) is below the producer's."""
    admin = KafkaAdminClient(**services.kafka.client_kwargs())
    name = unique("test-dlq-small")
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                  topic_configs={"max.message.bytes": "4096"})])
    yield name
    admin.close()


@pytest.mark.services
def test_a_broker_size_refusal_is_permanent_and_the_rest_is_confirmed(
        services: Settings, small_topic: str) -> None:
    letters = [letter(offset=0), letter(offset=1, payload=b"x" * 30_000), letter(offset=2)]
    done: set[tuple[str, int, int]] = set()
    with EventProducer(services.kafka, idempotent=False) as producer:
        publisher = DeadLetterPublisher(producer, small_topic, max_bytes=1_048_576)
        assert publisher.publish(letters, done=done)
    # The refused one is done too: retrying cannot make it smaller, the offset may advance.
    assert done == {("t", 0, 0), ("t", 0, 1), ("t", 0, 2)} and publisher.oversized == 1
    assert [json.loads(r.value)["offset"] for r in read_topic(services, small_topic, 2)] == [0, 2]


@pytest.mark.services
def test_only_unconfirmed_letters_are_sent_again(
        services: Settings, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=1, prefix="test-dlq")
    done = {("t", 0, 0)}
    with EventProducer(services.kafka, idempotent=False) as producer:
        assert DeadLetterPublisher(producer, topic, max_bytes=1_048_576).publish(
            [letter(offset=0), letter(offset=1)], done=done)
    assert done == {("t", 0, 0), ("t", 0, 1)}
    assert [json.loads(r.value)["offset"] for r in read_topic(services, topic, 1)] == [1]
