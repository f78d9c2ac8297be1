"""How values are shown on the dashboard: durations, times, and the overview's chart
geometry (drawn by the server as inline SVG)."""

from __future__ import annotations

import time
from dataclasses import dataclass


def duration(seconds: float | None) -> str:
    """``4 s``, ``3 min 5 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "—"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def when(timestamp: float | None) -> str:
    """A time in UTC to the second."""
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    minutes_ago: int


CHART_WIDTH = 600
CHART_HEIGHT = 80


def bars(values: list[int], height: int = CHART_HEIGHT) -> list[Bar]:
    """One bar per minute, oldest on the left, scaled to the largest value."""
    if not values:
        return []
    step = CHART_WIDTH / len(values)
    top = max(values) or 1
    out = []
    for index, value in enumerate(values):
        bar_height = round(height * value / top, 1)
        out.append(Bar(round(index * step, 1), round(height - bar_height, 1),
                       round(step * 0.8, 1), bar_height, value, len(values) - 1 - index))
    return out
