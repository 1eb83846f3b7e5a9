"""Who waits and who holds: the moves of a request between waiting, holding and gone,
and the grant of the waiters that can run.

Each move keeps every count in step: the group's held leases and active count,
the total, its budget, its flows' fair share, the journal's mark, the caller
index and the tally. The engine (:mod:`actors.engine`) decides which move and
when; this makes it. :meth:`Holdings.dispatch` grants waiters while any can run,
best key first across all groups: the engine's invariant (see there) is
restored by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from actors.callers import CallerIndex
from actors.groupstate import Group, GroupTable, Waiter
from actors.leases import Lease, LeaseTable, TokensUsed
from actors.lending import Lending, LentUse
from actors.reports import Recorder
from actors.tally import Outcome
from actors.waitqueue import DEFAULT_PRIORITY, GrantKey


class Want(NamedTuple):
    """What a shard's calls want of a global cap another shard keeps (see actors.capacity):
    the calls it holds; the waiters that the cap alone keeps waiting (as many of each
    group's as it has room for, if its best may run now: a pool's waiter may be counted
    in each of its groups); the best priority of those (None: none); and how many of
    its slots calls gave up as they ended, so far (see :meth:`Holdings.allow`)."""

    held: int
    blocked: int
    best: int | None
    given_up: int


class Holdings:
    def __init__(
        self,
        groups: GroupTable,
        leases: LeaseTable,
        callers: CallerIndex,
        recorder: Recorder,
        clock: Callable[[], float],
        epoch: int,
        global_limit: int | None,
        lending: Lending | None = None,
    ) -> None:
        self.clock = clock
        self.lending = lending if lending is not None else Lending(epoch, enabled=False)
        self._epoch = epoch
        self._global_limit = global_limit
        self.groups = groups
        self.leases = leases
        self.callers = callers
        self.recorder = recorder
        self.waiters: dict[str, Waiter] = {}
        self.total_active = 0
        # Under a global cap that another shard keeps, the slots it lent this one, which
        # bound the calls held here instead of the cap (see actors.capacity); None: the
        # cap. Of them, ``returning`` go back as calls end: each freed slot lowers it, and
        # counts one more ``given_up``.
        self.allowance: int | None = None
        self.returning = 0
        self.given_up = 0

    def queue(self, waiter: Waiter) -> None:
        """Queue ``waiter`` in each of its groups: whichever frees a slot first for it
        grants it (see :meth:`taken`)."""
        self.waiters[waiter.lease_id] = waiter
        for group_id in waiter.groups:
            group = self.groups[group_id]
            group.queue.push(waiter.lease_id, waiter.key, waiter.flow, waiter.weight)
            self.recorder.levels(group)
        # Slots lent where it waits (under a global cap: anywhere) come back.
        capped = self._global_limit is not None
        self.lending.recall(self.lending.lending_groups() if capped else list(waiter.groups))

    def unqueue(self, lease_id: str) -> Group | None:
        """Take a waiter out of its groups' queues; its first group (where its outcome is
        counted), or None if it was not waiting."""
        waiter = self.waiters.pop(lease_id, None)
        if waiter is None:
            return None
        first, *others = (self.groups[group_id] for group_id in waiter.groups)
        first.queue.remove(lease_id)
        self._leave(others, lease_id)
        self.callers.forget(lease_id)
        return first

    def taken(self, waiter: Waiter, group: Group) -> None:
        """``waiter``, out of ``group``'s queue, is granted there: it leaves the queues of
        its pool's other groups (its caller stays noted)."""
        del self.waiters[waiter.lease_id]
        others = [self.groups[g] for g in waiter.groups if g != group.spec.id]
        self._leave(others, waiter.lease_id)

    def _leave(self, groups: list[Group], lease_id: str) -> None:
        """A waiter left these queues too: the other groups of its pool."""
        for group in groups:
            group.queue.remove(lease_id)
            self.recorder.levels(group)

    def grant(
        self,
        group: Group,
        lease: Lease,
        *,
        waited: float,
        tokens: int,
        flow: str = "",
        weight: float = 1.0,
        lendable: bool = False,
    ) -> Lease:
        """Hold ``lease`` for a call of ``flow`` that waited ``waited`` seconds: ``tokens``
        charged to the budget, its estimated cost counted in its flow's service (corrected
        by :meth:`free` with its true cost, see :mod:`actors.fairshare`). The
        first grant of a group out of rotation whose cooldown has passed is its probe
        (see :mod:`actors.rotation`). ``lendable``: a single group's call, whose slot
        may be lent to its process (see :mod:`actors.lending`)."""
        if lendable:
            anyone_waits = self._global_limit is not None and bool(self.waiters)
            caller = self.callers.of(lease.id)
            lease = self.lending.lend(group, lease, caller, anyone_waits)
        self.hold(group, lease)
        if group.out is not None:
            group.out.granted(lease.id, self.clock())
        group.queue.share.granted(lease.id, flow, weight)
        if group.budget is not None:
            group.budget.spend(lease.id, tokens, self.clock())
        self.recorder.granted(group, waited, flow)
        return lease

    def hold(self, group: Group, lease: Lease, *, restored: bool = False) -> None:
        self.leases.hold(lease, restored=restored)
        group.leases.add(lease.id)
        group.active += 1
        self.total_active += 1
        self.groups.changed(group, lease.id)

    def free(
        self,
        lease_id: str,
        used: TokensUsed | None = None,
        *,
        released: bool = False,
        counted: bool = True,
    ) -> Group:
        """Forget a held lease (see LeaseTable.free); ``used``: what its call used, if its
        answer said; ``released``: by its holder. A probe released brings its group back
        in rotation (its caller takes the group out again first if the probe found the
        server down); one that expired or whose caller died or gave up lets in another."""
        lease, held = self.leases.free(lease_id)
        self.callers.forget(lease_id)
        group = self.groups[lease.group]
        if group.out is not None and group.out.ended(lease_id, released=released):
            group.out = None
            self.recorder.rotation(group)
        group.leases.discard(lease_id)
        self.lending.freed(group.spec.id, lease_id)
        group.active -= 1
        self.total_active -= 1
        if self.returning and self.allowance is not None:
            self.allowance, self.returning = self.allowance - 1, self.returning - 1
            self.given_up += 1
        if not counted:  # a lent slot's calls were counted as they ended (see reused)
            group.queue.share.refund(lease_id)
        else:
            group.tally.held(held)
            if (ended := group.queue.share.ended(lease_id, held, used)) is not None:
                flow, cost = ended
                self.recorder.served(group, flow, held, cost)
        self.groups.changed(group, lease_id)
        now = self.clock()
        if group.budget is not None:
            group.budget.returned(lease_id, used.total if used is not None else None, now)
            self.recorder.budget_left(group)
        if group.throttle.freed(lease_id, group.budget, now, released=released):
            self.recorder.learned(group)
        return group

    # -- grants ---------------------------------------------------------------------

    def reused(self, use: LentUse) -> None:
        """Calls of a process in slots lent to it (see :mod:`actors.lending`): those started
        without asking, counted as granted at once; those ended, counted as released and
        in their flow's service."""
        group = self.groups[use.group_id]
        for _ in range(use.started):
            self.recorder.submitted(group)
            self.recorder.granted(group, 0.0, use.flow)
        if use.ended:
            for _ in range(use.ended):
                group.tally.held(use.seconds / use.ended)
                self.recorder.finished(group, Outcome.RELEASED)
            share = group.queue.share
            cost = share.reused(use.flow, use.ended, use.seconds, use.cost, use.costed)
            self.recorder.served(group, use.flow, use.seconds, cost)

    def room(self) -> bool:
        """Below the global cap, if there is one (this shard's part of it, if it has one)."""
        left = self.room_left()
        return left is None or left > 0

    def room_left(self) -> int | None:
        """The calls the global cap (this shard's part of it) lets start now; None: no cap."""
        limit = self._global_limit if self.allowance is None else self.allowance
        return None if limit is None else max(0, limit - self.total_active)

    def allow(self, slots: int, returning: int = 0, seen: int | None = None) -> list[Lease]:
        """This shard's part of the global cap is now ``slots``, of which ``returning`` go
        back as calls end (see actors.capacity): the waiters it lets run. ``seen``: the
        slots given up when these were counted; calls that ended since gave up more, and
        lower these as much."""
        ended = 0 if seen is None else self.given_up - seen
        self.allowance, self.returning = slots - ended, max(0, returning - ended)
        return self.dispatch()

    def demand(self) -> Want:
        """What this shard's calls want of the global cap (see :class:`Want`)."""
        now = self.clock()
        blocked, best = 0, None
        for group in self.groups.values():
            room = len(group.queue) if group.limit is None else group.limit - group.active
            top = group.queue.peek() if room > 0 else None
            if top is None or group.ready_at(self.waiters[top[1]], now) > now:
                continue
            blocked += min(room, len(group.queue))
            priority = self.waiters[top[1]].priority
            best = priority if best is None else max(best, priority)
        return Want(self.total_active, min(blocked, len(self.waiters)), best, self.given_up)

    def held_by(self, caller: str) -> tuple[list[Lease], list[str]]:
        """The leases ``caller`` holds, and the lease ids of its waiters."""
        held, waiting = [], []
        for lease_id in self.callers.leases(caller):
            lease = self.leases.get(lease_id)
            if lease is not None:
                held.append(lease)
            elif lease_id in self.waiters:
                waiting.append(lease_id)
        return held, waiting

    def lease(
        self,
        group: Group,
        lease_id: str,
        request_id: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        epoch: int | None = None,
    ) -> Lease:
        """A lease of ``group``; by default of this epoch, known by its lease id, at the
        default priority (a lease restored or handed over, whose options are not here)."""
        epoch = self._epoch if epoch is None else epoch
        ttl = self.leases.ttl
        return Lease(lease_id, group.spec.id, request_id or lease_id, priority, epoch, ttl)

    def grant_waiter(self, group: Group, waiter: Waiter, epoch: int | None = None) -> Lease:
        """Grant a waiter just taken out of ``group``'s queue (its caller stays noted)."""
        self.taken(waiter, group)
        lease = self.lease(group, waiter.lease_id, waiter.request_id, waiter.priority, epoch)
        waited = self.clock() - waiter.queued_at
        return self.grant(
            group,
            lease,
            waited=waited,
            tokens=waiter.tokens,
            flow=waiter.flow,
            weight=waiter.weight,
            lendable=len(waiter.groups) == 1,
        )

    def dispatch(self) -> list[Lease]:
        """Grant waiters while any can run, best key first across all groups."""
        granted: list[Lease] = []
        now = self.clock()
        while self.room():
            best: tuple[GrantKey, str, Group] | None = None
            for group in self.groups.values():
                top = group.next_waiter()
                if top is None or (best is not None and top[0] >= best[0]):
                    continue
                if group.ready_at(self.waiters[top[1]], now) <= now:
                    best = (top[0], top[1], group)
            if best is None:
                break
            _, lease_id, group = best
            group.queue.pop()
            granted.append(self.grant_waiter(group, self.waiters[lease_id]))
        return granted

    def released(
        self, lease_id: str, epoch: int, used: TokensUsed | None, idle: bool = False
    ) -> bool:
        """Free the slot of a release under ``epoch``, without granting it again; False if
        it is not held (see LeaseTable.releasable). ``idle``: a lent slot between calls,
        whose calls were counted as they ended (see :meth:`reused`)."""
        if not self.leases.releasable(lease_id, epoch, self._epoch):
            return False
        group = self.free(lease_id, used, released=True, counted=not idle)
        if idle:
            self.recorder.levels(group)
        else:
            self.recorder.finished(group, Outcome.RELEASED)
        return True
