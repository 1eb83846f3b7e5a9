"""The hand-over: a freed slot passed on inside its holder's process, without the
manager's round trip. How it works, and why it keeps the manager's order, is told once,
in docs/architecture.md ("The hand-over").

Here: which waiter each caller may pass a slot to (``next_in_line``), and the
hand-over's counters. :meth:`actors.engine.SlotEngine.hand_over` composes the
rest from the engine's release and grant.
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.callers import CallerIndex
from actors.groupstate import Group
from actors.waitqueue import GrantKey


class HandOvers:
    def __init__(self, enabled: bool) -> None:
        # Whether next_in_line names successors (``queue.hand_over``).
        self.enabled = enabled
        # Hand-overs whose successor was no longer its group's best waiter by the time
        # the engine heard of it: one arrived while the notice was on its way.
        self.overtaken = 0
        # Answers to next_in_line calls (each a Ray reply, counted as a manager call).
        self.answers = 0

    def next_in_line(
        self, groups: Mapping[str, Group], callers: CallerIndex, global_limit: int | None
    ) -> dict[str, tuple[str, str]]:
        """By group: the waiter a slot freed now would go to, and its caller, where that
        caller holds a slot of the group itself and may pass it straight on. Only groups
        whose next grant waits for a release and nothing else: capped, under no global
        cap, with no budget or pause."""
        if not self.enabled or global_limit is not None:
            return {}
        named = {}
        for group_id, group in groups.items():
            if group.limit is None or group.budget is not None:
                continue
            top = group.queue.peek()
            if top is None:
                continue
            caller = callers.of(top[1])
            if caller is not None and any(callers.of(i) == caller for i in group.leases):
                named[group_id] = (top[1], caller)
        return named

    def note(self, top: tuple[GrantKey, str] | None, successor: str) -> None:
        """A hand-over to ``successor`` arrived while ``top`` was its group's best waiter."""
        if top is not None and top[1] != successor:
            self.overtaken += 1
