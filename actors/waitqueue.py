"""Grant order: the one place that says who goes next.

Higher priority first. Within a priority, the *flow* (tenant, or by default
the Ray job that asked) that has had the least weighted service in the group
goes next (:class:`WaitQueue`; ``queue.fairness: fifo`` makes every call one
flow). Within a flow, first come first served by *unit* of work: calls
that name the same unit (one service of a pipeline run) share the unit's
number, drawn when its first call arrived, so work that has
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

from actors.bounded import Bounded
from actors.errors import InvalidPriority
from actors.fairshare import FairShare

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
        self._units: Bounded[str, int] = Bounded(UNIT_MEMORY)
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
        number = self._units.get(unit)
        if number is None:
            number = self._units[unit] = drawn if drawn is not None else next(self._unit_numbers)
        return number


class _Flow:
    """One flow's waiters in a group: a heap of ``(key, lease_id)``, stale entries inside."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[GrantKey, str]] = []
        self.live = 0

    def head(self, live: dict[str, tuple[GrantKey, str]]) -> tuple[GrantKey, str] | None:
        """The flow's best live waiter; stale heap entries are dropped on the way."""
        while self.heap:
            key, lease_id = self.heap[0]
            if live.get(lease_id, (None,))[0] == key:
                return key, lease_id
            heapq.heappop(self.heap)
        return None


class WaitQueue:
    """The waiters of one group, in grant order.

    Strict priority first. Within one priority, the backlogged *flow* with the
    least weighted service in this group goes next, as its :class:`FairShare`
    ledger counts it (``queue.fairness: fifo`` makes every call one flow).
    Within a flow, :func:`grant_key`'s order. :meth:`_rank` is the one key
    these are compared by: the grant (:meth:`peek`), the queue view
    (:meth:`first`) and the wait a new call would have (:meth:`ahead_of_new`).
    Work-conserving: whenever the group has room and anyone waits, somebody is
    granted.

    Per flow a heap of ``(key, lease_id)``; arrival numbers are unique, so
    lease ids are never compared. Removal (cancel, timeout) only forgets the
    waiter in ``_live``; its heap entry is dropped when it reaches the top, so
    removal stays O(1); a grant costs O(log n) plus one look at each backlogged
    flow (idle flows are not looked at).
    """

    def __init__(self, *, fair: bool = True) -> None:
        self.share = FairShare(fair=fair)
        self._flows: dict[str, _Flow] = {}
        self._live: dict[str, tuple[GrantKey, str]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._live

    def push(self, lease_id: str, key: GrantKey, flow: str = "", weight: float = 1.0) -> None:
        self.share.waits(flow, weight)
        flow = self.share.flow(flow)
        state = self._flows.get(flow)
        if state is None:
            state = self._flows[flow] = _Flow()
        state.live += 1
        self._live[lease_id] = (key, flow)
        heapq.heappush(state.heap, (key, lease_id))

    def _rank(self, flow: str, key: GrantKey) -> tuple[int, float, GrantKey]:
        """Smaller goes first: priority, then the flow's service, then the key."""
        return key[0], self.share.rank(flow), key

    def peek(self) -> tuple[GrantKey, str] | None:
        best: tuple[tuple[int, float, GrantKey], str] | None = None
        for flow, state in self._flows.items():
            head = state.head(self._live)
            assert head is not None
            rank = self._rank(flow, head[0])
            if best is None or rank < best[0]:
                best = (rank, head[1])
        return None if best is None else (best[0][2], best[1])

    def pop(self) -> str:
        top = self.peek()
        if top is None:
            raise IndexError("pop from an empty WaitQueue")
        _, flow = self._live.pop(top[1])
        heapq.heappop(self._flows[flow].heap)
        self._left(flow, granted=True)
        return top[1]

    def remove(self, lease_id: str) -> bool:
        entry = self._live.pop(lease_id, None)
        if entry is None:
            return False
        self._left(entry[1], granted=False)
        return True

    def _left(self, flow: str, *, granted: bool) -> None:
        """One waiter of ``flow`` left its queue (granted or removed)."""
        self.share.left(flow, granted=granted)
        state = self._flows[flow]
        state.live -= 1
        if not state.live:
            del self._flows[flow]

    def lease_ids(self) -> list[str]:
        """The waiters' lease ids, in no particular order."""
        return list(self._live)

    def first(self, count: int) -> list[str]:
        """The ``count`` waiters granted first, in grant order, each grant counting its
        flow's estimate (O(n + count * flows))."""
        if len(self._flows) <= 1:
            best = heapq.nsmallest(count, self._live.items(), key=lambda item: item[1][0])
            return [lease_id for lease_id, _ in best]
        return self._order(count)

    def ahead_of(self, lease_id: str) -> int:
        """How many waiters will be granted before this one (O(n log n); for status
        queries), if every grant costs its flow's estimate."""
        key = self._live[lease_id][0]
        if len(self._flows) <= 1:
            return sum(1 for other, _ in self._live.values() if other < key)
        return self._order(len(self._live)).index(lease_id)

    def ahead_of_new(self, key: GrantKey, flow: str) -> int:
        """How many waiters would be granted before a new one of ``flow`` with ``key``, in
        the order grants follow (a flow not waiting yet lifted as :meth:`push` would)."""
        if not self._live:
            return 0
        return self._order(len(self._live) + 1, new=(key, self.share.flow(flow))).index("")

    def _order(self, count: int, new: tuple[GrantKey, str] | None = None) -> list[str]:
        """The grant order of the first ``count`` waiters, simulated: with a ``new`` one,
        known by the lease id "", among them."""
        queues: dict[str, list[tuple[GrantKey, str]]] = {}
        for lease_id, (key, flow) in self._live.items():
            queues.setdefault(flow, []).append((key, lease_id))
        service = {flow: self.share.rank(flow) for flow in queues}
        if new is not None:
            key, flow = new
            service.setdefault(flow, self.share.standing(flow))
            queues.setdefault(flow, []).append((key, ""))
        for waiting in queues.values():
            waiting.sort(reverse=True)  # best last: popped from the end
        order: list[str] = []
        while queues and len(order) < count:
            flow = min(queues, key=lambda f: (queues[f][-1][0][0], service[f], queues[f][-1][0]))
            _, lease_id = queues[flow].pop()
            order.append(lease_id)
            service[flow] += self.share.estimate(flow) / self.share.weight(flow)
            if not queues[flow]:
                del queues[flow]
        return order
