"""VTC's workloads through the manager's grant order: how far backlogged flows drift apart.

    python -m benchmarks.vtc [--seconds 600]

The Virtual Token Counter's guarantee ("Fairness in Serving Large Language
Models", OSDI 2024): between two flows backlogged the whole time, the
difference in service received, each divided by its weight, stays within
about twice the largest request's cost. Each workload below runs on the
manager's engine (:class:`actors.engine.SlotEngine`, the code that orders
every grant) on a simulated clock: each flow keeps ``DEPTH`` calls waiting
from start to end (backlogged), a call holds its slot for its flow's call
time, and service is call-seconds (what the engine charges where usage is
unknown), counted as it accrues. Printed per workload, for ``fifo`` and
``fair``: the largest difference in weighted service between two flows at
any moment, in units of the largest call's weighted cost, over the first
half of the run and over all of it (what grows with time is unbounded).
No Ray, no timing: the figures are the same on every machine.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
from dataclasses import dataclass

from actors.engine import SlotEngine
from actors.groups import classify
from actors.leases import Lease
from actors.options import CallOptions

GROUP = classify("openai-compatible", "http://gpu-box:8000")
DEPTH = 8


@dataclass(frozen=True)
class Flow:
    name: str
    call_seconds: float
    weight: float = 1.0


@dataclass(frozen=True)
class Workload:
    title: str
    limit: int
    flows: tuple[Flow, ...]


WORKLOADS = (
    Workload("2 flows, calls of 1 s and 0.25 s, weights 1:1, 1 slot", 1,
             (Flow("a", 1.0), Flow("b", 0.25))),
    Workload("2 flows, equal calls of 0.5 s, weights 2:1, 1 slot", 1,
             (Flow("a", 0.5, 2.0), Flow("b", 0.5))),
    Workload("4 flows, calls of 0.1/0.2/0.4/0.8 s, weights 1:1:1:1, 2 slots", 2,
             (Flow("a", 0.1), Flow("b", 0.2), Flow("c", 0.4), Flow("d", 0.8))),
    Workload("4 flows, calls of 0.8/0.4/0.2/0.1 s, weights 4:2:1:1, 1 slot", 1,
             (Flow("a", 0.8, 4.0), Flow("b", 0.4, 2.0), Flow("c", 0.2), Flow("d", 0.1))),
    Workload("4 flows, calls of 0.8/0.4/0.2/0.1 s, weights 4:2:1:1, 4 slots", 4,
             (Flow("a", 0.8, 4.0), Flow("b", 0.4, 2.0), Flow("c", 0.2), Flow("d", 0.1))),
)  # fmt: skip


@dataclass(frozen=True)
class Drift:
    largest: float  # weighted call-seconds, at any moment
    # The largest once every flow had a call end: its calls' cost known to the engine.
    known: float
    final: float


def simulate(workload: Workload, *, fair: bool, seconds: float) -> Drift:
    now = 0.0
    engine = SlotEngine(
        epoch=1, clock=lambda: now, group_limits={GROUP.id: workload.limit}, fair=fair
    )
    engine.register(GROUP)
    flows = {flow.name: flow for flow in workload.flows}
    ids = itertools.count()
    flow_of: dict[str, Flow] = {}
    served = dict.fromkeys(flows, 0.0)  # call-seconds of calls ended
    running: dict[str, float] = {}  # lease id -> when its call started
    ends: list[tuple[float, int, Lease]] = []

    def ask(flow: Flow) -> None:
        lease_id = f"{flow.name}-{next(ids)}"
        flow_of[lease_id] = flow
        options = CallOptions(request_id=lease_id, flow=flow.name, weight=flow.weight)
        start([lease] if (lease := engine.acquire(GROUP.id, lease_id, options)) else [])

    def start(granted: list[Lease]) -> None:
        for lease in granted:
            running[lease.id] = now
            end = now + flow_of[lease.id].call_seconds
            heapq.heappush(ends, (end, next(ids), lease))

    def drift() -> float:
        weighted = [
            (served[name] + sum(now - at for i, at in running.items() if flow_of[i] is flow))
            / flow.weight
            for name, flow in flows.items()
        ]
        return max(weighted) - min(weighted)

    for _ in range(DEPTH):
        for flow in workload.flows:
            ask(flow)
    largest = known = 0.0
    while ends and ends[0][0] <= seconds:
        now, _, lease = heapq.heappop(ends)
        largest = max(largest, drift())
        if all(served.values()):
            known = max(known, drift())
        flow = flow_of[lease.id]
        served[flow.name] += now - running.pop(lease.id)
        ask(flow)  # the flow stays backlogged
        start(engine.release(lease.id, lease.epoch))
    return Drift(largest, known, drift())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vtc")
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds")
    args = parser.parse_args()
    half = args.seconds / 2
    print(f"every flow backlogged ({DEPTH} calls waiting); the largest difference in weighted")
    print("service between two flows, in units of the largest weighted call, over the first")
    print(f"{half:g} and over all {args.seconds:g} simulated seconds, and over all of them")
    print("once every flow had a call end (its cost known):")
    for workload in WORKLOADS:
        cost = max(flow.call_seconds / flow.weight for flow in workload.flows)
        cells = []
        for fair in (False, True):
            early = simulate(workload, fair=fair, seconds=half)
            late = simulate(workload, fair=fair, seconds=args.seconds)
            figures = (early.largest / cost, late.largest / cost, late.known / cost)
            cells.append(f"{'fair' if fair else 'fifo'} " + " ".join(f"{f:7.2f}" for f in figures))
        print(f"  {workload.title:<66} {'   '.join(cells)}")


if __name__ == "__main__":
    main()
