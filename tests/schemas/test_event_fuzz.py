"""Fuzz of ``decode_event``, the one entry point for untrusted bytes.

tests/schemas/test_events.py pins each refusal to its ErrorKind; this file checks the contract
on inputs nobody wrote down: whatever the bytes, ``decode_event`` returns a BinEvent or raises
an EventError with a known kind and a message. Anything else would be an internal_error dead
letter at best (the worker's last line of defence), and a crash of a caller that trusts the
contract (a captured_at that overflowed in UTC once stopped the worker on every restart).
Examples are derandomized: every run checks the same inputs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import MAX_JSON_DEPTH, BinEvent, decode_event, encode_event, unexpected_error
from schemas.records import ErrorKind, EventError
from tests.schemas.strategies import (
    VALID,
    VALID_BYTES,
    captured_ats,
    field_values,
    json_values,
    raw_json,
)

# Derandomized: the same examples on every run (a CI failure reproduces locally).
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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


# ---- traps beyond syntax: values that parse but break later ---------------------------------

def event_with(**fields: Any) -> bytes:
    return json.dumps({**VALID, "manifest": None, **fields}).encode()


def refused(raw: bytes, *, max_bytes: int = 1 << 20) -> EventError:
    try:
        decode_event(raw, max_bytes=max_bytes)
    except EventError as exc:
        return exc
    raise AssertionError(f"accepted: {raw[:120]!r}")


@pytest.mark.parametrize("captured_at", [
    "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+01:00",  # year 0 in UTC
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:59:59+01:00",
])
def test_captured_at_out_of_range_in_utc_is_a_schema_violation(captured_at: str) -> None:
    """Used to raise OverflowError (not an EventError): the worker died on this record and,
    restarted, on the same offset again."""
    exc = refused(event_with(captured_at=captured_at))
    assert exc.kind is ErrorKind.SCHEMA_VIOLATION
    assert "captured_at" in exc.message and "range" in exc.message


@pytest.mark.parametrize("captured_at", [
    "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z", "9999-12-31T18:00:00-05:00",
    "0001-01-01T05:00:00+05:00",
])
def test_captured_at_at_the_edges_of_the_range_is_accepted(captured_at: str) -> None:
    event = check(event_with(captured_at=captured_at))
    assert event is not None and event.captured_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("fragment, why", [
    (b'"expected_quantity": 1e999', "out of the float range"),
    (b'"expected_quantity": -1e999', "out of the float range"),
    (b'"expected_quantity": NaN', "NaN"),
    (b'"expected_quantity": Infinity', "Infinity"),
    (b'"expected_quantity": ' + b"9" * 5000, "digits"),
])
def test_numbers_that_python_would_accept_are_invalid_json(fragment: bytes, why: str) -> None:
    raw = VALID_BYTES.replace(b'"expected_quantity": 1', fragment)
    exc = refused(raw)
    assert exc.kind is ErrorKind.INVALID_JSON and why in exc.message


def test_an_infinite_float_inside_the_manifest_is_refused() -> None:
    """1e999 parsed to inf and was accepted as a SKU's height (and dumped back as null)."""
    raw = VALID_BYTES.replace(b'"value": 4.2', b'"value": 1e999')
    assert refused(raw).kind is ErrorKind.INVALID_JSON


@pytest.mark.parametrize("where", ["manifest", "key", "sku_name"])
def test_lone_surrogate_escapes_are_refused(where: str) -> None:
    """A lone "\\ud800" in an extra manifest field was accepted, and the event could then not
    be encoded again (encode_event raised PydanticSerializationError)."""
    raw = {"manifest": VALID_BYTES.replace(b'"EXPECTED_QUANTITY": 1',
                                           b'"EXPECTED_QUANTITY": 1, "note": "\\ud800"'),
           "key": VALID_BYTES.replace(b'"EXPECTED_QUANTITY": 1',
                                      b'"EXPECTED_QUANTITY": 1, "\\udfff": 1'),
           "sku_name": VALID_BYTES.replace(b'"MSR PocketRocket Stove"', b'"MSR \\udc80"')}[where]
    exc = refused(raw)
    assert exc.kind is ErrorKind.INVALID_JSON and "surrogate" in exc.message


def test_surrogate_pairs_are_text_and_accepted() -> None:
    raw = VALID_BYTES.replace(b'"MSR PocketRocket Stove"', b'"MSR \\ud83d\\ude80"')
    event = check(raw)
    assert event is not None and event.manifest is not None
    assert event.manifest.BIN_FCSKU_DATA["B000A8C5QE"].name == "MSR \U0001f680"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100, 900])
def test_parseable_but_deep_nesting_is_refused(depth: int) -> None:
    """Nesting json accepts (below its recursion limit) used to pass validation inside the
    manifest's extra keys; dumping such an event raised (serialisation depth)."""
    nested = "[" * depth + "]" * depth
    raw = VALID_BYTES.replace(b'"EXPECTED_QUANTITY": 1',
                              f'"EXPECTED_QUANTITY": 1, "deep": {nested}'.encode())
    exc = refused(raw)
    assert exc.kind is ErrorKind.INVALID_JSON and "deeper" in exc.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_JSON_DEPTH - 2  # the event object and the manifest are two levels
    nested = "[" * (depth - 1) + "]" * (depth - 1)
    raw = VALID_BYTES.replace(b'"EXPECTED_QUANTITY": 1',
                              f'"EXPECTED_QUANTITY": 1, "deep": {nested}'.encode())
    assert check(raw) is not None


def test_unexpected_exceptions_map_to_kinds() -> None:
    try:
        BinEvent.model_validate({"bin_id": ""})
    except ValidationError as exc:
        assert unexpected_error(exc).kind is ErrorKind.SCHEMA_VIOLATION
    err = unexpected_error(OverflowError("date value out of range"))
    assert err.kind is ErrorKind.INTERNAL_ERROR
    assert err.message == "OverflowError: date value out of range"
    same = EventError(ErrorKind.INVALID_JSON, "x")
    assert unexpected_error(same) is same


# ---- generated: datetimes, offsets, types and sizes ------------------------------------------


@FUZZ
@given(captured_at=captured_ats)
def test_any_captured_at(captured_at: Any) -> None:
    event = check(raw_json({**VALID, "captured_at": captured_at}), max_bytes=1 << 20)
    if event is not None:
        assert event.captured_at.utcoffset() == timedelta(0)
        assert datetime(1, 1, 1, tzinfo=UTC) <= event.captured_at


@FUZZ
@given(data=st.data())
def test_fields_of_wrong_type_size_or_value(data: st.DataObject) -> None:
    event: dict[str, Any] = dict(VALID)
    for key in data.draw(st.lists(st.sampled_from([*VALID, "extra"]), min_size=1, max_size=3)):
        event[key] = data.draw(field_values | st.floats() | captured_ats, label=key)
    check(raw_json(event), max_bytes=1 << 20)


@FUZZ
@given(text=st.text(st.characters(codec="utf-8") | st.characters(categories=["Cs"]),
                    max_size=20),
       key=st.sampled_from(["bin_id", "event_id", "robot_id", "image_uri", "note"]))
def test_any_unicode_in_any_string(text: str, key: str) -> None:
    check(raw_json({**VALID, key: text}), max_bytes=1 << 20)
