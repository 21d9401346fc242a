"""Fuzz of ``decode_event``, the one entry point for untrusted bytes.

tests/schemas/test_events.py pins each refusal to its ErrorKind; this file checks the contract
on inputs nobody wrote down: whatever the bytes, ``decode_event`` returns a BinEvent or raises
an EventError with a known kind and a message. Anything else would crash the worker's main loop
(it catches EventError only) instead of becoming a dead letter.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import BinEvent, decode_event, encode_event
from schemas.records import ErrorKind, EventError

VALID: dict[str, Any] = {
    "schema_version": 1, "event_id": "evt-0001", "bin_id": "00001",
    "captured_at": "2026-01-01T00:00:00Z",
    "image_uri": "s3://binaudit-images/bin-images/00001.jpg",
    "metadata_uri": "s3://binaudit-images/metadata/00001.json",
    "manifest": {"BIN_FCSKU_DATA": {"B000A8C5QE": {
        "asin": "B000A8C5QE", "height": {"unit": "IN", "value": 4.2},
        "length": {"unit": "IN", "value": 4.7}, "name": "MSR PocketRocket Stove",
        "quantity": 1, "weight": {"unit": "pounds", "value": 0.45},
        "width": {"unit": "IN", "value": 2.6}}}, "EXPECTED_QUANTITY": 1},
    "expected_quantity": 1, "robot_id": "sim-robot-1", "station_id": "sim-station-1",
}
VALID_BYTES = json.dumps(VALID).encode()
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


def check(raw: bytes, *, max_bytes: int = 256 * 1024) -> BinEvent | None:
    """The contract: a BinEvent that round-trips, or an EventError that explains itself."""
    try:
        event = decode_event(raw, max_bytes=max_bytes)
    except EventError as exc:
        assert isinstance(exc.kind, ErrorKind)
        assert isinstance(exc.message, str) and exc.message
        return None
    assert decode_event(encode_event(event)) == event
    return event


@FUZZ
@given(raw=st.binary(max_size=2048))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(value=json_values)
def test_arbitrary_json(value: Any) -> None:
    check(json.dumps(value).encode())


@FUZZ
@given(data=st.data())
def test_mutated_fields_of_a_valid_event(data: st.DataObject) -> None:
    event = json.loads(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["delete", "replace", "add", "nest"]))
        key = data.draw(st.sampled_from(sorted(event) or ["bin_id"]))
        if action == "delete":
            event.pop(key, None)
        elif action == "replace":
            event[key] = data.draw(json_values)
        elif action == "add":
            event[data.draw(st.text(max_size=12))] = data.draw(json_values)
        elif isinstance(event.get("manifest"), dict):
            manifest = event["manifest"]
            manifest[data.draw(st.sampled_from([*manifest, "x"]))] = data.draw(json_values)
    check(json.dumps(event).encode())


@FUZZ
@given(data=st.data())
def test_mutated_bytes_of_a_valid_event(data: st.DataObject) -> None:
    raw = bytearray(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[at:at + data.draw(st.integers(1, 16))]
        elif action == "truncate":
            del raw[at:]
    check(bytes(raw))


@FUZZ
@given(max_bytes=st.integers(-1, len(VALID_BYTES) + 10))
def test_any_size_limit(max_bytes: int) -> None:
    event = check(VALID_BYTES, max_bytes=max_bytes)
    assert (event is not None) == (len(VALID_BYTES) <= max_bytes)


def test_the_seed_event_is_valid() -> None:
    assert check(VALID_BYTES) is not None


@FUZZ
@given(depth=st.sampled_from([10, 500, 900, 990, 1000, 1100, 5000, 200_000]),
       opener=st.sampled_from(["[", '{"a":']), field=st.sampled_from([None, "bin_id", "manifest"]))
def test_deeply_nested_json(depth: int, opener: str, field: str | None) -> None:
    """A nesting bomb (a few hundred KB) is refused as invalid_json, never a RecursionError."""
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + ("" if opener == "[" else "1") + closer * depth
    raw = (nested if field is None else json.dumps(VALID)[:-1] + f', "{field}": {nested}}}')
    check(raw.encode(), max_bytes=1 << 20)
