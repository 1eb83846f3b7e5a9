"""Grant order: the one place that says who goes next.

Higher priority first. Within a priority, first come first served by *unit*
of work: calls that name the same unit (one service of a pipeline run) share
the unit's number, drawn when its first call arrived, so work that has
started finishes before later work starts, while later units still fill any
slot the started ones leave free. A call that names no unit is a unit of
its own, so a caller that uses neither units nor ``critical`` gets plain
priority-then-FIFO order.

A call marked *critical* (on its unit's critical path, e.g. the next
plateau's features, which the rest of the unit waits for) goes before the
other calls of its unit, and before the non-critical calls of the
``width - 1`` units numbered just before its own, where ``width`` is how
many calls the group runs at once. Those units could all run beside it, so
it need not wait for their side work: with one slot, units finish strictly
one by one; with 8 slots, 8 units' chains of critical calls keep moving
instead of waiting for the side work of the units ahead, which would leave
the last units' chains to run alone at the end.

Then arrival, a number the engine draws from one counter for all groups, so
under a global cap the same key also orders waiters across groups.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict

from actors.errors import InvalidPriority

MIN_PRIORITY = 1
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 5

GrantKey = tuple[int, int, int, int]
# How many units of work keep their number after their last call.
UNIT_MEMORY = 65_536


def check_priority(priority: object) -> None:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidPriority(priority, MIN_PRIORITY, MAX_PRIORITY)


def grant_key(
    priority: int, arrival: int, *, unit: int, critical: bool = False, width: int = 1
) -> GrantKey:
    """Smaller keys are granted first. ``unit``: the unit's number, in order of first arrival."""
    place = unit - (width - 1) if critical else unit
    return (-priority, place, 0 if critical else 1, arrival)


def width(limit: int | None, global_limit: int | None) -> int:
    """How many calls of a group can run at once (1 if nothing limits it)."""
    return min((w for w in (limit, global_limit) if w is not None), default=1)


class Arrivals:
    """Numbers arrivals and units of work for :func:`grant_key`, across all groups.

    ``restarted_at``: the wall-clock time of a manager restart this engine took
    over from; a call asked before it (an acquire Ray retried) is numbered by
    the (negative) microseconds between its ask and the restart, so that the
    waiters a restart interrupted go first, in the order they asked.
    """

    def __init__(self, restarted_at: float | None = None) -> None:
        self.restarted_at = restarted_at
        self._arrivals = itertools.count()
        # unit -> its number, least recently used first. Kept past the unit's last
        # waiter: a unit often has a gap between one call and its next.
        self._units: OrderedDict[str, int] = OrderedDict()
        self._unit_numbers = itertools.count()

    def arrival(self, asked_at: float | None) -> int:
        if asked_at is not None and self.restarted_at is not None:
            before = round((asked_at - self.restarted_at) * 1e6)
            if before < 0:
                return before
        return next(self._arrivals)

    def unit(self, unit: str | None, arrival: int) -> int:
        """A unit's number: drawn at its first call; for a call asked before a
        restart, its arrival."""
        drawn = arrival if arrival < 0 else None
        if unit is None:
            return drawn if drawn is not None else next(self._unit_numbers)
        if unit not in self._units:
            self._units[unit] = drawn if drawn is not None else next(self._unit_numbers)
            if len(self._units) > UNIT_MEMORY:
                self._units.popitem(last=False)
        self._units.move_to_end(unit)
        return self._units[unit]


class WaitQueue:
    """The waiters of one group, in grant order.

    A heap of ``(key, lease_id)``; arrival numbers are unique, so lease ids are
    never compared. Removal (cancel, timeout) only forgets the waiter in
    ``_live``; its heap entry is dropped when it reaches the top, so removal
    stays O(1) and grants O(log n).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[GrantKey, str]] = []
        self._live: dict[str, GrantKey] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._live

    def push(self, lease_id: str, key: GrantKey) -> None:
        self._live[lease_id] = key
        heapq.heappush(self._heap, (key, lease_id))

    def peek(self) -> tuple[GrantKey, str] | None:
        while self._heap:
            key, lease_id = self._heap[0]
            if self._live.get(lease_id) == key:
                return key, lease_id
            heapq.heappop(self._heap)
        return None

    def pop(self) -> str:
        top = self.peek()
        if top is None:
            raise IndexError("pop from an empty WaitQueue")
        heapq.heappop(self._heap)
        del self._live[top[1]]
        return top[1]

    def remove(self, lease_id: str) -> bool:
        return self._live.pop(lease_id, None) is not None

    def first(self, count: int) -> list[str]:
        """The ``count`` waiters granted first, in grant order (O(n log count))."""
        best = heapq.nsmallest(count, self._live.items(), key=lambda item: item[1])
        return [lease_id for lease_id, _ in best]

    def ahead_of(self, lease_id: str) -> int:
        """How many waiters will be granted before this one (O(n); for status queries)."""
        key = self._live[lease_id]
        return sum(1 for other in self._live.values() if other < key)
