"""What a gated call costs, measured side by side in one run on an embedded Ray.

    python -m benchmarks.manager [--pairs 2000] [--pending 10000]

Rows, each the mean over many calls from this driver:
  raw no-op x2          two calls without arguments to an empty async actor method
  raw x2, same args     the same two calls carrying the acquire's and the release's
                        batches, one operation each (each Ray argument costs
                        serialization)
  gated pair, capped    acquire + release on a group with a limit (no waiting: limit > callers)
  gated pair, unlimited the same on a group with no limit and no global cap (fast path)
  asyncio.Semaphore     an in-process acquire + release: the physical floor
at 1, 8 and 64 concurrent callers; then the cap-1 turnover gap (release sent -> next
holder running), through the manager (``queue.hand_over: false``) and passed on in
the caller, for a slot held no time and held 20 ms, beside the same turnover
between two callers of a bare actor; and the grant latency with 10 and with 10,000
requests pending.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

# Ray reads this when it is imported: keep the embedded instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray

from actors.client import ManagerClient
from actors.groups import classify
from actors.ops import Acquire, Cancel, Op, Release
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from actors.watch import caller_of
from benchmarks import on_embedded_ray

CAPPED = classify("openai-compatible", "http://gpu-box:8000")  # remote server: limit from config
UNLIMITED = classify("anthropic")
CAP_ONE = classify("ollama", "http://localhost:11434")
# Long enough for the manager's notice of the waiter next in line to arrive, as it does
# for any LLM call; far shorter than one.
HAND_OFF_HOLD_SECONDS = 0.02
# The process, named by hand, whose mailbox gets the grant latency's grants.
GRANT_LATENCY_CALLER = "grant-latency"


@ray.remote(num_cpus=0, max_concurrency=10_000)
class Noop:
    """A bare async actor: the transport floor."""

    def __init__(self) -> None:
        self._turns: dict[int, asyncio.Future[None]] = {}

    async def noop(self) -> None:
        return None

    async def noop_apply(self, ops: list[Op[object]]) -> list[object]:
        return [None] * len(ops)

    def _turn(self, turn: int) -> asyncio.Future[None]:
        return self._turns.setdefault(turn, asyncio.get_running_loop().create_future())

    async def wait_turn(self, turn: int) -> None:
        await self._turn(turn)
        del self._turns[turn]

    async def pass_turn(self, turn: int) -> None:
        self._turn(turn).set_result(None)


async def per_op(op: Callable[[], Awaitable[Any]], total: int, callers: int) -> float:
    """Mean seconds one caller waits for one ``op`` when ``callers`` run it at once."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await op()

    await asyncio.gather(*(caller(10) for _ in range(callers)))  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(caller(total // callers) for _ in range(callers)))
    elapsed = time.perf_counter() - start
    return elapsed * callers / (total // callers * callers)


async def turnover_gaps(client: ManagerClient, rounds: int, *, hold: float) -> list[float]:
    """Two callers take turns at a cap-1 slot, each holding it ``hold`` seconds; the gap
    is the holder's body done -> the other caller running. A hold of 0 releases before
    the manager's notice of the waiter next in line can have arrived: then the slot
    goes through the manager, and a slot passed on waits for the hand-over's answer
    before it is given back."""
    released_at: list[float] = []
    gaps: list[float] = []

    async def caller() -> None:
        for _ in range(rounds):
            async with client.slot(CAP_ONE.id):
                if released_at:
                    gaps.append(time.perf_counter() - released_at[-1])
                await asyncio.sleep(hold)
                released_at.append(time.perf_counter())

    await asyncio.gather(caller(), caller())
    return gaps[5:]


async def bare_turnover_gaps(noop: Any, rounds: int) -> list[float]:
    """One call wakes another caller's pending call on a bare actor: the turnover floor."""
    gaps = []
    for turn in range(rounds):
        waiting = noop.wait_turn.remote(turn)
        await asyncio.sleep(0.005)  # let it arrive; not part of the measured gap
        start = time.perf_counter()
        noop.pass_turn.remote(turn)
        await waiting
        gaps.append(time.perf_counter() - start)
    return gaps[5:]


async def grant_latency(client: ManagerClient, pending: int, rounds: int) -> float:
    """Median release -> grant time for a priority-10 request with ``pending`` others queued:
    from the release sent to the grant collected from the caller's mailbox."""
    handle = client.handle

    def ask(priority: int) -> Acquire:
        options = CallOptions(priority=priority)
        return Acquire(CAP_ONE.id, uuid.uuid4().hex, options, GRANT_LATENCY_CALLER)

    [holder] = await handle.apply.remote([ask(5)])
    background = [ask(1) for _ in range(pending)]
    await handle.apply.remote(background)
    # Read past what the mailbox holds already (the holder's slot called back).
    mail = await handle.collect.remote(GRANT_LATENCY_CALLER, holder.epoch, -1, 0.0)
    read = max((number for number, _, _ in mail.items), default=-1)
    samples = []
    for _ in range(rounds):
        probe = ask(10)
        await handle.apply.remote([probe])
        start = time.perf_counter()
        await handle.apply.remote([Release(holder.id, holder.epoch)])
        while True:
            mail = await handle.collect.remote(GRANT_LATENCY_CALLER, holder.epoch, read)
            read = max((number for number, _, _ in mail.items), default=read)
            granted = [item for _, lease_id, item in mail.items if lease_id == probe.lease_id]
            if granted:
                break
        samples.append(time.perf_counter() - start)
        holder = granted[0]
    await handle.apply.remote(
        [Cancel(op.lease_id) for op in background] + [Release(holder.id, holder.epoch)]
    )
    return statistics.median(samples)


async def wait_pending(client: ManagerClient, count: int) -> None:
    # The manager is another process: its stats are the way to see arrivals.
    while (await client.stats()).pending_by_group.get(CAP_ONE.id, 0) != count:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def fresh_manager(settings: Settings) -> ManagerClient:
    client = ManagerClient.create(settings, name=f"bench-{uuid.uuid4().hex[:8]}")
    for spec in (CAPPED, UNLIMITED, CAP_ONE):
        await client.register(spec)
    return client


async def main(pairs: int, pending: int) -> None:
    settings = Settings(
        queue=QueueSettings(
            group_limits={CAPPED.id: 1_000},
            max_pending_per_group=pending + 10,
        )
    )
    client = await fresh_manager(settings)
    noop = Noop.remote()  # type: ignore[attr-defined]
    semaphore = asyncio.Semaphore(1_000)

    async def raw_pair() -> None:
        await noop.noop.remote()
        await noop.noop.remote()

    async def raw_pair_with_args() -> None:
        lease_id = uuid.uuid4().hex
        options = CallOptions(request_id=uuid.uuid4().hex)
        # The caller the manager gets, lifeline ref and all.
        caller = caller_of(client.handle).id
        await noop.noop_apply.remote([Acquire(CAPPED.id, lease_id, options, caller)])
        await noop.noop_apply.remote([Release(lease_id, 1)])

    async def gated(group: str) -> None:
        async with client.slot(group):
            pass

    async def in_process() -> None:
        async with semaphore:
            pass

    rows = []
    for callers in (1, 8, 64):
        raw = await per_op(raw_pair, pairs, callers)
        raw_args = await per_op(raw_pair_with_args, pairs, callers)
        capped = await per_op(lambda: gated(CAPPED.id), pairs, callers)
        unlimited = await per_op(lambda: gated(UNLIMITED.id), pairs, callers)
        await client.drain()
        floor = await per_op(in_process, pairs, callers)
        rows.append((callers, raw, raw_args, capped, unlimited, floor))

    print(f"## acquire + release, mean per pair per caller ({pairs} pairs per cell)\n")
    print(
        "| callers | raw no-op x2 | raw x2, same args | gated, capped | capped / no-op x2 "
        "| capped / same-args x2 | gated, unlimited | unlimited / no-op x2 | asyncio.Semaphore |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for callers, raw, raw_args, capped, unlimited, floor in rows:
        print(
            f"| {callers} | {raw * 1e3:.3f} ms | {raw_args * 1e3:.3f} ms "
            f"| {capped * 1e3:.3f} ms | {capped / raw:.2f}x | {capped / raw_args:.2f}x "
            f"| {unlimited * 1e3:.3f} ms | {unlimited / raw:.2f}x | {floor * 1e6:.1f} us |"
        )

    one_raw = await per_op(noop.noop.remote, pairs, 1)
    bare = statistics.median(await bare_turnover_gaps(noop, rounds=300))
    strict = await fresh_manager(
        settings.model_copy(
            update={"queue": settings.queue.model_copy(update={"hand_over": False})}
        )
    )
    print("\n## turnover on a cap-1 group (release sent -> next holder running), medians\n")
    print(
        "| slot held | raw no-op call | bare-actor turnover | through the manager "
        "| passed on in the caller | manager / bare | passed on / bare |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for hold in (0.0, HAND_OFF_HOLD_SECONDS):
        manager = statistics.median(await turnover_gaps(strict, rounds=300, hold=hold))
        passed = statistics.median(await turnover_gaps(client, rounds=300, hold=hold))
        print(
            f"| {hold * 1e3:.0f} ms | {one_raw * 1e3:.3f} ms | {bare * 1e3:.3f} ms "
            f"| {manager * 1e3:.3f} ms | {passed * 1e3:.3f} ms "
            f"| {manager / bare:.2f}x | {passed / bare:.2f}x |"
        )

    small = await grant_latency(await fresh_manager(settings), pending=10, rounds=50)
    large = await grant_latency(await fresh_manager(settings), pending=pending, rounds=50)
    print("\n## grant latency (release -> priority-10 waiter granted), median of 50\n")
    print(f"| 10 pending | {pending:,} pending | ratio |")
    print("|---:|---:|---:|")
    print(f"| {small * 1e3:.3f} ms | {large * 1e3:.3f} ms | {large / small:.2f}x |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--pending", type=int, default=10_000)
    args = parser.parse_args()
    on_embedded_ray(main(args.pairs, args.pending))
