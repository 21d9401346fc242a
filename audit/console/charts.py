"""Small server-side SVG charts for the console (no JavaScript, no plotting library): a line
chart of daily rates per series, stacked daily bars, and labelled horizontal bars. Text goes
through markupsafe's escape, so series names (station ids, model versions) stay inert."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 240, 48, 150, 16, 32


def _frame(title: str, body: list[str], y_max: float, y_fmt: str, days: Sequence[datetime],
           legend: Sequence[tuple[str, str]]) -> Markup:
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i in range(5):
        value = y_max * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e0e0e0"/><text x="{LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11">{escape(y_fmt.format(value))}</text>')
    step = max(1, len(days) // 6)
    for i, day in enumerate(days):
        if i % step == 0:
            x = LEFT + _x(i, len(days), plot_w)
            parts.append(f'<text x="{x:.1f}" y="{H - 10}" text-anchor="middle" '
                         f'font-size="11">{day:%m-%d}</text>')
    parts.extend(body)
    for i, (name, colour) in enumerate(legend[:12]):
        y = TOP + 6 + i * 16
        parts.append(f'<rect x="{W - RIGHT + 12}" y="{y}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{W - RIGHT + 26}" y="{y + 9}" '
                     f'font-size="11">{escape(name[:20])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _x(i: int, n: int, plot_w: float) -> float:
    return plot_w / 2 if n <= 1 else plot_w * i / (n - 1)


def rate_lines(title: str, days: Sequence[datetime],
               series: Mapping[str, Mapping[datetime, float]]) -> Markup:
    """One line per series over ``days``; values are fractions (shown as %)."""
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    top = max([v for s in series.values() for v in s.values()] + [0.01])
    top = min(1.0, top * 1.15)
    body, legend = [], []
    for k, (name, values) in enumerate(sorted(series.items())[:10]):
        colour = PALETTE[k % len(PALETTE)]
        points = [(LEFT + _x(i, len(days), plot_w), TOP + plot_h - plot_h * values[d] / top)
                  for i, d in enumerate(days) if d in values]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                        f'points="{path}"/>')
        body.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'
                    for x, y in points)
        legend.append((name, colour))
    return _frame(title, body, top * 100, "{:.0f}%", days, legend)


def stacked_bars(title: str, days: Sequence[datetime],
                 stacks: Mapping[str, Mapping[datetime, int]]) -> Markup:
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    totals = [sum(s.get(d, 0) for s in stacks.values()) for d in days]
    top = max(totals + [1]) * 1.1
    width = max(2.0, plot_w / max(len(days), 1) * 0.7)
    body, legend = [], []
    base = [0.0] * len(days)
    for k, (name, values) in enumerate(stacks.items()):
        colour = PALETTE[k % len(PALETTE)]
        for i, d in enumerate(days):
            n = values.get(d, 0)
            if not n:
                continue
            h = plot_h * n / top
            x = LEFT + _x(i, len(days), plot_w) - width / 2
            y = TOP + plot_h - base[i] - h
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
                        f'fill="{colour}"><title>{escape(name)}: {n}</title></rect>')
            base[i] += h
        legend.append((name, colour))
    return _frame(title, body, top, "{:.0f}", days, legend)


def hbars(title: str, rows: Sequence[tuple[str, float, str]]) -> Markup:
    """Horizontal bars of fractions: (label, value 0..1, annotation)."""
    bar_w, row_h = 360, 22
    height = TOP + row_h * max(len(rows), 1) + 8
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {W} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, (label, value, note) in enumerate(rows):
        y = TOP + i * row_h
        parts.append(f'<text x="150" y="{y + 14}" text-anchor="end" font-size="12">'
                     f'{escape(label[:24])}</text><rect x="158" y="{y + 3}" width="{bar_w}" '
                     f'height="14" fill="#eceff1"/><rect x="158" y="{y + 3}" '
                     f'width="{bar_w * max(0.0, min(value, 1.0)):.1f}" height="14" '
                     f'fill="{PALETTE[0]}"/><text x="{158 + bar_w + 6}" y="{y + 14}" '
                     f'font-size="11">{escape(note)}</text>')
    if not rows:
        parts.append(f'<text x="20" y="{TOP + 14}" font-size="12">no reviews yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
