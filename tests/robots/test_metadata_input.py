"""`binaudit publish --source`: metadata files are untrusted input too.

A malformed ``metadata/<id>.json`` used to raise pydantic's ValidationError (or accept NaN,
1e999 and nesting bombs) out of ``load_samples``; now each bad file skips its sample with a
warning naming the file and the error kind, the way a missing image already did.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from robots.publisher import build_events, load_samples, read_metadata, record_timestamp_ms
from schemas.records import ErrorKind, EventError

GOOD = {"BIN_FCSKU_DATA": {"B0001": {"asin": "B0001", "quantity": 2}}, "EXPECTED_QUANTITY": 2}
BAD: dict[str, tuple[bytes, ErrorKind]] = {
    "truncated": (b'{"BIN_FCSKU_DATA": {', ErrorKind.INVALID_JSON),
    "not_utf8": (b'{"EXPECTED_QUANTITY": 1, "x": "\xff"}', ErrorKind.INVALID_JSON),
    "nan": (b'{"EXPECTED_QUANTITY": NaN}', ErrorKind.INVALID_JSON),
    "inf_weight": (json.dumps(GOOD).replace('"quantity": 2', '"quantity": 2, "weight": '
                                            '{"unit": "lb", "value": 1e999}').encode(),
                   ErrorKind.INVALID_JSON),
    "bomb": (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ErrorKind.INVALID_JSON),
    "deep": (b'{"EXPECTED_QUANTITY": 1, "x": ' + b"[" * 100 + b"]" * 100 + b"}",
             ErrorKind.INVALID_JSON),
    "surrogate": (b'{"EXPECTED_QUANTITY": 1, "note": "\\ud800"}', ErrorKind.INVALID_JSON),
    "array": (b"[1, 2]", ErrorKind.INVALID_JSON),
    "negative": (b'{"EXPECTED_QUANTITY": -1}', ErrorKind.SCHEMA_VIOLATION),
    "wrong_type": (b'{"EXPECTED_QUANTITY": "2"}', ErrorKind.SCHEMA_VIOLATION),
    "no_quantity": (b'{"BIN_FCSKU_DATA": {}}', ErrorKind.SCHEMA_VIOLATION),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_metadata_is_an_event_error(name: str) -> None:
    raw, kind = BAD[name]
    with pytest.raises(EventError) as caught:
        read_metadata(raw)
    assert caught.value.kind is kind and caught.value.message


def test_load_samples_skips_bad_metadata_files(sample_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "metadata").mkdir()
    image = next((sample_dir / "images").glob("*.jpg"))
    for name, raw in {"good": json.dumps(GOOD).encode(),
                      **{n: raw for n, (raw, _) in BAD.items()}}.items():
        shutil.copy(image, tmp_path / "images" / f"{name}.jpg")
        (tmp_path / "metadata" / f"{name}.json").write_bytes(raw)

    with caplog.at_level(logging.WARNING, logger="robots.publisher"):
        samples = load_samples(tmp_path)

    assert [s.id for s in samples] == ["good"]
    assert samples[0].metadata.EXPECTED_QUANTITY == 2
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == len(BAD)
    assert any("nan.json" in m and "invalid_json" in m for m in skipped)
    assert len(build_events(samples)) == 1


def test_record_timestamps_before_1970_are_left_to_the_producer(sample_dir: Path) -> None:
    """Kafka record timestamps are >= 0 (-1 means "none"): a capture time before 1970 (the
    contract allows years 1-9999) is not sent as the record timestamp."""
    early, epoch, late = (build_events(sample_dir, count=1, start_time=at)[0] for at in (
        datetime(1, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
    assert record_timestamp_ms(early) is None
    assert record_timestamp_ms(epoch) == 0
    assert record_timestamp_ms(late) == late.timestamp_ms == 253402300799000


def test_a_plan_past_year_9999_is_a_value_error(sample_dir: Path) -> None:
    with pytest.raises(ValueError, match="outside years 1-9999"):
        build_events(sample_dir, count=3, start_time=datetime(9999, 12, 31, 23, 59, 59,
                                                                tzinfo=UTC))
