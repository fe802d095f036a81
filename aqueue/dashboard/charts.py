"""Line charts as plain SVG, computed on the server: no chart library, nothing to load.

:func:`chart` turns named series of numbers into a :class:`Chart` that the ``chart`` template
macro draws: a polyline per series, the largest value as the scale, and start/end labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Chart", "Line", "chart"]

WIDTH = 560
HEIGHT = 140
PAD_TOP = 12
PAD_LEFT = 4

#: The colours of a chart's series, in order (readable on white and in print).
COLOURS = ("#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed")


@dataclass(frozen=True, slots=True)
class Line:
    """One series: its name, colour, SVG ``points`` and last value."""

    name: str
    colour: str
    points: str
    last: float


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart ready to draw (sizes in pixels)."""

    title: str
    unit: str
    lines: list[Line]
    peak: float
    start: str
    end: str
    width: int = WIDTH
    height: int = HEIGHT


def chart(
    title: str,
    unit: str,
    times: Sequence[float],
    series: Mapping[str, Sequence[float]],
) -> Chart:
    """A chart of ``series`` (each as long as ``times``, epoch seconds of each point)."""
    peak = max((max(values, default=0.0) for values in series.values()), default=0.0)
    scale = peak if peak > 0 else 1.0
    n = max(len(times) - 1, 1)
    lines = []
    for i, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{PAD_LEFT + (WIDTH - PAD_LEFT) * k / n:.1f},"
            f"{HEIGHT - (HEIGHT - PAD_TOP) * v / scale:.1f}"
            for k, v in enumerate(values)
        )
        lines.append(
            Line(name, COLOURS[i % len(COLOURS)], points, float(values[-1]) if values else 0.0)
        )
    return Chart(
        title,
        unit,
        lines,
        peak,
        _clock(times[0]) if times else "",
        _clock(times[-1]) if times else "",
    )


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
