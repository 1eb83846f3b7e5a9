"""A process's slots lent by the manager, kept idle between its calls (see
:mod:`actors.lending`): plain state, with no Ray, the time given by the caller.

A call that ends in a lent slot keeps it here, unless the manager has called the
group's lent slots back since it was granted; the process's next call of the
group takes it without asking. A recall gives back every idle slot of the
group at once, and marks the group's count of recalls, so that no slot lent
before it is kept again. A slot idle for ``LINGER_SECONDS`` goes back too: a
busy process takes its kept slots again within microseconds, and one whose
work has ended holds nothing for long (the group's stats show it idle).

Every lent slot this process holds, idle or in a call, is renewed here
together (:meth:`LentSlots.held`): a slot taken by call after call of a few
milliseconds is never held by one call for a third of its ttl.
"""

from __future__ import annotations

from collections import Counter

from actors.leases import Lease
from actors.lending import Recall

# How long a lent slot stays idle here before it goes back to the manager.
LINGER_SECONDS = 0.5


class LentSlots:
    def __init__(self, linger: float = LINGER_SECONDS) -> None:
        self._linger = linger
        # By group: the idle slots, each with when it was kept, newest last.
        self._idle: dict[str, list[tuple[Lease, float]]] = {}
        # Every lent slot held here, idle or in a call, by lease id.
        self._held: dict[str, Lease] = {}
        # By group: the newest recall heard, as (epoch, count).
        self._recalled: dict[str, tuple[int, int]] = {}
        # Lent slots whose renewal found them no longer held: never kept again.
        self._lost: set[str] = set()
        # By group, not yet told to the manager: calls started in a kept slot, calls that
        # kept their slot when they ended, and how long those held it in all.
        self._started: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()
        self._seconds: dict[str, float] = {}

    def take(self, group: str) -> Lease | None:
        """An idle slot of ``group`` for a call of this process, if one is kept."""
        idle = self._idle.get(group)
        if not idle:
            return None
        self._started[group] += 1
        return idle.pop()[0]

    def keep(self, lease: Lease, now: float, held: float) -> bool:
        """Keep ``lease`` idle for the next call if it is lent and not called back since
        it was granted; else it goes back (the caller gives it). ``held``: how long the
        call that ends held it."""
        recalled = self._recalled.get(lease.group, (0, 0))
        lost = lease.id in self._lost
        if lost or lease.lent is None or (lease.epoch, lease.lent) < recalled:
            self._lost.discard(lease.id)
            self._held.pop(lease.id, None)
            return False
        self._idle.setdefault(lease.group, []).append((lease, now))
        self._held[lease.id] = lease
        self._ended[lease.group] += 1
        self._seconds[lease.group] = self._seconds.get(lease.group, 0.0) + held
        return True

    def recall(self, recall: Recall) -> list[Lease]:
        """The manager calls the group's lent slots back: the idle ones, to give back."""
        newest = max(self._recalled.get(recall.group, (0, 0)), (recall.epoch, recall.count))
        self._recalled[recall.group] = newest
        return self.drop(recall.group)

    def drop(self, group: str) -> list[Lease]:
        """The idle slots of ``group``, to give back (called back, or its server is down
        or throttled)."""
        return self._gone([lease for lease, _ in self._idle.pop(group, [])])

    def lingered(self, now: float) -> list[Lease]:
        """The slots idle for ``LINGER_SECONDS`` or more, to give back."""
        gone: list[Lease] = []
        for group, idle in self._idle.items():
            fresh = [(lease, kept) for lease, kept in idle if now - kept < self._linger]
            gone.extend(lease for lease, kept in idle if now - kept >= self._linger)
            self._idle[group] = fresh
        return self._gone(gone)

    def held(self) -> list[Lease]:
        """Every lent slot held here, idle or in a call: renewed together."""
        return list(self._held.values())

    def lost(self, lease: Lease) -> None:
        """``lease`` is no longer held at the manager (its renewal said so)."""
        self._held.pop(lease.id, None)
        idle = self._idle.get(lease.group, [])
        kept = [(held, at) for held, at in idle if held.id != lease.id]
        if len(kept) == len(idle):
            self._lost.add(lease.id)  # in a call now: not kept after it
        self._idle[lease.group] = kept

    def groups(self) -> list[str]:
        """The groups with idle slots kept."""
        return [group for group, idle in self._idle.items() if idle]

    def take_reused(self) -> dict[str, tuple[int, int, float]]:
        """By group, since the last call: calls started in a kept slot, calls that kept
        their slot, and the seconds those held it."""
        groups = self._started.keys() | self._ended.keys()
        reused = {g: (self._started[g], self._ended[g], self._seconds.get(g, 0.0)) for g in groups}
        self._started, self._ended, self._seconds = Counter(), Counter(), {}
        return reused

    def _gone(self, leases: list[Lease]) -> list[Lease]:
        for lease in leases:
            self._held.pop(lease.id, None)
        return leases
