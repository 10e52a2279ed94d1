"""Server-rendered charts: plain geometry computed here, drawn as SVG by the templates (no JavaScript).

Each chart carries its numbers as text too (titles and a table beside it), so a screen reader or a
text browser gets the same facts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    max_value: int
    baseline: float


def daily_bars(points: Sequence[tuple[date, int]], *, width: int = 600, height: int = 160) -> Chart:
    """Vertical bars, one per day, scaled to the busiest day; the baseline leaves room for date labels."""
    top, bottom = 14.0, 22.0
    peak = max((n for _d, n in points), default=0) or 1
    slot = width / max(1, len(points))
    usable = height - top - bottom
    bars = []
    for i, (day, n) in enumerate(points):
        h = usable * n / peak
        bars.append(Bar(x=round(i * slot + 1, 1), y=round(top + usable - h, 1), width=round(max(1.0, slot - 2), 1),
                        height=round(h, 1), value=n, label=day.isoformat()))
    return Chart(width=width, height=height, bars=bars, max_value=peak, baseline=top + usable)


def funnel_bars(stages: Sequence[tuple[str, int]], *, width: int = 600, row: int = 30) -> Chart:
    """Horizontal bars, one per stage, the first (everyone enrolled) as the full width."""
    label_room = 190.0
    peak = max((n for _s, n in stages), default=0) or 1
    bars = [Bar(x=label_room, y=i * row + 4.0, width=round((width - label_room - 50) * n / peak, 1),
                height=row - 8.0, value=n, label=name) for i, (name, n) in enumerate(stages)]
    return Chart(width=width, height=max(row, row * len(stages)), bars=bars, max_value=peak, baseline=0.0)
