"""The BinEvent v1 contract: round trips, derived ids, and what decode_event refuses (and why)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.abid import AbidMetadata
from schemas.events import (
    DEFAULT_MAX_EVENT_BYTES,
    BinEvent,
    decode_event,
    encode_event,
    make_event_id,
    parse_s3_uri,
)
from schemas.records import ErrorKind, EventError

GOOD: dict[str, Any] = {
    "schema_version": 1, "bin_id": "00001", "captured_at": "2026-01-01T00:00:00Z",
    "image_uri": "s3://binaudit-images/bin-images/00001.jpg", "expected_quantity": 3,
}

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
              max_size=40)
aware = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                timezone(timedelta(hours=-8))]))
keys = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
                .filter(lambda s: s not in {".", ".."}), min_size=1, max_size=4).map("/".join)


def kind_of(payload: dict[str, Any] | bytes) -> ErrorKind:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(EventError) as info:
        decode_event(raw)
    return info.value.kind


@settings(max_examples=200, deadline=None)
@given(bin_id=ids, captured=aware, key=keys, qty=st.integers(0, 1000),
       robot=st.none() | ids, with_id=st.booleans())
def test_round_trip(bin_id: str, captured: datetime, key: str, qty: int, robot: str | None,
                    with_id: bool) -> None:
    fields: dict[str, Any] = {"bin_id": bin_id, "captured_at": captured, "robot_id": robot,
                              "image_uri": f"s3://bucket-1/{key}", "expected_quantity": qty}
    if with_id:
        fields["event_id"] = "evt-1"
    ev = BinEvent(**fields)
    assert ev.captured_at.tzinfo is UTC and ev.captured_at == captured
    back = decode_event(encode_event(ev))
    assert back == ev
    assert back.event_id == ("evt-1" if with_id else make_event_id(bin_id, captured))


def test_event_id_is_deterministic_and_timezone_independent() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    same = t.astimezone(timezone(timedelta(hours=2)))
    assert make_event_id("00001", t) == make_event_id("00001", same)
    assert make_event_id("00001", t) != make_event_id("1", t)  # padded ids are other images
    assert make_event_id("00001", t) != make_event_id("00001", t + timedelta(microseconds=1))
    assert decode_event(json.dumps(GOOD).encode()).event_id == make_event_id("00001", t)
    assert decode_event(json.dumps({**GOOD, "event_id": None}).encode()).event_id == \
        make_event_id("00001", t)
    with pytest.raises(ValueError):
        make_event_id("x", datetime(2026, 1, 1))


def test_inline_real_manifest_round_trips(sample_dir: Path) -> None:
    raw = (sample_dir / "metadata" / "00001.json").read_bytes()
    meta = AbidMetadata.from_json_bytes(raw)
    ev = BinEvent(**{**GOOD, "expected_quantity": 12, "manifest": meta})
    wire = json.loads(encode_event(ev))
    assert wire["manifest"] == json.loads(raw)  # ABID's own shape, no computed fields
    assert decode_event(encode_event(ev)) == ev


def test_manifest_must_agree_with_expected_quantity() -> None:
    manifest = {"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}
    with pytest.raises(ValidationError, match="EXPECTED_QUANTITY=0.*expected_quantity=3"):
        BinEvent.model_validate({**GOOD, "manifest": manifest})
    assert kind_of({**GOOD, "manifest": manifest}) is ErrorKind.SCHEMA_VIOLATION


@given(qty=st.integers(max_value=-1) | st.integers(min_value=1001) |
       st.sampled_from([1.5, "3", True, None]))
def test_bad_quantities_are_schema_violations(qty: Any) -> None:
    with pytest.raises(EventError) as info:
        decode_event(json.dumps({**GOOD, "expected_quantity": qty}).encode())
    assert info.value.kind is ErrorKind.SCHEMA_VIOLATION
    assert "expected_quantity" in info.value.message and repr(qty)[:20] in info.value.message


@given(naive=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_naive_datetimes_are_rejected(naive: datetime) -> None:
    assert kind_of({**GOOD, "captured_at": naive.isoformat()}) is ErrorKind.SCHEMA_VIOLATION
    with pytest.raises(ValidationError, match="captured_at"):
        BinEvent(**{**GOOD, "captured_at": naive})


BAD_URIS = [
    "", "bin-images/1.jpg", "http://binaudit-images/a.jpg", "s3://", "s3://binaudit-images",
    "s3://binaudit-images/", "s3://Bad_Bucket/a.jpg", "s3://ab/a.jpg", "s3://a..b/x.jpg",
    "s3://192.168.1.1/a.jpg", "s3://binaudit-images//etc/passwd",
    "s3://binaudit-images/../secret.jpg", "s3://binaudit-images/a/../../b.jpg",
    "s3://binaudit-images/a\\..\\b.jpg", "s3://binaudit-images/a\nb.jpg",
    "s3://binaudit-images/a\x00.jpg", "s3://binaudit-images/" + "k" * 1025,
    "s3://-binaudit/a.jpg",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_image_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)
    assert kind_of({**GOOD, "image_uri": uri}) is ErrorKind.INVALID_IMAGE_URI


@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True), key=keys)
def test_parse_s3_uri_accepts_real_layout(bucket: str, key: str) -> None:
    assert parse_s3_uri(f"s3://{bucket}/{key}") == (bucket, key)


@given(ch=st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]),
       pos=st.integers(0, 3))
def test_control_characters_are_rejected(ch: str, pos: int) -> None:
    bin_id = "0000"[:pos] + ch + "0000"[pos:]
    assert kind_of({**GOOD, "bin_id": bin_id}) is ErrorKind.SCHEMA_VIOLATION
    assert kind_of({**GOOD, "robot_id": bin_id}) is ErrorKind.SCHEMA_VIOLATION
    assert kind_of({**GOOD, "image_uri": f"s3://binaudit-images/{bin_id}.jpg"}) is \
        ErrorKind.INVALID_IMAGE_URI


@pytest.mark.parametrize(("raw", "kind"), [
    (b"not json", ErrorKind.INVALID_JSON),
    (b'{"bin_id": "0', ErrorKind.INVALID_JSON),
    (b"\xff\xfe{}", ErrorKind.INVALID_JSON),
    (b"[1, 2]", ErrorKind.INVALID_JSON),
    (b'"a string"', ErrorKind.INVALID_JSON),
    (b'{"expected_quantity": NaN}', ErrorKind.INVALID_JSON),
    (b"", ErrorKind.INVALID_JSON),
    (b"{}", ErrorKind.SCHEMA_VIOLATION),
    (json.dumps({**GOOD, "schema_version": 2}).encode(), ErrorKind.UNSUPPORTED_SCHEMA_VERSION),
    (json.dumps({**GOOD, "schema_version": "1"}).encode(), ErrorKind.UNSUPPORTED_SCHEMA_VERSION),
    (json.dumps({**GOOD, "schema_version": True}).encode(),
     ErrorKind.UNSUPPORTED_SCHEMA_VERSION),
    (json.dumps({**GOOD, "unexpected": 1}).encode(), ErrorKind.SCHEMA_VIOLATION),
    (json.dumps({**GOOD, "bin_id": ""}).encode(), ErrorKind.SCHEMA_VIOLATION),
    (json.dumps({**GOOD, "bin_id": "x" * 129}).encode(), ErrorKind.SCHEMA_VIOLATION),
    (json.dumps({**GOOD, "image_uri": 7}).encode(), ErrorKind.INVALID_IMAGE_URI),
    (json.dumps({**GOOD, "metadata_uri": "s3://b/x"}).encode(), ErrorKind.SCHEMA_VIOLATION),
])
def test_decode_error_kinds(raw: bytes, kind: ErrorKind) -> None:
    assert kind_of(raw) is kind


def test_size_limit_is_checked_before_parsing() -> None:
    huge = b"{" + b" " * DEFAULT_MAX_EVENT_BYTES + b"}"
    assert kind_of(huge) is ErrorKind.MESSAGE_TOO_LARGE
    with pytest.raises(EventError) as info:
        decode_event(json.dumps(GOOD).encode(), max_bytes=10)
    assert info.value.kind is ErrorKind.MESSAGE_TOO_LARGE and str(info.value) == \
        info.value.message


def test_schema_violation_messages_name_field_and_value() -> None:
    with pytest.raises(EventError) as info:
        decode_event(json.dumps({**GOOD, "expected_quantity": -3, "bin_id": ""}).encode())
    assert "expected_quantity" in str(info.value) and "-3" in str(info.value)
    assert "bin_id" in str(info.value)
