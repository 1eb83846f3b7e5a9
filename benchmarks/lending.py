"""What lending costs a waiter elsewhere: the inversion across processes, in round trips.

    python -m benchmarks.lending [--rounds 30] [--limit 8]

On an embedded Ray, process A (an actor) runs ``--limit`` callers at priority 3
in a loop of zero-hold calls on a group of that limit: with ``queue.lend``
on, A keeps every slot of the group lent and idle between its calls. Process
B (another actor) then asks for one slot at priority 9, ``--rounds`` times, a
tenth of a second apart: each time the manager calls A's slots back and B
waits for one to come back. Measured in B: its wait for the slot, and, in the
same rounds, the round trip of one manager call (a Stats query); the
inversion is the wait in round trips. The same with ``queue.lend: false``
(every slot goes back to the manager after its call), side by side, and the
manager's count of recalls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import ray

from actors.client import ManagerClient
from actors.groups import classify
from actors.manager import get_or_create_manager
from actors.options import CallOptions
from actors.settings import QueueSettings, Settings
from benchmarks import on_embedded_ray

GROUP = classify("openai-compatible", "http://gpu-box:8000")


@ray.remote(num_cpus=0)
class Busy:
    """Process A: callers that take the group's slots in a loop until stopped."""

    def __init__(self, manager: ray.actor.ActorHandle) -> None:
        self.client = ManagerClient(manager)
        self.stopped = False
        self.calls = 0

    async def run(self, callers: int) -> int:
        async def loop() -> None:
            while not self.stopped:
                async with self.client.slot(GROUP.id, CallOptions(priority=3)):
                    await asyncio.sleep(0)
                self.calls += 1

        await asyncio.gather(*(loop() for _ in range(callers)))
        return self.calls

    def stop(self) -> None:
        self.stopped = True


@ray.remote(num_cpus=0)
class Urgent:
    """Process B: one call at a time at priority 9, and the manager's round trip."""

    def __init__(self, manager: ray.actor.ActorHandle) -> None:
        self.client = ManagerClient(manager)

    async def wait_for_slot(self) -> float:
        asked = time.perf_counter()
        async with self.client.slot(GROUP.id, CallOptions(priority=9)):
            waited = time.perf_counter() - asked
        # Its slot, lent when nobody waited, goes back at once, not after its linger: the
        # next round starts with A holding the group again and B asking anew.
        await self.client.drain()
        return waited

    async def round_trip(self) -> float:
        asked = time.perf_counter()
        await self.client.stats()
        return time.perf_counter() - asked


async def measure(lend: bool, rounds: int, limit: int) -> tuple[list[float], list[float], int]:
    """B's waits and round trips, and the manager's recalls."""
    settings = Settings(queue=QueueSettings(group_limits={GROUP.id: limit}, lend=lend))
    manager = get_or_create_manager(settings, name=f"lending-{uuid.uuid4().hex[:6]}")
    client = ManagerClient(manager)
    await client.register(GROUP)
    busy = Busy.remote(manager)  # type: ignore[attr-defined]
    urgent = Urgent.remote(manager)  # type: ignore[attr-defined]
    running = busy.run.remote(limit)
    await asyncio.sleep(1.0)  # A's callers hold every slot, lent
    waits, trips = [], []
    for _ in range(rounds):
        waits.append(await urgent.wait_for_slot.remote())
        trips.append(await urgent.round_trip.remote())
        await asyncio.sleep(0.1)  # A takes the group back
    recalls = (await client.stats()).groups[GROUP.id].recalls
    await busy.stop.remote()
    await running
    for actor in (busy, urgent, manager):
        ray.kill(actor)
    return waits, trips, recalls


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main(rounds: int, limit: int) -> None:
    print(f"a priority-9 call from process B while process A runs {limit} callers at 3")
    print(f"on a group of limit {limit}; {rounds} rounds each")
    print("| queue.lend | B's wait p50 / p95 | round trip p50 | wait / round trip | recalls |")
    print("|---|---:|---:|---:|---:|")
    for lend in (True, False):
        waits, trips, recalls = await measure(lend, rounds, limit)
        trip = statistics.median(trips)
        p50, p95 = statistics.median(waits), statistics.quantiles(waits, n=20)[18]
        print(
            f"| {str(lend).lower()} | {ms(p50)} / {ms(p95)} | {ms(trip)} | "
            f"{p50 / trip:.1f} / {p95 / trip:.1f} | {recalls} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lending")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    on_embedded_ray(main(args.rounds, args.limit))
