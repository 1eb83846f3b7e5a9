"""The manager's memory under 20,000 concurrent submissions, and what it refuses.

    python -m benchmarks.memory [--submissions 20000] [--max-pending 10000] [--bursts 3]

On an embedded Ray: one cap-1 group, its slot held, then ``--submissions``
acquires sent at once from this driver (as many callers as submissions), with
``queue.max_pending_per_group`` at ``--max-pending``, ``--bursts`` times. Prints the manager
process's resident memory (from /proc) before, with the queue full, and after
every waiter was cancelled; how many submissions were refused with QueueFull,
how long the refusals took (they do not wait for a slot, but the manager
works through the burst one call at a time), how long one more submission
takes to be refused once the queue is full, and the wait they estimated.

Beside it, the floor: a bare async actor whose method only waits, with as
many calls pending as the manager had waiters, measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

from benchmarks import on_embedded_ray


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pid_of(actor: Any) -> int:
    def pid(_: object) -> int:
        return os.getpid()

    import ray

    return int(ray.get(actor.__ray_call__.remote(pid)))


async def bare_actor_per_call(calls: int) -> float:
    """KiB of resident memory per pending call of an async actor that only waits."""
    import ray

    @ray.remote(num_cpus=0, max_concurrency=200_000)
    class Parked:
        async def park(self) -> None:
            await asyncio.Event().wait()

        def parked(self) -> int:
            return len(asyncio.all_tasks())

    actor = Parked.remote()  # type: ignore[attr-defined]
    pid = pid_of(actor)
    before = rss_mib(pid)
    refs = [actor.park.remote() for _ in range(calls)]
    # The actor is another process: nothing to wait on but its answers.
    while await actor.parked.remote() < calls:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    during = rss_mib(pid)
    for ref in refs:
        ray.cancel(ref)
    ray.kill(actor)
    return (during - before) * 1024 / calls


async def run(submissions: int, max_pending: int, bursts: int) -> None:
    import ray

    from actors.client import ManagerClient
    from actors.errors import QueueFull
    from actors.groups import classify
    from actors.settings import QueueSettings, Settings

    group = classify("ollama", "http://localhost:11434")
    settings = Settings(queue=QueueSettings(max_pending_per_group=max_pending))
    client = ManagerClient.create(settings, name=f"bench-{uuid.uuid4().hex[:6]}")
    await client.register(group)
    async with client.slot(group.id):  # one hold measured: refusals then estimate a wait
        await asyncio.sleep(0.05)
    pid = pid_of(client.handle)
    before = rss_mib(pid)
    refused: list[tuple[float, QueueFull]] = []

    async def submit() -> None:
        asked = time.monotonic()
        try:
            async with client.slot(group.id):
                pass
        except QueueFull as full:
            refused.append((time.monotonic() - asked, full))

    full: list[float] = []
    after: list[float] = []
    for burst in range(1, bursts + 1):  # later bursts show whether memory keeps growing
        async with client.slot(group.id):
            tasks = [asyncio.create_task(submit()) for _ in range(submissions)]
            refusals = burst * (submissions - max_pending)
            # The manager is another process: its stats are the way to see arrivals.
            while (  # noqa: ASYNC110
                (await client.stats()).total_pending < max_pending or len(refused) < refusals
            ):
                await asyncio.sleep(0.1)
            full.append(rss_mib(pid))
            stats = await client.stats()
            asked = time.monotonic()
            try:
                async with client.slot(group.id):
                    pass
            except QueueFull:
                one_more = time.monotonic() - asked
            else:
                raise RuntimeError("one more submission was not refused: the queue was not full")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        while (await client.stats()).total_pending:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        after.append(rss_mib(pid))
    seconds = sorted(s for s, _ in refused)
    waits = {f"{f.estimated_wait:.1f}s" if f.estimated_wait else "unknown" for _, f in refused}
    print(f"{submissions} submissions on a cap-1 group, max pending {max_pending}; {bursts} bursts")
    per_waiter = (full[0] - before) * 1024 / max(stats.total_pending, 1)
    floor = await bare_actor_per_call(stats.total_pending)
    print(
        f"manager RSS: {before:.1f} MiB before; first burst {full[0]:.1f} MiB with "
        f"{stats.total_pending} waiting ({per_waiter:.2f} KiB per waiter)"
    )
    for burst, (peak, left) in enumerate(zip(full, after, strict=True), 1):
        print(f"  burst {burst}: {peak:.1f} MiB full, {left:.1f} MiB after all were cancelled")
    print(
        f"refused with QueueFull: {len(refused)}; time to refuse median "
        f"{statistics.median(seconds) * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms "
        f"(all {submissions} were sent at once); one more once full: "
        f"{one_more * 1000:.1f} ms; estimated waits named: {sorted(waits)}"
    )
    print(
        f"a bare async actor with {stats.total_pending} calls pending: {floor:.2f} KiB per "
        f"call; the manager's waiter / that: {per_waiter / floor:.2f}x"
    )
    ray.kill(client.handle)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--submissions", type=int, default=20_000)
    parser.add_argument("--max-pending", type=int, default=10_000)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    on_embedded_ray(run(args.submissions, args.max_pending, args.bursts))


if __name__ == "__main__":
    main()
