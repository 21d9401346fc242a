"""Small server-side SVG charts for the console (no JavaScript, no plotting library): a line
chart of daily rates per series, stacked daily bars, and labelled horizontal bars. Text goes
through markupsafe's escape, so series names (station ids, model versions) stay inert.

Every axis names its unit, and value ticks come from :func:`axis_ticks`: a 1/2/5 × 10^k step
over the data's range, labelled with as many decimals as the step needs, so no two labels
read the same (rounding 0.25 % steps to whole percents used to print "1%, 1%, 1%, 0%")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 260, 66, 150, 16, 46
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM
NICE = (1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class Axis:
    """Value ticks from 0 to ``top`` (the axis' end) and their labels."""

    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    decimals: int = 0

    @property
    def top(self) -> float:
        return self.ticks[-1]


def nice_step(span: float, intervals: int) -> float:
    """The smallest 1, 2 or 5 × 10^k that covers ``span`` in at most ``intervals`` steps."""
    raw = span / max(intervals, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in NICE if m * magnitude >= raw * (1 - 1e-9))


def decimals_for(step: float) -> int:
    """Decimals that tell ticks ``step`` apart (0.5 → 1, 0.02 → 2, 5 → 0)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def axis_ticks(high: float, *, max_ticks: int = 6, integer: bool = False,
               min_top: float = 1.0, suffix: str = "") -> Axis:
    """Ticks 0, step, ..., top with top >= ``high`` (and >= ``min_top``), at most
    ``max_ticks`` of them; ``integer``: whole steps only (counts)."""
    if max_ticks < 2:
        raise ValueError("an axis needs at least 2 ticks")
    high = max(high, min_top) if math.isfinite(high) else min_top
    step = nice_step(high, max_ticks - 1)
    if integer:
        step = max(1.0, step)
    digits = 0 if integer else decimals_for(step)
    count = math.ceil(high / step - 1e-9)
    ticks = tuple(round(i * step, digits + 3) for i in range(count + 1))
    return Axis(ticks, tuple(f"{t:.{digits}f}{suffix}" for t in ticks), digits)


def short(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, keeping both ends: model versions differ in
    their tails (a timestamp and hash), so cutting the tail made them all read the same."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[len(name) - (width - 1 - head):]}"


def _x(i: int, n: int) -> float:
    return LEFT + (PLOT_W / 2 if n <= 1 else PLOT_W * i / (n - 1))


def _y(value: float, top: float) -> float:
    return TOP + PLOT_H - PLOT_H * min(value, top) / top


def _frame(title: str, body: list[str], axis: Axis, days: Sequence[date],
           legend: Sequence[tuple[str, str]], *, x_title: str, y_title: str) -> Markup:
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for value, label in zip(axis.ticks, axis.labels, strict=True):
        y = _y(value, axis.top)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e0e0e0"/><text class="tick-y" x="{LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11">{escape(label)}</text>')
    step = max(1, math.ceil(len(days) / 7))
    for i, day in enumerate(days):
        if (len(days) - 1 - i) % step == 0:  # counted from the end: the newest day is named
            parts.append(f'<text class="tick-x" x="{_x(i, len(days)):.1f}" y="{H - 26}" '
                         f'text-anchor="middle" font-size="11">{day:%m-%d}</text>')
    mid_y = TOP + PLOT_H / 2
    parts.append(f'<text class="axis-title y" x="14" y="{mid_y:.1f}" text-anchor="middle" '
                 f'font-size="11" transform="rotate(-90 14 {mid_y:.1f})">{escape(y_title)}'
                 f'</text><text class="axis-title x" x="{LEFT + PLOT_W / 2:.1f}" y="{H - 6}" '
                 f'text-anchor="middle" font-size="11">{escape(x_title)}</text>')
    parts.extend(body)
    for i, (name, colour) in enumerate(legend[:12]):
        y = TOP + 6 + i * 16
        parts.append(f'<rect x="{W - RIGHT + 12}" y="{y}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{W - RIGHT + 26}" y="{y + 9}" '
                     f'font-size="11">{escape(short(name, 20))}<title>{escape(name)}</title>'
                     '</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def rate_lines(title: str, days: Sequence[date], series: Mapping[str, Mapping[date, float]],
               *, x_title: str, y_title: str) -> Markup:
    """One line per series over ``days``; values are fractions, drawn on a percent axis."""
    shown = [v for s in series.values() for d, v in s.items() if d in set(days)]
    axis = axis_ticks(max(shown, default=0.0) * 100, min_top=0.1 if shown else 1.0,
                      suffix=" %")
    body, legend = [], []
    for k, (name, values) in enumerate(sorted(series.items())[:10]):
        colour = PALETTE[k % len(PALETTE)]
        points = [(_x(i, len(days)), _y(values[d] * 100, axis.top))
                  for i, d in enumerate(days) if d in values]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                        f'points="{path}"/>')
        body.extend(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" '
                    f'fill="{colour}"/>' for x, y in points)
        if points and len(series) <= 3:  # the newest value in words: one point reads poorly
            x, y = points[-1]
            newest = values[[d for d in days if d in values][-1]] * 100
            body.append(f'<text class="value" x="{x - 6:.1f}" y="{y - 6:.1f}" '
                        f'text-anchor="end" font-size="11" fill="{colour}">'
                        f'{newest:.{axis.decimals + 1}f} %</text>')
        legend.append((name, colour))
    return _frame(title, body, axis, days, legend, x_title=x_title, y_title=y_title)


def stacked_bars(title: str, days: Sequence[date], stacks: Mapping[str, Mapping[date, int]],
                 *, x_title: str, y_title: str) -> Markup:
    """Daily counts, one colour per stack, on a whole-number axis."""
    totals = [sum(s.get(d, 0) for s in stacks.values()) for d in days]
    axis = axis_ticks(float(max(totals, default=0)), integer=True)
    width = max(2.0, PLOT_W / max(len(days), 1) * 0.7)
    body, legend = [], []
    base = [0.0] * len(days)
    for k, (name, values) in enumerate(stacks.items()):
        colour = PALETTE[k % len(PALETTE)]
        for i, d in enumerate(days):
            n = values.get(d, 0)
            if not n:
                continue
            h = PLOT_H * n / axis.top
            y = TOP + PLOT_H - base[i] - h
            body.append(f'<rect class="bar" x="{_x(i, len(days)) - width / 2:.1f}" '
                        f'y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" fill="{colour}">'
                        f'<title>{escape(name)}: {n}</title></rect>')
            base[i] += h
        legend.append((name, colour))
    return _frame(title, body, axis, days, legend, x_title=x_title, y_title=y_title)


def hbars(title: str, rows: Sequence[tuple[str, float, str]], *, x_title: str) -> Markup:
    """Horizontal bars of fractions (label, value 0..1, annotation) on a percent axis."""
    bar_w, row_h, x0 = 300, 22, 158
    axis_y = TOP + row_h * max(len(rows), 1) + 4
    height = axis_y + 40
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {W} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, (label, value, note) in enumerate(rows):
        y = TOP + i * row_h
        parts.append(f'<text x="150" y="{y + 14}" text-anchor="end" font-size="11">'
                     f'{escape(short(label, 22))}<title>{escape(label)}</title></text>'
                     f'<rect x="{x0}" y="{y + 3}" width="{bar_w}" '
                     f'height="14" fill="#eceff1"/><rect class="bar" x="{x0}" y="{y + 3}" '
                     f'width="{bar_w * max(0.0, min(value, 1.0)):.1f}" height="14" '
                     f'fill="{PALETTE[0]}"/><text x="{x0 + bar_w + 6}" y="{y + 14}" '
                     f'font-size="11">{escape(note)}</text>')
    if not rows:
        parts.append(f'<text x="20" y="{TOP + 14}" font-size="12">no reviews yet</text>')
    axis = axis_ticks(100.0, max_ticks=5, suffix=" %")
    for value, label in zip(axis.ticks, axis.labels, strict=True):
        x = x0 + bar_w * value / axis.top
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y - 4}" y2="{axis_y}" '
                     f'stroke="#999"/><text class="tick-x" x="{x:.1f}" y="{axis_y + 12}" '
                     f'text-anchor="middle" font-size="11">{escape(label)}</text>')
    parts.append(f'<text class="axis-title x" x="{x0 + bar_w / 2}" y="{axis_y + 30}" '
                 f'text-anchor="middle" font-size="11">{escape(x_title)}</text></svg>')
    return Markup("".join(parts))
