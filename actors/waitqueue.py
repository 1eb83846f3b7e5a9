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
from actors.leases import TokensUsed

MIN_PRIORITY = 1
MAX_PRIORITY = 10
DEFAULT_PRIORITY = 5

GrantKey = tuple[int, int, int, int]
# How many units of work keep their number after their last call.
UNIT_MEMORY = 65_536
# Past this many flows known to a group, idle flows with no service owed are forgotten.
FLOW_MEMORY = 1_024
# Weight of the newest call in a group's averages of a call's cost and of its tokens a second.
COST_SMOOTHING = 0.2


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
    """One flow's waiters in a group, and the weighted service it has received there."""

    __slots__ = ("cost", "heap", "live", "service", "weight")

    def __init__(self) -> None:
        self.heap: list[tuple[GrantKey, str]] = []
        self.live = 0
        self.service = 0.0
        self.weight = 1.0
        # The average cost of the flow's calls; None until one ended.
        self.cost: float | None = None

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

    Strict priority first. Within one priority, with ``fair`` (the default,
    setting ``queue.fairness``), the backlogged *flow* (a tenant, or by default
    a job) that has received the least weighted service in this group goes
    next: the Virtual Token Counter of "Fairness in Serving Large Language
    Models" (Sheng et al., OSDI 2024). Each grant charges its flow the call's
    cost divided by the flow's weight (:meth:`charge`; the engine charges an
    estimate at the grant, the average cost of the flow's calls, or of the
    group's until one of the flow's ended, and the rest when the call ends,
    :meth:`settle`: with several calls in flight, a flow of short calls
    charged the group's average would be held back, one of long calls let
    ahead). A call's cost is VTC's: its tokens
    weighted as prompt + 2 x completion, where its answer reported them; where
    not (a stream without usage), its seconds in the slot at the group's rate
    of weighted tokens a second, learned from its calls that reported usage. A
    group none of whose calls has reported usage shares call-seconds; once one
    has, counters move in tokens, so the seconds charged before weigh next to
    nothing, alike for every flow. And a flow
    that starts waiting after it had nothing queued is lifted to the least
    service among the flows waiting (or, with none waiting, to that of the last
    grant), so idling banks no credit. Within a flow, :func:`grant_key`'s
    order. Work-conserving: whenever the group has room and anyone waits,
    somebody is granted. Without ``fair`` every waiter is of one flow: the
    order is :func:`grant_key`'s alone.

    Per flow a heap of ``(key, lease_id)``; arrival numbers are unique, so
    lease ids are never compared. Removal (cancel, timeout) only forgets the
    waiter in ``_live``; its heap entry is dropped when it reaches the top, so
    removal stays O(1); a grant costs O(log n) plus one look at each backlogged
    flow (idle flows are not looked at).
    """

    def __init__(self, *, fair: bool = True) -> None:
        self.fair = fair
        self._flows: dict[str, _Flow] = {}
        # The flows with a live waiter: the only ones a grant or a lift looks at.
        self._waiting: dict[str, _Flow] = {}
        self._live: dict[str, tuple[GrantKey, str]] = {}
        # The service of the flow granted last: where a flow that comes back starts.
        self._floor = 0.0
        # The average cost of the group's calls, 0 until one has ended: what a grant to a
        # flow none of whose calls has ended is charged before its call ends.
        self.estimate = 0.0
        # Weighted tokens a second held, from the calls that reported usage.
        self._per_second: float | None = None

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._live

    def push(self, lease_id: str, key: GrantKey, flow: str = "", weight: float = 1.0) -> None:
        flow = flow if self.fair else ""
        state = self._flows.get(flow)
        if state is None:
            state = self._flows[flow] = _Flow()
        if state.live == 0:
            waiting = [f.service for f in self._waiting.values()]
            state.service = max(state.service, min(waiting, default=self._floor))
            self._waiting[flow] = state
        state.weight = weight
        state.live += 1
        self._live[lease_id] = (key, flow)
        heapq.heappush(state.heap, (key, lease_id))

    def charge(self, flow: str, cost: float, weight: float = 1.0) -> None:
        """Count ``cost`` (negative: a correction) as service received by ``flow``; a flow
        first seen here (granted without waiting) starts where a returning one would."""
        flow = flow if self.fair else ""
        state = self._flows.get(flow)
        if state is None:
            self._forget_idle()
            state = self._flows[flow] = _Flow()
            state.service, state.weight = self._floor, weight
        state.service += cost / state.weight

    def settle(self, flow: str, charged: float, held: float, used: TokensUsed | None) -> float:
        """A call of ``flow``, charged ``charged`` at its grant, ended after holding its
        slot ``held`` seconds, having used ``used`` if its answer said: the flow is
        charged the rest of the call's cost (see the class), which the group's
        estimate then averages in. Returns the cost."""
        if used is not None and used.cost > 0:
            cost = float(used.cost)
            if held > 0:
                self._per_second = _averaged(self._per_second, cost / held)
        else:
            cost = held * (self._per_second if self._per_second is not None else 1.0)
        flow = flow if self.fair else ""
        self.charge(flow, cost - charged)
        state = self._flows[flow]
        state.cost = _averaged(state.cost, cost)
        self.estimate = _averaged(self.estimate or None, cost)
        return cost

    def estimate_for(self, flow: str) -> float:
        """What a grant to ``flow`` is charged before its call ends: the average cost of the
        flow's calls, or of the group's while the flow has had none."""
        state = self._flows.get(flow if self.fair else "")
        return self.estimate if state is None or state.cost is None else state.cost

    def peek(self) -> tuple[GrantKey, str] | None:
        best: tuple[int, float, GrantKey, str] | None = None
        for state in self._waiting.values():
            head = state.head(self._live)
            assert head is not None
            candidate = (head[0][0], state.service, *head)
            if best is None or candidate < best:
                best = candidate
        return None if best is None else (best[2], best[3])

    def pop(self) -> str:
        top = self.peek()
        if top is None:
            raise IndexError("pop from an empty WaitQueue")
        _, flow = self._live.pop(top[1])
        state = self._flows[flow]
        heapq.heappop(state.heap)
        self._left(flow, state)
        self._floor = max(self._floor, state.service)
        return top[1]

    def remove(self, lease_id: str) -> bool:
        entry = self._live.pop(lease_id, None)
        if entry is None:
            return False
        self._left(entry[1], self._flows[entry[1]])
        return True

    def _left(self, flow: str, state: _Flow) -> None:
        """One waiter of ``flow`` left its queue (granted or removed)."""
        state.live -= 1
        if not state.live:
            del self._waiting[flow]

    def ahead_of_key(self, key: GrantKey) -> int:
        """How many waiters would go before a new one with ``key`` (O(n); by key alone, as
        in one flow)."""
        return sum(1 for other, _ in self._live.values() if other < key)

    def lease_ids(self) -> list[str]:
        """The waiters' lease ids, in no particular order."""
        return list(self._live)

    def waiting_by_flow(self) -> dict[str, int]:
        """How many waiters each flow with a waiter has."""
        return {flow: state.live for flow, state in self._waiting.items()}

    def first(self, count: int) -> list[str]:
        """The ``count`` waiters granted first, in grant order, each grant charged the
        current estimate (O(n + count * flows))."""
        if len(self._waiting) <= 1:
            best = heapq.nsmallest(count, self._live.items(), key=lambda item: item[1][0])
            return [lease_id for lease_id, _ in best]
        return self._order(count)

    def ahead_of(self, lease_id: str) -> int:
        """How many waiters will be granted before this one (O(n log n); for status
        queries), if every grant costs the current estimate."""
        key = self._live[lease_id][0]
        if len(self._waiting) <= 1:
            return sum(1 for other, _ in self._live.values() if other < key)
        return self._order(len(self._live)).index(lease_id)

    def _order(self, count: int) -> list[str]:
        """The grant order of the first ``count`` waiters, simulated."""
        queues: dict[str, list[tuple[GrantKey, str]]] = {}
        for lease_id, (key, flow) in self._live.items():
            queues.setdefault(flow, []).append((key, lease_id))
        for waiting in queues.values():
            waiting.sort(reverse=True)  # best last: popped from the end
        service = {flow: self._flows[flow].service for flow in queues}
        order: list[str] = []
        while queues and len(order) < count:
            flow = min(queues, key=lambda f: (queues[f][-1][0][0], service[f], queues[f][-1][0]))
            _, lease_id = queues[flow].pop()
            order.append(lease_id)
            service[flow] += self.estimate_for(flow) / self._flows[flow].weight
            if not queues[flow]:
                del queues[flow]
        return order

    def _forget_idle(self) -> None:
        """Drop flows with nothing queued whose service a return would lift them to
        anyway, so that a group's memory stays as large as its backlog."""
        if len(self._flows) > FLOW_MEMORY:
            idle = [f for f, s in self._flows.items() if not s.live and s.service <= self._floor]
            for flow in idle:
                del self._flows[flow]


def _averaged(average: float | None, value: float) -> float:
    return value if average is None else (1 - COST_SMOOTHING) * average + COST_SMOOTHING * value
