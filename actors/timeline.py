"""Reading recorded call intervals: how many ran at once, and percentiles of waits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals ``(start, end)`` open at the same moment.

    At equal times an end (-1) sorts before a start (+1): a slot handed over
    in the same instant is not two calls at once.
    """
    edges = sorted(edge for start, end in intervals for edge in ((start, 1), (end, -1)))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 is the median); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
