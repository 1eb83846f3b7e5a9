"""Fair share within a priority: one ledger per group of each flow's weighted service.

A *flow* is who a call is for: a tenant, or by default the Ray job that asked.
The ledger keeps, for one group, what each flow has received there: the
Virtual Token Counter of "Fairness in Serving Large Language Models" (Sheng et
al., OSDI 2024). The next grant at a priority goes to the backlogged flow with
the least weighted service (:meth:`FairShare.rank`, the one key that the grant,
the queue view and the wait estimate all order by).

A call's service is counted twice. At its grant, an estimate (:meth:`granted`): the
average cost of its flow's calls, or of the group's until one of the flow's
ended; with several calls in flight, a flow of short calls counted at the
group's average would be held back, one of long calls let ahead. When it
ends, the rest of its true cost (:meth:`ended`). A call's cost is VTC's: its
tokens weighted as prompt + 2 x completion, where its answer reported them;
where not (a stream without usage), its seconds in the slot at the group's
rate of weighted tokens a second, learned from its calls that reported usage.
A group none of whose calls has reported usage shares call-seconds; once one
has, counters move in tokens, so the seconds counted before weigh next to
nothing, alike for every flow. Service counted is divided by the flow's weight
(budgets charge tokens: :mod:`actors.budget`; this counts service).

A flow that starts waiting after it had nothing queued is lifted to the least
service among the flows waiting (or, with none waiting, to that of the last
grant: the *floor*), so idling banks no credit. Without ``fair`` every call is
of one flow. Memory is bounded once: past FLOW_MEMORY flows, those with
nothing waiting or running and no service above the floor (whom a return
would lift to the floor anyway) are forgotten, with what they were served.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.leases import TokensUsed
from actors.stats import FlowStats

# Past this many flows known to a group, idle flows with no service owed are forgotten.
FLOW_MEMORY = 1_024
# Weight of the newest call in a group's averages of a call's cost and of its tokens a second.
COST_SMOOTHING = 0.2


@dataclass(slots=True)
class _Account:
    """One flow in one group."""

    service: float = 0.0
    weight: float = 1.0
    # The average cost of the flow's calls; None until one ended.
    cost: float | None = None
    waiting: int = 0
    running: int = 0
    # What its ended calls had: seconds in a slot, and the cost counted for them.
    served_seconds: float = 0.0
    served: float = 0.0

    def idle(self, floor: float) -> bool:
        return not self.waiting and not self.running and self.service <= floor


class FairShare:
    def __init__(self, *, fair: bool = True) -> None:
        self.fair = fair
        self._accounts: dict[str, _Account] = {}
        # The lease of each call in flight: its flow and what was counted at its grant.
        self._counted: dict[str, tuple[str, float]] = {}
        # The service of the flow granted last: where a flow that comes back starts.
        self._floor = 0.0
        # The average cost of the group's calls, 0 until one has ended.
        self._estimate = 0.0
        # Weighted tokens a second held, from the calls that reported usage.
        self._per_second: float | None = None

    def flow(self, flow: str) -> str:
        """The flow a call of ``flow`` counts under ("" for all without ``fair``)."""
        return flow if self.fair else ""

    def rank(self, flow: str) -> float:
        """Where ``flow`` stands among the backlogged flows of a priority: smaller first."""
        account = self._accounts.get(self.flow(flow))
        return self._floor if account is None else account.service

    def estimate(self, flow: str) -> float:
        """What a grant to ``flow`` counts before its call ends: the average cost of the
        flow's calls, or of the group's while the flow has had none."""
        account = self._accounts.get(self.flow(flow))
        return self._estimate if account is None or account.cost is None else account.cost

    def weight(self, flow: str) -> float:
        account = self._accounts.get(self.flow(flow))
        return 1.0 if account is None else account.weight

    # -- the moves of a flow's calls ------------------------------------------------

    def standing(self, flow: str) -> float:
        """Where ``flow`` stands once a call of it waits: its service, lifted to the least
        among the flows waiting (or the floor) if it had nothing queued."""
        account = self._accounts.get(self.flow(flow))
        if account is not None and account.waiting:
            return account.service
        waiting = [a.service for a in self._accounts.values() if a.waiting]
        start = 0.0 if account is None else account.service
        return max(start, min(waiting, default=self._floor))

    def waits(self, flow: str, weight: float) -> None:
        """A call of ``flow`` joined the queue (see :meth:`standing`)."""
        standing = self.standing(flow)
        account = self._account(flow, start=standing)
        account.service = standing
        account.weight = weight
        account.waiting += 1

    def left(self, flow: str, *, granted: bool) -> None:
        """A waiting call of ``flow`` left the queue: ``granted``, which makes the flow's
        service the floor if it is above it, or gone (cancelled, timed out)."""
        account = self._accounts[self.flow(flow)]
        account.waiting -= 1
        if granted:
            self._floor = max(self._floor, account.service)

    def granted(self, lease_id: str, flow: str, weight: float) -> None:
        """The call holding ``lease_id`` starts: its flow's service counts the estimate now (a
        flow first seen here, granted without waiting, starts at the floor, as a
        returning one would)."""
        account = self._account(flow, start=self._floor, weight=weight)
        counted = self.estimate(flow)
        account.service += counted / account.weight
        account.running += 1
        self._counted[lease_id] = (flow, counted)

    def ended(
        self, lease_id: str, held: float, used: TokensUsed | None
    ) -> tuple[str, float] | None:
        """The call holding ``lease_id`` ended after ``held`` seconds in its slot, having used
        ``used`` if its answer said: its flow's service counts the rest of the call's cost,
        which the averages then take in. Its flow (as the call named it) and cost; None
        if it was never counted here (a lease restored after a restart)."""
        found = self._counted.pop(lease_id, None)
        if found is None:
            return None
        flow, counted = found
        if used is not None and used.cost > 0:
            cost = float(used.cost)
            if held > 0:
                self._per_second = _averaged(self._per_second, cost / held)
        else:
            cost = held * (self._per_second if self._per_second is not None else 1.0)
        account = self._account(flow, start=self._floor)
        account.service += (cost - counted) / account.weight
        account.running -= 1
        account.cost = _averaged(account.cost, cost)
        account.served_seconds += held
        account.served += cost
        self._estimate = _averaged(self._estimate or None, cost)
        return flow, cost

    def refund(self, lease_id: str) -> None:
        """A lent slot goes back (see actors.lending): its grant's estimate comes off, its
        calls having been counted as they ended (:meth:`reused`)."""
        found = self._counted.pop(lease_id, None)
        if found is not None:
            flow, counted = found
            account = self._account(flow, start=self._floor)
            account.service -= counted / account.weight
            account.running -= 1

    def reused(self, flow: str, calls: int, seconds: float, cost: float, costed: float) -> float:
        """``calls`` calls of ``flow`` ended in slots lent to their process, held ``seconds``
        in all: those that said what they used cost ``cost`` in ``costed`` of those seconds,
        the others their time at the group's cost per second. Their cost in all."""
        rate = self._per_second if self._per_second is not None else 1.0
        total = cost + (seconds - costed) * rate
        if costed > 0 and cost > 0:
            self._per_second = _averaged(self._per_second, cost / costed)
        account = self._account(flow, start=self._floor)
        account.service += total / account.weight
        account.cost = _averaged(account.cost, total / calls)
        account.served_seconds += seconds
        account.served += total
        self._estimate = _averaged(self._estimate or None, total / calls)
        return total

    # -- reading it ----------------------------------------------------------------

    def stats(self) -> dict[str, FlowStats]:
        """By flow known here: its waiting and running calls, what it was served and its
        share of all that was served."""
        total = sum(a.served for a in self._accounts.values())
        return {
            flow: FlowStats(
                waiting=a.waiting,
                running=a.running,
                served_seconds=a.served_seconds,
                service=a.served,
                share=a.served / total if total else 0.0,
            )
            for flow, a in sorted(self._accounts.items())
            if a.waiting or a.running or a.served_seconds or a.served
        }

    def _account(self, flow: str, *, start: float, weight: float = 1.0) -> _Account:
        """The account of ``flow``, opened at ``start`` with ``weight`` if it has none."""
        flow = self.flow(flow)
        account = self._accounts.get(flow)
        if account is None:
            if len(self._accounts) >= FLOW_MEMORY:
                self._forget_idle()
            account = self._accounts[flow] = _Account(service=start, weight=weight)
        return account

    def _forget_idle(self) -> None:
        for flow in [f for f, a in self._accounts.items() if a.idle(self._floor)]:
            del self._accounts[flow]


def _averaged(average: float | None, value: float) -> float:
    return value if average is None else (1 - COST_SMOOTHING) * average + COST_SMOOTHING * value
