"""The dead-letter topic: each letter as one JSON message that always fits, confirmed by the
broker before the offsets it covers are committed.

A letter's key and payload come from the input record, so they can be as large as the broker
let the input be (a 2 MB key): sent as they are, the DLQ message would be over the producer's
``max_request_size`` and be refused on every retry, stalling the partition. So the message is
cut to fit (``truncated`` says so), and a size refusal (``MessageSizeTooLargeError``, the
broker's RECORD_LIST_TOO_LARGE) is permanent: logged and counted, the letter stays in Postgres
and the offset advances. Any other broker failure holds the commit and is retried.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from core.producer import EventProducer
from schemas.records import DeadLetterRecord

log = logging.getLogger(__name__)

# Room left for what the producer adds around key and value (record batch and record headers,
# our content-type headers): kafka-python counts those against max_request_size.
ENVELOPE_HEADROOM = 1024
# A Kafka key longer than this is not an id anyone partitions by: cut it in the DLQ message.
MAX_DLQ_KEY_BYTES = 1024
# A failure send is awaited this long before it counts as a broker failure (retried).
CONFIRM_TIMEOUT_S = 30.0
SIZE_ERRORS: tuple[type[KafkaError], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)

Position = tuple[str, int, int]


@dataclass(frozen=True)
class DlqMessage:
    key: bytes
    value: bytes
    truncated: bool


def _cut_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``data``, never splitting a UTF-8 character."""
    return data[:max(0, limit)].decode("utf-8", "ignore").encode("utf-8")


def dlq_message(letter: DeadLetterRecord, *, max_bytes: int) -> DlqMessage:
    """The DLQ message of ``letter``, cut so that key + value fit ``max_bytes`` minus headroom.

    The JSON is the letter's fields (payload base64) plus ``key_truncated``, ``key_bytes``
    (the original key's size), ``payload_bytes`` (the stored payload's size) and ``truncated``
    (the message does not hold the whole record: key, payload or error message cut);
    ``payload_truncated`` is also set when the payload was cut here.
    """
    room = max_bytes - ENVELOPE_HEADROOM
    key = (letter.key or "").encode("utf-8")
    cut_key = _cut_utf8(key, min(MAX_DLQ_KEY_BYTES, room // 4))
    payload = letter.payload or b""
    doc: dict[str, Any] = letter.model_dump(mode="json")
    doc |= {"key": cut_key.decode("utf-8") if letter.key is not None else None,
            "key_truncated": len(cut_key) < len(key), "key_bytes": len(key),
            "payload_bytes": len(payload), "payload": None}
    doc["message"] = _cut_utf8(letter.message.encode("utf-8"), max(0, room // 4)).decode()
    bare = json.dumps({**doc, "truncated": True, "payload_truncated": True}).encode()
    # base64 is 4 bytes per 3; the payload gets what the rest of the message leaves.
    payload_room = max(0, (room - len(cut_key) - len(bare) - 8) // 4 * 3)
    kept = payload[:payload_room]
    doc["payload"] = base64.b64encode(kept).decode("ascii") if letter.payload is not None else None
    doc["payload_truncated"] = letter.payload_truncated or len(kept) < len(payload)
    doc["truncated"] = (doc["key_truncated"] or doc["payload_truncated"]
                        or len(doc["message"]) < len(letter.message))
    value = json.dumps(doc).encode()
    if len(cut_key) + len(value) > room:
        # JSON escapes (\u0000 is 6 bytes for 1) in a tiny limit: keep the facts only.
        doc |= {"key": None, "message": "", "payload": None, "truncated": True,
                "payload_truncated": True}
        value = json.dumps(doc).encode()
    return DlqMessage(key=cut_key, value=value, truncated=doc["truncated"])


class DeadLetterPublisher:
    """Sends letters to the DLQ topic and waits for the broker's acknowledgement of each.

    The producer must not be idempotent (``EventProducer(idempotent=False)``): kafka-python's
    idempotent producer fails every later send once one record was refused for its size.
    """

    def __init__(self, producer: EventProducer, topic: str, *, max_bytes: int,
                 on_refused: Callable[[], object] = lambda: None) -> None:
        self.producer = producer
        self.topic = topic
        self.max_bytes = max_bytes
        self.on_refused = on_refused  # e.g. a metric
        self.oversized = 0  # letters the broker refused for their size (kept in Postgres)

    def publish(self, letters: Iterable[DeadLetterRecord], *, done: set[Position]) -> bool:
        """Send the letters whose position is not in ``done`` and confirm them; add each
        confirmed (or permanently refused) one to ``done``. False when the broker failed:
        the caller holds the commit and calls again later (only the rest is re-sent)."""
        todo = [letter for letter in letters if _position(letter) not in done]
        try:
            refused = self._send(todo, done)
            # The broker refuses a whole batch for one record over its limit: the others
            # of the batch go again one by one, so only the oversized one is given up.
            if len(todo) > 1:
                refused = [letter for letter in refused if self._send([letter], done)]
            for letter in refused:
                self._refused(letter)
        except KafkaError as exc:
            log.warning("DLQ topic %s unavailable (%s: %s); offsets held, will retry",
                        self.topic, type(exc).__name__, exc)
            return False
        for letter in todo:
            done.add(_position(letter))  # confirmed, or refused for good
        return True

    def _send(self, letters: list[DeadLetterRecord], done: set[Position]
              ) -> list[DeadLetterRecord]:
        """Send and confirm; the letters refused for their size (raises other errors)."""
        sends, refused = [], []
        for letter in letters:
            message = dlq_message(letter, max_bytes=self.max_bytes)
            if message.truncated:
                log.info("%s[%d]@%d event %s: DLQ message truncated to fit %d bytes",
                         *_position(letter), letter.event_id or "-", self.max_bytes)
            try:
                sends.append((letter, self.producer.send_raw(self.topic, key=message.key,
                                                             value=message.value)))
            except SIZE_ERRORS:
                refused.append(letter)
        self.producer.flush()
        for letter, future in sends:
            try:
                future.get(timeout=CONFIRM_TIMEOUT_S)
            except SIZE_ERRORS:
                refused.append(letter)
                continue
            done.add(_position(letter))
        return refused

    def _refused(self, letter: DeadLetterRecord) -> None:
        # Retrying cannot make it smaller: the letter is in Postgres, the offset may advance.
        self.oversized += 1
        self.on_refused()
        log.error("%s[%d]@%d event %s: DLQ topic %s refused the dead letter for its size; "
                  "kept in Postgres only", *_position(letter), letter.event_id or "-",
                  self.topic)


def _position(letter: DeadLetterRecord) -> Position:
    return letter.topic, letter.partition, letter.offset
