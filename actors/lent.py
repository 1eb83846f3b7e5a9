"""A process's slots lent by the manager, kept between its calls (see
:mod:`actors.lending`): :class:`LentSlots`, plain state with the time given by
its caller, and :class:`Lent`, its upkeep (renewals, recalls, reports) for
:class:`actors.slotkeeper.SlotKeeper`.

A call that ends in a lent slot keeps it here, unless the manager has called the
group's lent slots back since it was granted; the process's next call of the group
for the same flow and unit of work takes it without asking (the manager's view of
each flow's calls, and its fair share, stay right: a kept slot is never used by
another tenant's call; nor by a later unit's, which would go ahead of the started
units the manager serves first, see actors.waitqueue). A recall gives back every
idle slot of the group at once, and marks the group's count of recalls, so that no
slot lent before it is kept again. A slot idle for ``LINGER_SECONDS`` goes back too:
a busy process takes its kept slots again within microseconds, and one whose work
has ended holds nothing for long (the group's stats show it idle).

Every lent slot this process holds, idle or in a call, is renewed here
together (:meth:`LentSlots.held`): a slot taken by call after call of a few
milliseconds is never held by one call for a third of its ttl.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import Enum

from ray.actor import ActorHandle

from actors.courier import Send
from actors.leases import Lease, TokensUsed
from actors.lending import LentUse, Recall, called_back
from actors.ops import Op, Release, Renew, Reused

log = logging.getLogger(__name__)

# How long a lent slot stays idle here before it goes back to the manager.
LINGER_SECONDS = 0.5
# Whom an idle slot is kept for: the flow and the unit of work of the call that kept it.
KeptFor = tuple[str, str | None]


class LentSlots:
    def __init__(self, linger: float = LINGER_SECONDS) -> None:
        self._linger = linger
        # By group, and flow and unit: the idle slots, each with when it was kept, newest
        # last.
        self._idle: dict[str, dict[KeptFor, list[tuple[Lease, float]]]] = {}
        # Every lent slot held here, idle or in a call, by lease id.
        self._held: dict[str, Lease] = {}
        # By group: the newest recall heard, as (epoch, count).
        self._recalled: dict[str, tuple[int, int]] = {}
        # Lent slots whose renewal found them no longer held: never kept again.
        self._lost: set[str] = set()
        # By group and flow, not yet told to the manager: what calls did in lent slots.
        self._uses: dict[tuple[str, str], LentUse] = {}

    def take(self, group: str, flow: str, unit: str | None = None) -> Lease | None:
        """An idle slot of ``group`` for a call of ``flow`` and ``unit`` in this process,
        if one is kept."""
        idle = self._idle.get(group, {}).get((flow, unit))
        if not idle:
            return None
        self._use(group, flow, started=1)
        return idle.pop()[0]

    def ended(self, lease: Lease, flow: str, held: float, used: TokensUsed | None) -> None:
        """A call of ``flow`` in the lent slot ``lease`` ended, having held it ``held``
        seconds and used ``used`` if its answer said: counted here, for the manager."""
        cost = float(used.cost) if used is not None and used.cost > 0 else 0.0
        self._use(lease.group, flow, ended=1, seconds=held, cost=cost, costed=held if cost else 0)

    def keep(self, lease: Lease, flow: str, now: float, unit: str | None = None) -> bool:
        """Keep ``lease`` idle for the next call of ``flow`` and ``unit`` if it is lent and
        not called back since it was granted; else it goes back (the caller gives it)."""
        recalled = self._recalled.get(lease.group, (0, 0))
        lost = lease.id in self._lost
        if lost or lease.lent is None or called_back(lease, recalled):
            self._lost.discard(lease.id)
            self._held.pop(lease.id, None)
            return False
        self._idle.setdefault(lease.group, {}).setdefault((flow, unit), []).append((lease, now))
        self._held[lease.id] = lease
        return True

    def let_go(self, lease: Lease) -> None:
        """``lease`` goes back after its call (cancelled, or handed over): no longer held
        here."""
        self._held.pop(lease.id, None)
        self._lost.discard(lease.id)

    def recall(self, recall: Recall) -> list[Lease]:
        """The manager calls the group's lent slots back: the idle ones, to give back."""
        newest = max(self._recalled.get(recall.group, (0, 0)), (recall.epoch, recall.count))
        self._recalled[recall.group] = newest
        return self.drop(recall.group)

    def drop(self, group: str) -> list[Lease]:
        """The idle slots of ``group``, to give back (called back, or its server is down
        or throttled)."""
        flows = self._idle.pop(group, {})
        return self._gone([lease for idle in flows.values() for lease, _ in idle])

    def lingered(self, now: float) -> list[Lease]:
        """The slots idle for ``LINGER_SECONDS`` or more, to give back."""
        gone: list[Lease] = []
        for flows in self._idle.values():
            for kept_for, idle in flows.items():
                flows[kept_for] = [(lease, at) for lease, at in idle if now - at < self._linger]
                gone.extend(lease for lease, at in idle if now - at >= self._linger)
        return self._gone(gone)

    def held(self) -> list[Lease]:
        """Every lent slot held here, idle or in a call: renewed together."""
        return list(self._held.values())

    def lost(self, lease: Lease) -> None:
        """``lease`` is no longer held at the manager (its renewal said so)."""
        self._held.pop(lease.id, None)
        flows = self._idle.get(lease.group, {})
        idle = [(held, at) for kept in flows.values() for held, at in kept]
        if all(held.id != lease.id for held, _ in idle):
            self._lost.add(lease.id)  # in a call now: not kept after it
            return
        for kept_for, kept in flows.items():
            flows[kept_for] = [(held, at) for held, at in kept if held.id != lease.id]

    def keeps(self, group: str) -> bool:
        """Whether idle slots of ``group`` are kept here (for any flow)."""
        return any(self._idle.get(group, {}).values())

    def groups(self) -> list[str]:
        """The groups with idle slots kept."""
        return [group for group, flows in self._idle.items() if any(flows.values())]

    def take_uses(self) -> list[LentUse]:
        """What calls did in lent slots since the last call, by group and flow."""
        uses, self._uses = self._uses, {}
        return list(uses.values())

    def _use(self, group: str, flow: str, **more: float) -> None:
        use = self._uses.get((group, flow)) or LentUse(group, flow)
        added = {name: getattr(use, name) + value for name, value in more.items()}
        self._uses[(group, flow)] = replace(use, **added)

    def _gone(self, leases: list[Lease]) -> list[Lease]:
        for lease in leases:
            self._held.pop(lease.id, None)
        return leases


class Lent:
    """The upkeep of a process's lent slots: while any is held here, one task gives back
    those idle past their linger and renews them all every third of their ttl; recalls
    give idle ones back; the calls in kept slots are reported in the next batch."""

    def __init__(
        self,
        manager: ActorHandle,
        apply: Send,
        note: Callable[[Awaitable[object]], None],
        listen: Callable[[], None],
    ) -> None:
        self._manager = manager
        self._apply = apply
        # Fire-and-forget manager calls go through the slot keeper's note (drained there).
        self._note = note
        # Keeps this process's collect call waiting, where recalls come.
        self._listen = listen
        self._slots = LentSlots()
        self._renewing: asyncio.Task[None] | None = None
        self._reporting = False

    def keeps(self, group: str) -> bool:
        """Whether slots of ``group`` are kept here, idle."""
        return self._slots.keeps(group)

    def take(self, group: str, flow: str, unit: str | None) -> Lease | None:
        """A kept slot of ``group`` for a call of ``flow`` and ``unit`` starting now, if one
        is idle here."""
        lease = self._slots.take(group, flow, unit)
        if lease is not None:
            self._report()
        return lease

    def ended(
        self,
        lease: Lease,
        flow: str,
        unit: str | None,
        held: float,
        used: TokensUsed | None,
        *,
        cancelled: bool,
        handed_over: bool,
    ) -> Fate:
        """The call of ``flow`` and ``unit`` in ``lease`` ended after ``held`` seconds,
        having used ``used`` if its answer said: what becomes of its slot (see
        :class:`Fate`)."""
        if lease.lent is None or handed_over:
            self._slots.let_go(lease)
            return Fate.RETURNED
        self._slots.ended(lease, flow, held, used)
        self._report()
        if cancelled or not self._slots.keep(lease, flow, time.monotonic(), unit):
            self._slots.let_go(lease)
            return Fate.COUNTED
        self._listen()
        self._report()
        task = self._renewing
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._renewing = asyncio.create_task(self._upkeep())
        return Fate.KEPT

    def recalled(self, recall: Recall) -> None:
        """The manager calls the group's lent slots back: the idle ones go at once."""
        self._give_back(self._slots.recall(recall))

    def forget(self, group: str) -> None:
        """The group's server is down or throttled: its idle slots go back."""
        self._give_back(self._slots.drop(group))

    def give_back(self) -> None:
        """Every idle slot goes back, and the calls run in kept slots are reported now."""
        self._give_back([idle for g in self._slots.groups() for idle in self._slots.drop(g)])
        self._send_report()

    async def _upkeep(self) -> None:
        """While lent slots are held here: give back those idle past their linger, renew
        them all every third of their ttl. Cancelled (its event loop ends: a driver's
        asyncio.run returns), it gives the idle ones back: nothing here would renew
        them, nor hear the manager call them back."""
        renewed = time.monotonic()
        try:
            while self._slots.held():
                await asyncio.sleep(LINGER_SECONDS / 2)
                self._give_back(self._slots.lingered(time.monotonic()))
                held = self._slots.held()
                if not held or time.monotonic() - renewed < min(h.ttl for h in held) / 3:
                    continue
                renewed = time.monotonic()
                answers = await self._apply([Renew(lease.id, lease.epoch) for lease in held])
                for lease, still in zip(held, answers, strict=True):
                    if still is not True:
                        log.warning("lent slot %s of %r is no longer held", lease.id, lease.group)
                        self._slots.lost(lease)
        except asyncio.CancelledError:
            # Sent straight, not in a batch: this loop is ending.
            idle = [lease for g in self._slots.groups() for lease in self._slots.drop(g)]
            if idle:
                self._manager.apply.remote(_idle_releases(idle))
            raise

    def _give_back(self, idle: list[Lease]) -> None:
        if idle:
            self._note(self._apply(_idle_releases(idle)))

    def _report(self) -> None:
        """Tell the manager, in a batch soon, of the calls run in kept slots."""
        if not self._reporting:
            self._reporting = True
            asyncio.get_running_loop().call_soon(self._send_report)

    def _send_report(self) -> None:
        self._reporting = False
        uses = self._slots.take_uses()
        if uses:
            self._note(self._apply([Reused(use) for use in uses]))


class Fate(Enum):
    """What becomes of a lent slot when its call ends: ``KEPT`` here; ``COUNTED``, its
    call counted as lent use, it goes back idle (called back, or its call cancelled);
    ``RETURNED`` as any slot (not lent, or handed over)."""

    KEPT = "kept"
    COUNTED = "counted"
    RETURNED = "returned"


def _idle_releases(idle: list[Lease]) -> list[Op[object]]:
    """Give back lent slots kept idle, whose calls were counted as they ended."""
    return [Release(lease.id, lease.epoch, idle=True) for lease in idle]
