"""Fair share within a priority against first come first served, side by side in one run.

    python -m benchmarks.fairness [--rounds 2] [--pairs 1000]

The noisy neighbour of the issue "Tenants and fair share": on a cap-1 group
whose calls hold their slot 20 ms, flow A queues 100 calls at priority 5 and
flow B, 0.2 s later, sends 10 calls at the same priority, one every 50 ms.
Each round runs it on a manager with ``queue.fairness: fifo`` and on one with
``fair`` (the default), both on one embedded Ray, alternating which goes first. Printed: B's
queue wait p50/p95 (in call times too), where B's last call landed among the
110 grants, A's median wait, and the makespan, with fair / fifo ratios.

Then the grant path's cost: the gated pair (acquire + release of a capped
group, nobody waits) at 1 and 64 callers, each caller its own flow, on each
manager.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass

# Ray reads this when it is imported: keep the embedded instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from actors.client import ManagerClient
from actors.groups import classify
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from benchmarks import on_embedded_ray

CAP_ONE = classify("openai-compatible", "http://gpu-box:8000")
WIDE = classify("openai-compatible", "http://gpu-box:8001")
CALL_SECONDS = 0.02
MODES = ("fifo", "fair")


@dataclass
class Noisy:
    b_waits: list[float]
    a_waits: list[float]
    b_last: int  # 1-based place of B's last grant among all grants
    makespan: float


async def noisy_neighbour(client: ManagerClient) -> Noisy:
    order: list[str] = []
    waits: dict[str, float] = {}

    async def call(name: str, flow: str) -> None:
        asked = time.monotonic()
        options = CallOptions(priority=5, flow=flow, request_id=f"{name}-{uuid.uuid4().hex}")
        async with client.slot(CAP_ONE.id, options):
            waits[name] = time.monotonic() - asked
            order.append(name)
            await asyncio.sleep(CALL_SECONDS)

    async def b_flow() -> None:
        await asyncio.sleep(0.2)
        calls = []
        for i in range(10):
            calls.append(asyncio.create_task(call(f"b{i}", "B")))
            await asyncio.sleep(0.05)
        await asyncio.gather(*calls)

    started = time.monotonic()
    await asyncio.gather(*(call(f"a{i}", "A") for i in range(100)), b_flow())
    makespan = time.monotonic() - started
    b_last = max(order.index(f"b{i}") for i in range(10)) + 1
    return Noisy(
        b_waits=[waits[f"b{i}"] for i in range(10)],
        a_waits=[waits[f"a{i}"] for i in range(100)],
        b_last=b_last,
        makespan=makespan,
    )


async def pairs(client: ManagerClient, callers: int, count: int) -> float:
    """Seconds per acquire + release, per caller, each caller a flow of its own."""

    async def loop(flow: str) -> None:
        for _ in range(count // callers):
            async with client.slot(WIDE.id, CallOptions(flow=flow)):
                pass

    started = time.perf_counter()
    await asyncio.gather(*(loop(f"flow-{i}") for i in range(callers)))
    return (time.perf_counter() - started) / (count // callers)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


async def main(rounds: int, pair_count: int) -> None:
    clients = {}
    for mode in MODES:
        queue = QueueSettings(fairness=mode, group_limits={CAP_ONE.id: 1, WIDE.id: 1_000})
        client = ManagerClient.create(
            Settings(queue=queue), name=f"fairness-{mode}-{uuid.uuid4().hex[:6]}"
        )
        for spec in (CAP_ONE, WIDE):
            await client.register(spec)
        clients[mode] = client
    noisy: dict[str, list[Noisy]] = {mode: [] for mode in MODES}
    pair: dict[tuple[str, int], list[float]] = {}
    for round_ in range(rounds):
        # Each mode goes first in every other round: neither always runs on a warmer Ray.
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            client = clients[mode]
            noisy[mode].append(await noisy_neighbour(client))
            for callers in (1, 64):
                seconds = await pairs(client, callers, pair_count)
                pair.setdefault((mode, callers), []).append(seconds)
    for client in clients.values():
        client.kill()

    call_ms = CALL_SECONDS * 1e3
    print(f"## noisy neighbour: cap 1, {call_ms:.0f} ms calls, A 100 calls, B 10 (medians)")
    print()
    print("| order | B wait p50 | B wait p95 | B p95 in calls | B's last grant ", end="")
    print("| A wait p50 | makespan |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    for mode in MODES:
        runs = noisy[mode]
        row = {
            "b50": statistics.median(statistics.median(r.b_waits) for r in runs),
            "b95": statistics.median(p95(r.b_waits) for r in runs),
            "last": statistics.median(r.b_last for r in runs),
            "a50": statistics.median(statistics.median(r.a_waits) for r in runs),
            "span": statistics.median(r.makespan for r in runs),
        }
        medians[mode] = row
        print(
            f"| {mode} | {row['b50']:.3f} s | {row['b95']:.3f} s | "
            f"{row['b95'] / CALL_SECONDS:.1f} | {row['last']:.0f} of 110 | "
            f"{row['a50']:.3f} s | {row['span']:.3f} s |"
        )
    print()
    span_ratio = medians["fair"]["span"] / medians["fifo"]["span"]
    print(f"makespan fair / fifo: {span_ratio:.3f}x")
    print()
    print(f"## the gated pair, {pair_count} pairs, each caller its own flow (medians, per caller)")
    print()
    print("| callers | fifo | fair | fair / fifo |")
    print("|---:|---:|---:|---:|")
    for callers in (1, 64):
        fifo = statistics.median(pair[("fifo", callers)])
        fair = statistics.median(pair[("fair", callers)])
        print(f"| {callers} | {fifo * 1e3:.2f} ms | {fair * 1e3:.2f} ms | {fair / fifo:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=1_000)
    args = parser.parse_args()
    on_embedded_ray(main(args.rounds, args.pairs))
