"""Hypothesis strategies and a seed event for fuzzing untrusted input (events, request
bodies): shared by tests/schemas and tests/serve."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from hypothesis import strategies as st

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

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)

# Datetimes from year 1 to 9999, naive or with any offset a datetime can carry, and the edges.
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
zones: st.SearchStrategy[tzinfo | None] = st.none() | offsets | st.just(UTC)
datetimes = st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), zones)
edge_days = st.sampled_from([datetime(1, 1, 1), datetime(1, 1, 1, 23, 59, 59),
                             datetime(9999, 12, 31), datetime(9999, 12, 31, 23, 59, 59, 999999),
                             datetime(1970, 1, 1), datetime(2038, 1, 19, 3, 14, 8)])
edge_datetimes = st.builds(lambda d, tz: d.replace(tzinfo=tz), edge_days, st.none() | offsets)
captured_ats = (datetimes | edge_datetimes).map(lambda d: d.isoformat()) | st.one_of(
    st.integers(-(10 ** 20), 10 ** 20), st.floats(), st.text(max_size=40),
    st.sampled_from(["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00",
                     "10000-01-01T00:00:00Z", "0000-12-31T00:00:00Z", "2026-02-30T00:00:00Z",
                     "2026-01-01T00:00:00+24:00", "2026-01-01T24:00:00Z"]))
oversized = st.sampled_from(["x" * 129, "x" * 70_000, "é" * 200, "\U0001f4e6" * 129])
wrong_types = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
               | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=3)
               | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
field_values = st.text(max_size=30) | oversized | wrong_types


def raw_json(value: Any) -> bytes:
    # allow_nan: json.dumps writes NaN/Infinity, which the decoder must refuse.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
