"""Dead-letter records as the worker builds them (truncation, NUL-safe keys)."""

from inference.outcomes import dead_letter_record
from schemas.records import MAX_DEAD_LETTER_PAYLOAD, DeadLetterRecord, ErrorKind, EventError


def test_dead_letter_payload_is_truncated_to_64k_and_round_trips() -> None:
    rec = dead_letter_record(topic="t", partition=0, offset=5, key=b"\xff1",
                             payload=b"x" * 70_000, event_id=None,
                             error=EventError(ErrorKind.INVALID_JSON, "bad"))
    assert rec.payload is not None and len(rec.payload) == MAX_DEAD_LETTER_PAYLOAD == 64 * 1024
    assert rec.payload_truncated
    assert DeadLetterRecord.model_validate_json(rec.model_dump_json()) == rec


def test_nul_in_key_and_message_is_escaped_for_postgres() -> None:
    rec = dead_letter_record(topic="t", partition=1, offset=0, key=b"a\x00b", payload=b"{}",
                             event_id="e1", error=EventError(ErrorKind.INVALID_JSON, "x\x00y"))
    assert rec.key == "a\\x00b" and "\x00" not in rec.message
    assert not rec.payload_truncated
