"""Line charts as inline SVG, rendered on the server: no JavaScript, no build
step, readable without a chart library (admin's dashboard).

One chart: a few series over the same per-minute x axis, a y axis from 0 to
a rounded maximum with three grid lines, time labels every few hours, a
legend, and a <title> per series for screen readers and hover. Missing
points (None) break the line instead of being drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 24, 12, 40  # margins: axis labels and legend


@dataclass(frozen=True)
class Line:
    label: str
    color: str  # a CSS colour of ours, never from input
    values: Sequence[float | None]


def nice_max(value: float) -> float:
    """The y axis's top: `value` rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def line_chart(
    title: str, minutes: Sequence[datetime], lines: Sequence[Line], *, unit: str = ""
) -> SafeString:
    """The chart as an <svg> element, labels escaped. (format_html escapes
    its arguments into strings: numbers go in already formatted.)"""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(minutes), 2)
    top = nice_max(max((v for line in lines for v in line.values if v is not None), default=0))

    def x(i: int) -> float:
        return LEFT + plot_w * i / (n - 1)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [
        format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" '
            'role="img" aria-label="{}" class="picloud-chart">',
            WIDTH,
            HEIGHT,
            title,
        ),
        format_html("<title>{}</title>", title),
    ]
    for frac in (0, 0.5, 1):
        gy = y(top * frac)
        parts.append(
            format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>'
                '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="#555">{}{}</text>',
                LEFT,
                f"{gy:.1f}",
                WIDTH - RIGHT,
                f"{gy:.1f}",
                LEFT - 6,
                f"{gy + 4:.1f}",
                _number(top * frac),
                unit,
            )
        )
    # Time labels: about every four hours of a day's window, on the hour.
    step = max(1, len(minutes) // 6)
    for i in range(0, len(minutes), step):
        parts.append(
            format_html(
                '<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>',
                f"{x(i):.1f}",
                TOP + plot_h + 14,
                minutes[i].strftime("%H:%M"),
            )
        )
    for line in lines:
        for run in _runs(line.values):
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            parts.append(
                format_html(
                    '<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}">'
                    "<title>{}</title></polyline>",
                    line.color,
                    points,
                    line.label,
                )
            )
    legend_x = LEFT
    for line in lines:
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="10" height="10" fill="{}"/>'
                '<text x="{}" y="{}" font-size="11" fill="#333">{}</text>',
                legend_x,
                HEIGHT - 14,
                line.color,
                legend_x + 14,
                HEIGHT - 5,
                line.label,
            )
        )
        legend_x += 24 + 7 * len(line.label)
    parts.append(mark_safe("</svg>"))
    return format_html_join("", "{}", ((p,) for p in parts))


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive values that are not None."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, v))
    if current:
        runs.append(current)
    return runs
