"""Who waits and who holds: the moves of a request between waiting, holding and gone.

Each move keeps every count in step: the group's held leases and active count,
the total, its budget, the journal's mark, the caller index and the tally. The
engine (:mod:`actors.engine`) decides which move and when; this makes it.
"""

from __future__ import annotations

from collections.abc import Callable

from actors.callers import CallerIndex
from actors.groupstate import Group, GroupTable, Waiter
from actors.leases import Lease, LeaseTable, TokensUsed
from actors.reports import Recorder


class Holdings:
    def __init__(
        self,
        groups: GroupTable,
        leases: LeaseTable,
        callers: CallerIndex,
        recorder: Recorder,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._groups = groups
        self._leases = leases
        self._callers = callers
        self._recorder = recorder
        self.waiters: dict[str, Waiter] = {}
        self.total_active = 0

    def queue(self, waiter: Waiter) -> None:
        """Queue ``waiter`` in each of its groups: whichever frees a slot first for it
        grants it (see :meth:`taken`)."""
        self.waiters[waiter.lease_id] = waiter
        for group_id in waiter.groups:
            group = self._groups[group_id]
            group.queue.push(waiter.lease_id, waiter.key, waiter.flow, waiter.weight)
            self._recorder.levels(group)

    def unqueue(self, lease_id: str) -> Group | None:
        """Take a waiter out of its groups' queues; its first group (where its outcome is
        counted), or None if it was not waiting."""
        waiter = self.waiters.pop(lease_id, None)
        if waiter is None:
            return None
        first, *others = (self._groups[group_id] for group_id in waiter.groups)
        first.queue.remove(lease_id)
        self._leave(others, lease_id)
        self._callers.forget(lease_id)
        return first

    def taken(self, waiter: Waiter, group: Group) -> None:
        """``waiter``, out of ``group``'s queue, is granted there: it leaves the queues of
        its pool's other groups (its caller stays noted)."""
        del self.waiters[waiter.lease_id]
        others = [self._groups[g] for g in waiter.groups if g != group.spec.id]
        self._leave(others, waiter.lease_id)

    def _leave(self, groups: list[Group], lease_id: str) -> None:
        """A waiter left these queues too: the other groups of its pool."""
        for group in groups:
            group.queue.remove(lease_id)
            self._recorder.levels(group)

    def grant(
        self,
        group: Group,
        lease: Lease,
        *,
        waited: float,
        tokens: int,
        flow: str = "",
        weight: float = 1.0,
    ) -> Lease:
        """Hold ``lease`` for a call of ``flow`` that waited ``waited`` seconds, charged
        ``tokens`` to the budget and the group's estimated cost of a call to the flow's
        share (corrected by :meth:`free` with its true cost). The first grant of a group
        whose outage has passed is its probe (see :class:`actors.groupstate.Outage`)."""
        self.hold(group, lease)
        if (outage := group.outage) is not None and group.probing(self._clock()):
            outage.probe = outage.probe or lease.id
        estimate = group.queue.estimate_for(flow)
        group.queue.charge(flow, estimate, weight)
        group.charged[lease.id] = (flow, estimate)
        if group.budget is not None:
            group.budget.spend(lease.id, tokens, self._clock())
        self._recorder.granted(group, waited, flow)
        return lease

    def hold(self, group: Group, lease: Lease, *, restored: bool = False) -> None:
        self._leases.hold(lease, restored=restored)
        group.leases.add(lease.id)
        group.active += 1
        self.total_active += 1
        self._groups.changed(group)

    def free(
        self, lease_id: str, used: TokensUsed | None = None, *, released: bool = False
    ) -> Group:
        """Forget a held lease (see LeaseTable.free); ``used``: what its call used, if its
        answer said; ``released``: by its holder. A probe released ends its group's
        outage (its caller marks the group out first if the probe found the server down);
        one that expired or whose caller died or gave up lets in another."""
        lease, held = self._leases.free(lease_id)
        self._callers.forget(lease_id)
        group = self._groups[lease.group]
        if (outage := group.outage) is not None and outage.probe == lease_id:
            outage.probe = None
            if released:
                group.outage = None
                self._recorder.rotation(group)
        group.leases.discard(lease_id)
        group.active -= 1
        self.total_active -= 1
        group.tally.held(held)
        if (charged := group.charged.pop(lease_id, None)) is not None:
            flow, estimate = charged
            cost = group.queue.settle(flow, estimate, held, used)
            self._recorder.served(group, flow, held, cost)
        self._groups.changed(group)
        now = self._clock()
        if group.budget is not None:
            group.budget.returned(lease_id, used.total if used is not None else None, now)
            self._recorder.budget_left(group)
        if group.throttle.freed(lease_id, group.budget, now, released=released):
            self._recorder.learned(group)
        return group
