"""The queue as the queue page shows it: each group's stats, its recent levels, and its
first waiters in grant order, with who asked and when each will run.

The manager hands out a :class:`QueueView` stamped with a *version* that moves
on every change of a group's levels (a call queued, granted, released,
cancelled; a group paused). A caller that sends back the version it has gets
the next view as soon as something changed (see ``SlotGate.view``): the page's
stream is pushed by the manager, not polled.
"""

from __future__ import annotations

from collections import deque

from actors.stats import QueueStats, Snapshot

# The levels of a group are kept as the most held and waiting per step of this many
# seconds, over the last HISTORY_STEPS steps (5 minutes).
HISTORY_STEP_SECONDS = 5.0
HISTORY_STEPS = 60


class LevelHistory:
    """The most calls one group held and had waiting in each of its last steps."""

    def __init__(self) -> None:
        # (step number, most held, most waiting, held at the end, waiting at the end)
        self._steps: deque[tuple[int, int, int, int, int]] = deque(maxlen=HISTORY_STEPS)

    def note(self, now: float, active: int, pending: int) -> None:
        step = int(now // HISTORY_STEP_SECONDS)
        if self._steps and self._steps[-1][0] == step:
            _, most_active, most_pending, _, _ = self._steps[-1]
            self._steps[-1] = (
                step,
                max(most_active, active),
                max(most_pending, pending),
                active,
                pending,
            )
        else:
            self._steps.append((step, active, pending, active, pending))

    def series(self, now: float) -> tuple[list[int], list[int]]:
        """Held and waiting over the last HISTORY_STEPS steps, oldest first, ending with
        the step of ``now``; a step without a change keeps the level the one before ended
        with."""
        last = int(now // HISTORY_STEP_SECONDS)
        first = last - HISTORY_STEPS + 1
        by_step = {entry[0]: entry for entry in self._steps}
        ended = (0, 0)
        for entry in self._steps:
            if entry[0] < first:
                ended = (entry[3], entry[4])
        held, waiting = [], []
        for step in range(first, last + 1):
            found = by_step.get(step)
            most = ended if found is None else (found[1], found[2])
            if found is not None:
                ended = (found[3], found[4])
            held.append(most[0])
            waiting.append(most[1])
        return held, waiting


class WaitingCall(Snapshot):
    request_id: str
    priority: int
    # 1: granted next.
    position: int
    waited_seconds: float
    # None until the group has released a slot (no hold time measured yet).
    estimated_wait_seconds: float | None
    # Who asked: its flow (see actors.waitqueue), the pipeline run, its service and what
    # the call is for ("" if not said).
    flow: str = ""
    run: str
    service_id: str
    stage: str


class GroupActivity(Snapshot):
    # HISTORY_STEPS values each, oldest first, one per HISTORY_STEP_SECONDS.
    held_history: list[int]
    waiting_history: list[int]
    # The first waiters in grant order (the stats say how many wait in all).
    waiting: list[WaitingCall]


class QueueView(Snapshot):
    version: int
    step_seconds: float = HISTORY_STEP_SECONDS
    stats: QueueStats
    groups: dict[str, GroupActivity]
