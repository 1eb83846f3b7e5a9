"""Reading recorded call intervals: how many ran at once."""

from __future__ import annotations

from collections.abc import Iterable


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
