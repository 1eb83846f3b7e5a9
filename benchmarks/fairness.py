"""Fair share within a priority against first come first served, side by side in one run.

    python -m benchmarks.fairness [--rounds 2]

The noisy neighbour of the issue "Tenants and fair share": on a cap-1 group
whose calls hold their slot 20 ms, flow A queues 100 calls at priority 5 and
flow B, 0.2 s later, sends 10 calls at the same priority, one every 50 ms.
Each round runs it on a manager with ``queue.fairness: fifo`` and on one with
``fair`` (the default), both on one embedded Ray, alternating which goes first. Printed: B's
queue wait p50/p95 (in call times too), where B's last call landed among the
110 grants, A's median wait, and the makespan, with fair / fifo ratios. With
the ``compare`` extra installed (``.venv/bin/pip install -e '.[compare]'``),
each round also sends the same calls through LiteLLM's Router, without
retries and with 8 (see :func:`through_litellm`): it rejects a call past its
deployment's limit, and its waits run to the start of each call at a
loopback server, so they include its HTTP hop (a millisecond or two).

The grant path's cost of fair share is ``python -m benchmarks.pair --fifo``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Ray reads this when it is imported: keep the embedded instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from actors.client import ManagerClient
from actors.groups import classify
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from benchmarks import on_embedded_ray
from benchmarks.compare import LITELLM_RETRIES, Request, calls_at, litellm_router, record_calls
from benchmarks.serve import backend

CAP_ONE = classify("openai-compatible", "http://gpu-box:8000")
CALL_SECONDS = 0.02
MODES = ("fifo", "fair")
LITELLM = "LiteLLM Router"


@dataclass
class Noisy:
    # Of the calls that ran; a failed call (LiteLLM rejects past its limit) has none.
    b_waits: list[float]
    a_waits: list[float]
    b_last: int  # 1-based place of B's last call to run among all that ran (0: none ran)
    makespan: float
    failed: int
    b_failed: int


# Sends one call of a flow and returns once it ended.
Send = Callable[[str, str], Awaitable[None]]


async def noisy_neighbour(send: Send, starts: Callable[[], Awaitable[dict[str, float]]]) -> Noisy:
    """A's 100 calls at once, B's 10 from 0.2 s on, one every 50 ms, through ``send``;
    each call's wait runs from its ask to its start, as ``starts`` says afterwards."""
    asked: dict[str, float] = {}
    failed: set[str] = set()

    async def call(name: str, flow: str) -> None:
        asked[name] = time.monotonic()
        try:
            await send(name, flow)
        except Exception:
            failed.add(name)

    async def b_flow() -> None:
        await asyncio.sleep(0.2)
        calls = []
        for i in range(10):
            calls.append(asyncio.create_task(call(f"b{i}", "B")))
            await asyncio.sleep(0.05)
        await asyncio.gather(*calls)

    began = time.monotonic()
    await asyncio.gather(*(call(f"a{i}", "A") for i in range(100)), b_flow())
    makespan = time.monotonic() - began
    # Only this scenario's calls (a router may send some of its own).
    started = {name: at for name, at in (await starts()).items() if name in asked}
    order = sorted(started, key=started.__getitem__)
    waits = {name: started[name] - asked[name] for name in started}
    b_ran = [order.index(name) + 1 for name in order if name.startswith("b")]
    return Noisy(
        b_waits=[wait for name, wait in waits.items() if name.startswith("b")],
        a_waits=[wait for name, wait in waits.items() if name.startswith("a")],
        b_last=max(b_ran, default=0),
        makespan=makespan,
        failed=len(failed),
        b_failed=sum(1 for name in failed if name.startswith("b")),
    )


async def through_raygate(client: ManagerClient) -> Noisy:
    """Each call holds a slot of the cap-1 group CALL_SECONDS, its flow its tenant's."""
    started: dict[str, float] = {}

    async def send(name: str, flow: str) -> None:
        options = CallOptions(priority=5, flow=flow, request_id=f"{name}-{uuid.uuid4().hex}")
        async with client.slot(CAP_ONE.id, options):
            started[name] = time.monotonic()
            await asyncio.sleep(CALL_SECONDS)

    async def starts() -> dict[str, float]:
        return started

    return await noisy_neighbour(send, starts)


async def through_litellm(retries: int) -> Noisy:
    """The same calls through LiteLLM's Router to a loopback server whose calls take
    CALL_SECONDS: its deployment's ``max_parallel_requests: 1`` and its priority
    scheduler, A's and B's calls at one priority (it knows no tenants), with
    ``retries``; a call starts when the server saw it start."""
    async with (
        backend(CALL_SECONDS, record_calls) as base,
        litellm_router(base, 1, retries=retries) as send,
    ):
        await send(Request("warm-up", 5))

        async def call(name: str, flow: str) -> None:
            await send(Request(name, 5))

        async def starts() -> dict[str, float]:
            return {c.tag: c.started for c in await calls_at(base)}

        return await noisy_neighbour(call, starts)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def median_of(figure: Callable[[list[float]], float], runs: list[list[float]]) -> float:
    """The median over the runs of ``figure`` of each run's values; NaN if none ran."""
    figures = [figure(values) for values in runs if values]
    return statistics.median(figures) if figures else math.nan


async def main(rounds: int) -> None:
    clients = {}
    for mode in MODES:
        queue = QueueSettings(fairness=mode, group_limits={CAP_ONE.id: 1})
        client = ManagerClient.create(
            Settings(queue=queue), name=f"fairness-{mode}-{uuid.uuid4().hex[:6]}"
        )
        await client.register(CAP_ONE)
        clients[mode] = client
    noisy: dict[str, list[Noisy]] = {mode: [] for mode in MODES}
    with_litellm = importlib.util.find_spec("litellm") is not None
    for round_ in range(rounds):
        # Each mode goes first in every other round: neither always runs on a warmer Ray.
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            client = clients[mode]
            noisy[mode].append(await through_raygate(client))
        if with_litellm:
            for retries in (0, LITELLM_RETRIES):
                name = f"{LITELLM}, {retries} retries"
                noisy.setdefault(name, []).append(await through_litellm(retries))
    for client in clients.values():
        client.kill()

    call_ms = CALL_SECONDS * 1e3
    print(f"## noisy neighbour: cap 1, {call_ms:.0f} ms calls, A 100 calls, B 10 (medians)")
    print()
    print("| order | B wait p50 | B wait p95 | B p95 in calls | B's last to run ", end="")
    print("| A wait p50 | makespan | failed (B's) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    for mode, runs in noisy.items():
        row = {
            "b50": median_of(statistics.median, [r.b_waits for r in runs]),
            "b95": median_of(p95, [r.b_waits for r in runs]),
            "last": statistics.median(r.b_last for r in runs),
            "a50": median_of(statistics.median, [r.a_waits for r in runs]),
            "span": statistics.median(r.makespan for r in runs),
            "failed": statistics.median(r.failed for r in runs),
            "b_failed": statistics.median(r.b_failed for r in runs),
        }
        medians[mode] = row
        b95_calls = "—" if math.isnan(row["b95"]) else f"{row['b95'] / CALL_SECONDS:.1f}"
        print(
            f"| {mode} | {row['b50']:.3f} s | {row['b95']:.3f} s | {b95_calls} | "
            f"{row['last']:.0f} of 110 | {row['a50']:.3f} s | {row['span']:.3f} s | "
            f"{row['failed']:.0f} ({row['b_failed']:.0f}) |"
        )
    if not with_litellm:
        print(f"| {LITELLM} | not installed: .venv/bin/pip install -e '.[compare]' |")
    print()
    span_ratio = medians["fair"]["span"] / medians["fifo"]["span"]
    print(f"makespan fair / fifo: {span_ratio:.3f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    on_embedded_ray(main(args.rounds))
