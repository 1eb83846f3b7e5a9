"""How long a manager restart interrupts a cap-1 group, and whether it breaks anything.

    python -m benchmarks.recovery [--calls 60] [--hold 0.2] [--kills 3]

On an embedded Ray: ``--calls`` callers in this driver share one cap-1 group
registered at run time, each holding its slot ``--hold`` seconds. While they
run, the manager is killed ``--kills`` times (``ray.kill(no_restart=False)``),
each time right after a slot was granted. Per kill it prints the time until
the restarted manager answers, until every waiting caller is queued again,
and until the next call starts (the slot's holder at the kill keeps it until
its own release, under the new manager). At the end: calls done, lost, and
the most callers ever inside the slot at once (must be 1).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable

from pipelines.runtime import init_ray


async def run(calls: int, hold: float, kills: int) -> None:
    import ray

    from actors.client import ManagerClient
    from actors.groups import classify
    from actors.manager import get_or_create_manager
    from actors.settings import Settings

    group = classify("ollama", "http://localhost:11434")
    client = ManagerClient(get_or_create_manager(Settings(), name=f"bench-{uuid.uuid4().hex[:6]}"))
    await client.register(group)
    inside = peak = 0
    started: list[float] = []
    a_call_started = asyncio.Condition()

    async def call() -> None:
        nonlocal inside, peak
        async with client.slot(group.id):
            started.append(time.monotonic())
            async with a_call_started:
                a_call_started.notify_all()
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(hold)
            inside -= 1

    def started_at_least(count: int) -> Callable[[], bool]:
        return lambda: len(started) >= count

    def started_after(moment: float) -> Callable[[], bool]:
        return lambda: any(t > moment for t in started)

    tasks = [asyncio.create_task(call()) for _ in range(calls)]
    every = calls // (kills + 1)
    print(f"{calls} calls on a cap-1 group, {hold:g} s each; manager killed {kills} times")
    print(f"{'kill':>4} {'answers':>9} {'requeued':>9} {'next call':>10}")
    for kill in range(1, kills + 1):
        async with a_call_started:
            await a_call_started.wait_for(started_at_least(kill * every))
        epoch = (await client.stats()).epoch
        waiting = calls - len(started)
        killed = time.monotonic()
        ray.kill(client.handle, no_restart=False)
        # The manager is another process: nothing to wait on but its answers.
        while (stats := await client.stats()).epoch == epoch:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        answers = time.monotonic() - killed
        while stats.total_pending + sum(t > killed for t in started) < waiting:
            await asyncio.sleep(0.005)
            stats = await client.stats()
        requeued = time.monotonic() - killed
        async with a_call_started:
            await a_call_started.wait_for(started_after(killed))
        next_call = min(t for t in started if t > killed) - killed
        print(f"{kill:>4} {answers:>8.2f}s {requeued:>8.2f}s {next_call:>9.2f}s")
    finished, lost = await asyncio.wait(tasks, timeout=calls * hold * 2 + 120)
    failed = [t.exception() for t in finished if t.exception() is not None]
    stats = await client.stats()
    print(
        f"done {len(finished) - len(failed)}, failed {len(failed)}, lost {len(lost)}; "
        f"most inside the slot at once: {peak}; "
        f"left active {stats.total_active}, pending {stats.total_pending}"
    )
    for error in failed[:3]:
        print(f"  {type(error).__name__}: {error}")
    for task in lost:
        task.cancel()
    ray.kill(client.handle)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--hold", type=float, default=0.2)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    init_ray(None, num_cpus=2)
    import ray

    try:
        asyncio.run(run(args.calls, args.hold, args.kills))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
