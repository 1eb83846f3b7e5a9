"""What each group did, how each request ended, and which fallbacks each model's calls
took: the tallies the stats are made of.

A :class:`GroupTally` is kept per group in :class:`actors.groupstate.Group` and moved
by :class:`actors.reports.Recorder`; the :class:`ModelTally` by the engine's handler of
a fallback taken. Both are read by :mod:`actors.reports`.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from actors.groups import ModelEntry
from actors.queueview import LevelHistory
from actors.stats import ModelStats

# Weight of the newest hold time in a group's moving average (for wait estimates).
HOLD_SMOOTHING = 0.2
# How many recent waits per group the wait percentiles are taken over.
WAIT_WINDOW = 1_000


class Outcome(StrEnum):
    """How a request ended."""

    RELEASED = "released"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    # Its caller died: a waiter dropped, or a lease freed.
    ABANDONED = "abandoned"


@dataclass(slots=True)
class GroupTally:
    """What one group did: grants, outcomes, hold times, waits and recent levels."""

    granted: int = 0
    handed_over: int = 0
    ended: Counter[Outcome] = field(default_factory=Counter)
    peak_active: int = 0
    avg_hold: float | None = None
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=WAIT_WINDOW))
    history: LevelHistory = field(default_factory=LevelHistory)

    def grant(self, waited: float) -> None:
        self.granted += 1
        self.waits.append(waited)

    def held(self, seconds: float) -> None:
        self.avg_hold = (
            seconds
            if self.avg_hold is None
            else (1 - HOLD_SMOOTHING) * self.avg_hold + HOLD_SMOOTHING * seconds
        )

    def levels(self, now: float, active: int, pending: int) -> None:
        self.peak_active = max(self.peak_active, active)
        self.history.note(now, active, pending)


class ModelTally:
    """The settings' models of several servers or with fallbacks, as the stats show them,
    and by model asked and fallback, why the calls each fallback took went to it."""

    def __init__(self, models: Mapping[str, ModelEntry]) -> None:
        self._described = {
            model: ModelStats(
                groups=[spec.id for spec in entry.specs()],
                fallbacks=list(entry.fallbacks),
                fallback_after_seconds=entry.fallback_after_seconds,
            )
            for model, entry in models.items()
            if entry.routed
        }
        self._fell_back: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    def fell_back(self, model: str, fallback: str, reason: str) -> None:
        """A call of ``model`` went to its ``fallback``: ``reason``, the error's type."""
        self._fell_back[model, fallback][reason] += 1

    def stats(self) -> dict[str, ModelStats]:
        taken = self._fell_back.items()
        return {
            model: described.model_copy(
                update={
                    "fallbacks_taken": {
                        to: dict(why) for (asked, to), why in taken if asked == model
                    }
                }
            )
            for model, described in self._described.items()
        }
