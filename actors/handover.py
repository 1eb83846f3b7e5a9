"""The hand-over: a freed slot passed on inside its holder's process, without the
manager's round trip. How it works, and why it keeps the manager's order, is told once,
in docs/architecture.md ("The hand-over").

Here: which waiter each caller may pass a slot to (``next_in_line``), the
hand-over itself (the release and the successor's grant, as the engine's
handler of :class:`actors.ops.HandOver`), and the hand-over's counters.
"""

from __future__ import annotations

from actors.holdings import Holdings
from actors.leases import Lease, TokensUsed
from actors.tally import Outcome
from actors.waitqueue import GrantKey


class HandOvers:
    def __init__(self, enabled: bool, holdings: Holdings) -> None:
        self._holdings = holdings
        # Whether next_in_line names successors (``queue.hand_over``).
        self.enabled = enabled
        # Hand-overs whose successor was no longer its group's best waiter by the time
        # the engine heard of it: one arrived while the notice was on its way.
        self.overtaken = 0
        # Answers to next_in_line calls (each a Ray reply, counted as a manager call).
        self.answers = 0

    def next_in_line(self, global_limit: int | None) -> dict[str, tuple[str, str]]:
        """By group: the waiter a slot freed now would go to, and its caller, where that
        caller holds a slot of the group itself and may pass it straight on. Only groups
        whose next grant waits for a release and nothing else: capped, under no global
        cap, with no budget or pause."""
        if not self.enabled or global_limit is not None:
            return {}
        callers = self._holdings.callers
        named = {}
        for group_id, group in self._holdings.groups.items():
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

    def hand_over(
        self,
        group_id: str,
        lease_id: str,
        epoch: int,
        successor: str,
        caller: str | None = None,
        used: TokensUsed | None = None,
    ) -> list[Lease]:
        """Release ``lease_id``, whose caller has already started ``successor`` in its slot
        (the hand-over, see docs/architecture.md), under ``epoch``. Returns the leases
        granted: the successor's (unless it held one already) and any the release
        leaves room for. An overtaken successor keeps the slot (its call runs), and is
        counted; so does one whose wait ended here (a queue timeout) meanwhile; one its
        caller cancelled does not. A pool's waiter granted a slot of another of its
        groups meanwhile moves here, where its call runs, and frees that one; one granted
        a slot of this group meanwhile keeps it, under the handed slot's epoch."""
        holdings = self._holdings
        group = holdings.groups[group_id]
        holdings.released(lease_id, epoch, used)
        granted = []
        if (waiter := holdings.waiters.get(successor)) is not None:
            self.note(group.queue.peek(), successor)
            group.queue.remove(successor)
            granted.append(holdings.grant_waiter(group, waiter, epoch))
        elif (held := holdings.leases.get(successor)) is not None and held.group != group_id:
            # A pool's waiter granted a slot of another of its groups while this was on
            # its way: it runs in the slot passed on here, and that other slot is free.
            self.overtaken += 1
            holdings.recorder.finished(holdings.free(successor), Outcome.RELEASED)
            holdings.callers.note(successor, caller)
            lease = holdings.lease(group, successor, held.request_id, held.priority, epoch)
            granted.append(holdings.grant(group, lease, waited=0.0, tokens=0))
        elif (held := holdings.leases.get(successor)) is not None and held.epoch != epoch:
            # Granted meanwhile under another epoch than the slot handed over (a restart
            # came between): its process holds it under the handed slot's epoch, as the
            # lease it made there says, and renews and releases it so.
            holdings.leases.known_as(successor, epoch)
            holdings.groups.changed(group, successor)
        elif successor not in holdings.leases and not holdings.leases.retired(successor):
            holdings.callers.note(successor, caller)
            lease = holdings.lease(group, successor, epoch=epoch)
            granted.append(holdings.grant(group, lease, waited=0.0, tokens=0))
        group.tally.handed_over += 1
        return granted + holdings.dispatch()
