"""The report's two plots as inline SVG strings: no plotting library, nothing fetched.

Inline SVG in HTML needs no xmlns attribute, so the page holds no http:// string at all.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40  # margins for the axis labels
COLOURS = {"ok": "#2f6fb0", "failed": "#c0392b"}


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 x 10^n) up to at least top."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def duration(seconds: float) -> str:
    """A short duration for axis labels: 45 s, 3.5 min, 2.1 h, 1.5 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.3g}"


def cumulative_plot(series: dict[str, list[tuple[float, int]]], title: str) -> str:
    """Step lines of cumulative counts over time (seconds since the first point), one per
    series, e.g. {"ok": [(0, 0), (4.2, 8), ...], "failed": [...]}. An empty series is left out."""
    series = {name: points for name, points in series.items() if points and points[-1][1] > 0}
    span = max((points[-1][0] for points in series.values()), default=0.0) or 1.0
    top = max((points[-1][1] for points in series.values()), default=0) or 1
    x_ticks, y_ticks = nice_ticks(span), nice_ticks(top)
    x_max, y_max = x_ticks[-1], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(seconds: float) -> float:
        return LEFT + plot_w * seconds / x_max

    def y(count: float) -> float:
        return TOP + plot_h * (1 - count / y_max)

    parts = [f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for tick in y_ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f"{_number(tick)}</text>")
    for tick in x_ticks:
        parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{escape(duration(tick))}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>'
                 f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{y(0):.1f}"/>'
                 f'<text class="label" x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
                 "time since the first commit</text>")
    for index, (name, points) in enumerate(series.items()):
        steps, previous = [], 0
        for seconds, count in points:  # a step line: counts jump at each commit
            steps += [f"{x(seconds):.1f},{y(previous):.1f}", f"{x(seconds):.1f},{y(count):.1f}"]
            previous = count
        colour = COLOURS.get(name, "#555")
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{" ".join(steps)}"/>')
        legend_y = TOP + 6 + 16 * index
        parts.append(f'<rect x="{LEFT + 10}" y="{legend_y}" width="12" height="3" fill="{colour}"/>'
                     f'<text class="legend" x="{LEFT + 28}" y="{legend_y + 5}">{escape(name)}: '
                     f'{points[-1][1]:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_plot(bars: list[tuple[str, float]], title: str, unit: str = "s") -> str:
    """Horizontal bars, one per (label, value), each labelled with its value and share."""
    row, label_w, value_w = 26, 100, 130
    height = TOP + row * len(bars) + 8
    top = max((value for _, value in bars), default=0.0) or 1.0
    whole = sum(value for _, value in bars) or 1.0
    plot_w = WIDTH - label_w - value_w - RIGHT
    parts = [f'<svg class="plot" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for index, (label, value) in enumerate(bars):
        y = TOP + row * index
        width = plot_w * value / top
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{max(width, 1):.1f}" height="{row - 8}">'
                     f'<title>{escape(label)}: {value:.4g} {escape(unit)}</title></rect>'
                     f'<text class="tick" x="{label_w + width + 6:.1f}" y="{y + 15}">{value:.3g} {escape(unit)} '
                     f'({value / whole:.0%})</text>')
    parts.append(f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{TOP}" y2="{height - 8}"/></svg>')
    return "".join(parts)
