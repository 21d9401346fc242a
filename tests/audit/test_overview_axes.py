"""The overview's pure parts, table-driven: value-axis ticks (nice steps, distinct labels,
units) and the choice of the window of days a chart shows."""

from __future__ import annotations

from datetime import date

import pytest

from audit.console.charts import (
    axis_ticks,
    decimals_for,
    nice_step,
    rate_lines,
    short,
    stacked_bars,
)
from core.timewindow import DayWindow, choose_day_window

DAY = date(2026, 1, 1)


@pytest.mark.parametrize(("high", "integer", "suffix", "labels"), [
    # the empty rate chart read "1%, 1%, 1%, 0%, 0%"
    (0.0, False, " %", ("0.0 %", "0.2 %", "0.4 %", "0.6 %", "0.8 %", "1.0 %")),
    (1.0, False, " %", ("0.0 %", "0.2 %", "0.4 %", "0.6 %", "0.8 %", "1.0 %")),
    (2.3, False, " %", ("0.0 %", "0.5 %", "1.0 %", "1.5 %", "2.0 %", "2.5 %")),
    (3.7, False, " %", ("0 %", "1 %", "2 %", "3 %", "4 %")),
    (12.0, False, " %", ("0 %", "5 %", "10 %", "15 %")),
    (100.0, False, " %", ("0 %", "20 %", "40 %", "60 %", "80 %", "100 %")),
    # and the reviews axis read "1, 1, 1"
    (0.0, True, "", ("0", "1")),
    (1.0, True, "", ("0", "1")),
    (3.0, True, "", ("0", "1", "2", "3")),
    (7.0, True, "", ("0", "2", "4", "6", "8")),
    (140.0, True, "", ("0", "50", "100", "150")),
])
def test_axis_ticks(high: float, integer: bool, suffix: str, labels: tuple[str, ...]) -> None:
    axis = axis_ticks(high, integer=integer, suffix=suffix)
    assert axis.labels == labels
    assert axis.top >= high


@pytest.mark.parametrize("high", [0.013, 0.07, 0.3, 0.99, 1.5, 4.9, 9.99, 33.3, 61.0, 99.9])
def test_rate_axis_with_small_floor_keeps_labels_distinct(high: float) -> None:
    axis = axis_ticks(high, min_top=0.1, suffix=" %")
    assert len(set(axis.labels)) == len(axis.labels) <= 6
    assert axis.top >= high and axis.ticks[0] == 0
    assert all(b > a for a, b in zip(axis.ticks, axis.ticks[1:], strict=False))


@pytest.mark.parametrize(("span", "intervals", "step"), [
    (1.0, 5, 0.2), (2.3, 5, 0.5), (3.7, 5, 1.0), (12.0, 5, 5.0), (0.013, 5, 0.005),
    (100.0, 4, 50.0), (7.0, 5, 2.0)])
def test_nice_step(span: float, intervals: int, step: float) -> None:
    assert nice_step(span, intervals) == pytest.approx(step)


@pytest.mark.parametrize(("step", "decimals"), [(5.0, 0), (1.0, 0), (0.5, 1), (0.2, 1),
                                                (0.05, 2), (0.002, 3), (20.0, 0)])
def test_decimals_for(step: float, decimals: int) -> None:
    assert decimals_for(step) == decimals


@pytest.mark.parametrize(("newest", "today", "last", "window"), [
    # a live system: events today or within the last 14 days -> the recent 14 days
    (date(2026, 12, 4), date(2026, 12, 4), None,
     DayWindow(date(2026, 11, 21), date(2026, 12, 4), "recent")),
    (date(2026, 11, 21), date(2026, 12, 4), None,
     DayWindow(date(2026, 11, 21), date(2026, 12, 4), "recent")),
    # the demo: everything captured on 2026-01-01 -> the 14 days ending there
    (DAY, date(2026, 12, 4), None, DayWindow(date(2025, 12, 19), DAY, "newest data")),
    (date(2026, 11, 20), date(2026, 12, 4), None,
     DayWindow(date(2026, 11, 7), date(2026, 11, 20), "newest data")),
    # events dated after today (a clock ahead): the window ends at them
    (date(2026, 12, 9), date(2026, 12, 4), None,
     DayWindow(date(2026, 11, 26), date(2026, 12, 9), "newest data")),
    # nothing yet -> the recent days, said so
    (None, date(2026, 12, 4), None, DayWindow(date(2026, 11, 21), date(2026, 12, 4), "no data")),
    # a pinned end wins
    (DAY, date(2026, 12, 4), date(2026, 6, 14),
     DayWindow(date(2026, 6, 1), date(2026, 6, 14), "chosen")),
])
def test_choose_day_window(newest: date | None, today: date, last: date | None,
                           window: DayWindow) -> None:
    assert choose_day_window(newest, days=14, today=today, last=last) == window


def test_day_window_bounds() -> None:
    window = choose_day_window(DAY, days=1, today=date(2026, 12, 4))
    assert window.days == [DAY] and window.contains(DAY)
    assert (window.stop - window.start).days == 1 and window.start.tzinfo is not None
    with pytest.raises(ValueError, match="days must be"):
        choose_day_window(DAY, days=0, today=DAY)


def test_charts_draw_points_bars_units_and_distinct_ticks() -> None:
    days = [date(2025, 12, 31), DAY]
    svg = str(rate_lines("mismatch", days, {"st-1": {DAY: 0.023}}, x_title="capture day",
                         y_title="mismatch (% of verdicts)"))
    assert svg.count('class="point"') == 1
    assert "mismatch (% of verdicts)" in svg and "capture day" in svg
    ticks = [t.split(">")[1].split("<")[0] for t in svg.split('class="tick-y"')[1:]]
    assert ticks == ["0.0 %", "0.5 %", "1.0 %", "1.5 %", "2.0 %", "2.5 %"]
    bars = str(stacked_bars("reviews", days, {"confirmed": {DAY: 1}}, x_title="review day",
                            y_title="reviews"))
    assert bars.count('class="bar"') == 1
    ticks = [t.split(">")[1].split("<")[0] for t in bars.split('class="tick-y"')[1:]]
    assert ticks == ["0", "1"]


@pytest.mark.parametrize(("name", "width", "shown"), [
    ("st-1", 20, "st-1"),
    ("efficientnet_lite0-20261202T072418Z-a73665", 20, "efficient…18Z-a73665"),
    ("abcdef", 5, "ab…ef"),
])
def test_short_names_keep_both_ends(name: str, width: int, shown: str) -> None:
    assert short(name, width) == shown and len(shown) <= width
