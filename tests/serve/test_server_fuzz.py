"""Whatever a client sends as a JSON body, `binaudit serve` answers a 4xx with an error kind.

``parse_event_request`` (the body parser) is fuzzed directly, then the same generators are
posted to a real server on a real socket: nothing may come back as a 500 (a 500 used to be the
answer to a captured_at that overflows in UTC, and to a nesting bomb in the short form), and
the server keeps serving afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import serve.server as server_module
from schemas.records import ErrorKind, EventError
from serve.app import EventRequest, HttpKind, parse_event_request
from tests.schemas.strategies import VALID, captured_ats, field_values, json_values, raw_json
from tests.serve.harness import ServerFactory, ServerThread

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHORT: dict[str, Any] = {"image_uri": "s3://binaudit-images/bin-images/00001.jpg",
                         "expected_quantity": 2}
KINDS = {k.value for k in ErrorKind} | {k.value for k in HttpKind}

# The two request shapes, their fields replaced by anything.
shapes = st.sampled_from([SHORT, {**VALID, "manifest": None}, VALID])
bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(raw_json),
    st.builds(lambda shape, key, value: raw_json({**shape, key: value}), shapes,
              st.sampled_from([*VALID, "x"]), field_values | captured_ats | json_values),
    st.builds(lambda shape, at: raw_json({**shape, "captured_at": at}), shapes, captured_ats),
    st.builds(lambda depth, shape: raw_json(shape)[:-1] + b', "x": ' + b"[" * depth
              + b"]" * depth + b"}", st.sampled_from([40, 999, 5000, 100_000]), shapes),
)
# Bodies every version must refuse; the first four were 500s.
KNOWN = [
    raw_json({**VALID, "captured_at": "9999-12-31T23:00:00-05:00"}),
    raw_json({**VALID, "captured_at": "0001-01-01T00:00:00+01:00"}),
    b"[" * 100_000,
    b'{"image_uri": ' + b"[" * 100_000,
    raw_json({**SHORT, "expected_quantity": float("nan")}),
    b'{"image_uri": "s3://b-1/k.jpg", "expected_quantity": ' + b"9" * 5000 + b"}",
    b'{"image_uri": "s3://b-1/k.jpg", "expected_quantity": 1e999}',
    b'{"image_uri": "s3://b-1/\\ud800.jpg", "expected_quantity": 1}',
    b'{"bin_id": "\\udc00", "captured_at": "2026-01-01T00:00:00Z"}',
]


def check(raw: bytes) -> EventRequest | None:
    try:
        request = parse_event_request(raw, now=NOW)
    except EventError as exc:
        assert isinstance(exc.kind, ErrorKind) and exc.message
        return None
    assert request.event.captured_at.utcoffset() is not None
    return request


@FUZZ
@given(raw=bodies)
def test_the_body_parser_returns_a_request_or_an_event_error(raw: bytes) -> None:
    check(raw)


@pytest.mark.parametrize("raw", KNOWN, ids=range(len(KNOWN)))
def test_known_traps_are_event_errors(raw: bytes) -> None:
    assert check(raw) is None


def test_nan_and_huge_numbers_are_invalid_json_not_schema_violations() -> None:
    """json.loads took NaN, 1e999 and Infinity in the short form; now the worker's rules."""
    for raw in KNOWN[4:7]:
        with pytest.raises(EventError) as caught:
            parse_event_request(raw, now=NOW)
        assert caught.value.kind is ErrorKind.INVALID_JSON


def post(st_: ServerThread, raw: bytes) -> tuple[int, str]:
    resp = st_.invoke(raw, "application/json")
    assert resp.status_code != 500, (raw[:200], resp.text)
    body = resp.json()
    assert body.get("error") in KINDS | {None}, body
    return resp.status_code, body.get("error") or "ok"


@pytest.mark.services
def test_a_real_server_answers_every_body_without_a_500(
        server_factory: ServerFactory, bucket_factory: Any, sample_dir: Path) -> None:
    bucket = bucket_factory("serve-fuzz")
    st_ = server_factory(s3={"allowed_buckets": (bucket,)},
                         serve={"max_body_bytes": 512 * 1024})
    for raw in KNOWN[:4]:
        status, kind = post(st_, raw)
        assert 400 <= status < 500, (raw[:80], status, kind)
    assert post(st_, KNOWN[0]) == (422, "schema_violation")
    assert post(st_, KNOWN[2]) == (400, "invalid_json")

    seen: dict[int, int] = {}

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(raw=bodies)
    def fuzz(raw: bytes) -> None:
        status, _ = post(st_, raw)
        seen[status] = seen.get(status, 0) + 1

    fuzz()
    assert sum(seen.values()) >= 100 and 500 not in seen, seen
    image = next((sample_dir / "images").glob("*.jpg")).read_bytes()
    assert st_.invoke(image).status_code == 200  # still serving
    assert 'status="500"' not in st_.metrics()


@pytest.mark.services
def test_an_unexpected_parser_exception_is_a_400_naming_it(
        server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug nobody found yet, simulated: the parser raises something that is not an
    EventError. The body caused it: 400 with the kind, never a 500."""
    real = server_module.parse_event_request

    def parse(raw: bytes, **kw: Any) -> EventRequest:
        if b"poison" in raw:
            raise RecursionError("a parser bug")
        return real(raw, **kw)

    monkeypatch.setattr(server_module, "parse_event_request", parse)
    st_ = server_factory()
    resp = st_.invoke(b'{"poison": 1}', "application/json")
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": "internal_error", "message": "RecursionError: a parser bug"}
    assert post(st_, raw_json(SHORT))[1] in KINDS | {"ok"}  # still serving
