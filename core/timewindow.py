"""Time windows (pure): what replay's ``--from/--to/--from-offset/--to-offset`` mean, and
the whole-day windows the console's overview charts show (:func:`choose_day_window`).

Times are record timestamps (= captured_at), half-open [from, to), resolved per partition
with ``offsets_for_times``; offsets are per partition (``P:N,...``) or one number for all, the
end exclusive. The end never passes the end offsets taken when the run starts, so a run over
a live topic is bounded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

OffsetSpec = dict[int, int] | int
Bounds = dict[int, tuple[int, int]]  # partition -> [start, stop)


def parse_time(value: str) -> datetime:
    """ISO 8601 → aware UTC datetime (a naive time is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def parse_offsets(spec: str) -> OffsetSpec:
    """``"120"`` (every partition) or ``"0:10,2:7"`` (per partition)."""
    try:
        if ":" not in spec:
            value = int(spec)
            if value < 0:
                raise ValueError
            return value
        out: dict[int, int] = {}
        for part in spec.split(","):
            partition, _, offset = part.strip().partition(":")
            out[int(partition)] = int(offset)
    except ValueError as exc:
        raise ValueError(f"offsets must be N or P:N,P:N,... with N >= 0 (got {spec!r})") from exc
    if any(p < 0 or o < 0 for p, o in out.items()):
        raise ValueError(f"partitions and offsets must be >= 0 (got {spec!r})")
    return out


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class WindowRequest:
    """The window as the user gave it; start and end are each a time or offsets, or open."""

    from_time: datetime | None = None
    to_time: datetime | None = None
    from_offsets: OffsetSpec | None = None
    to_offsets: OffsetSpec | None = None

    @classmethod
    def from_cli(cls, *, from_: str | None = None, to: str | None = None,
                 from_offset: str | None = None, to_offset: str | None = None) -> WindowRequest:
        if from_ is not None and from_offset is not None:
            raise ValueError("give --from or --from-offset, not both")
        if to is not None and to_offset is not None:
            raise ValueError("give --to or --to-offset, not both")
        request = cls(
            from_time=None if from_ in (None, "earliest") else parse_time(from_),
            to_time=None if to in (None, "end") else parse_time(to),
            from_offsets=None if from_offset is None else parse_offsets(from_offset),
            to_offsets=None if to_offset is None else parse_offsets(to_offset))
        if request.from_time and request.to_time and request.to_time <= request.from_time:
            raise ValueError(f"--to {to} is not after --from {from_}")
        return request

    def as_json(self) -> dict[str, Any]:
        def offsets(spec: OffsetSpec | None) -> Any:
            return {str(p): o for p, o in sorted(spec.items())} if isinstance(spec, dict) \
                else spec

        return {
            "from": self.from_time.isoformat() if self.from_time else (
                None if self.from_offsets is not None else "earliest"),
            "to": self.to_time.isoformat() if self.to_time else (
                None if self.to_offsets is not None else "end"),
            "from_offset": offsets(self.from_offsets),
            "to_offset": offsets(self.to_offsets),
        }

    def contains(self, timestamp_ms: int) -> bool:
        """Whether a record timestamp lies in the time window (offset bounds are not checked)."""
        if self.from_time is not None and timestamp_ms < ms(self.from_time):
            return False
        return self.to_time is None or timestamp_ms < ms(self.to_time)


def _pick(spec: OffsetSpec, partition: int, default: int) -> int:
    return spec if isinstance(spec, int) else spec.get(partition, default)


def resolve_bounds(request: WindowRequest, *, beginning: dict[int, int], end: dict[int, int],
                   start_at_time: dict[int, int | None], stop_at_time: dict[int, int | None]
                   ) -> Bounds:
    """Per-partition [start, stop) within [beginning, end) taken at start.

    ``*_at_time`` are ``offsets_for_times`` answers (None: no record at or after that time).
    A partition left out of a per-partition ``--from-offset`` is not replayed.
    """
    bounds: Bounds = {}
    for p in sorted(end):
        low, high = beginning.get(p, 0), end[p]
        if request.from_offsets is not None:
            start = _pick(request.from_offsets, p, high)
        elif request.from_time is not None:
            found = start_at_time.get(p)
            start = high if found is None else found
        else:
            start = low
        if request.to_offsets is not None:
            stop = _pick(request.to_offsets, p, high)
        elif request.to_time is not None:
            found = stop_at_time.get(p)
            stop = high if found is None else found
        else:
            stop = high
        start = min(max(start, low), high)
        bounds[p] = (start, min(max(stop, start), high))
    return bounds


def derive_run_id(model_version: str, topic: str, request: WindowRequest) -> str:
    """Deterministic: the same model, topic and window give the same run id."""
    key = json.dumps({"model": model_version, "topic": topic, "window": request.as_json()},
                     sort_keys=True)
    return f"bt-{model_version}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class DayWindow:
    """Whole UTC days [first, last], both inclusive, and why they were chosen."""

    first: date
    last: date
    reason: str  # "recent" | "newest data" | "chosen" | "no data"

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    @property
    def start(self) -> datetime:
        """The window's first instant (UTC)."""
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC)

    @property
    def stop(self) -> datetime:
        """The instant after the window (exclusive bound, UTC)."""
        return self.start + timedelta(days=(self.last - self.first).days + 1)

    def contains(self, day: date) -> bool:
        return self.first <= day <= self.last


def choose_day_window(newest: date | None, *, days: int, today: date,
                      last: date | None = None) -> DayWindow:
    """The ``days`` whole days a chart shows, from the newest day that has events.

    Only the newest event day matters: the last ``days`` days up to ``today`` when they hold
    events (a live system); else the ``days`` days ending at the newest event day, so data
    captured long ago (a replayed or demo topic) is shown rather than an empty recent window.
    ``last`` pins the end (a link or the user chose it); no events at all: the recent days.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1 (got {days})")
    span = timedelta(days=days - 1)
    if last is not None:
        return DayWindow(last - span, last, "chosen")
    if newest is None:
        return DayWindow(today - span, today, "no data")
    if today - span <= newest <= today:
        return DayWindow(today - span, today, "recent")
    return DayWindow(newest - span, newest, "newest data")
