"""What a crash costs: a manager restart, and a pipeline run whose driver is killed.

    python -m benchmarks.recovery [--calls 60] [--hold 0.2] [--kills 3] [--callers 3]
                                  [--drivers 3]

On an embedded Ray, two parts.

Manager kills: ``--calls`` callers in this driver share one cap-1 group
registered at run time, each holding its slot ``--hold`` seconds. While they
run, the manager is killed ``--kills`` times (``ray.kill(no_restart=False)``),
each time right after a slot was granted. Per kill: the time until the
restarted manager answers, until every waiting caller is queued again, and
until the next call starts (the holder at the kill keeps its slot until its
own release, under the new manager). Then: calls done, failed, lost, the
most callers ever inside the slot at once (must be 1), and how many calls
started before one that asked earlier (all have one priority, and each is
queued before the next asks, so only a restart can reorder them).

Caller kills: a process of each kind holds a cap-1 group's slot and waits
for two more: a driver (``kill -9``), an actor (``ray.kill``) and a task's
worker (``kill -9``), ``--callers`` times each. Per kind: the time from the
kill until the manager has dropped its slot and waits (Ray's report of the
worker's exit; the lifeline, two seconds, where that is missed).

Driver kills: ``python -m pipelines run`` on four services, as a subprocess
joined to this Ray, against a loopback OpenAI-format server on a cap-1 group
that holds each call 10 s; once one call is at the server and three wait, the command gets
``kill -9``. Per kill: the time until the run's last waiter has left the
manager's queue and its running call has given back its slot, and how many
calls reached the server after the kill (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import kill_manager, on_embedded_ray

if TYPE_CHECKING:
    from actors.client import ManagerClient


async def manager_kills(calls: int, hold: float, kills: int) -> None:
    import ray

    from actors.client import ManagerClient
    from actors.groups import classify
    from actors.settings import Settings

    group = classify("ollama", "http://localhost:11434")
    client = ManagerClient.create(Settings(), name=f"bench-{uuid.uuid4().hex[:6]}")
    await client.register(group)
    inside = peak = 0
    started: list[float] = []
    # Which call (numbered in the order they asked) started at each grant.
    order: list[int] = []
    a_call_started = asyncio.Condition()

    async def call(number: int) -> None:
        nonlocal inside, peak
        async with client.slot(group.id):
            started.append(time.monotonic())
            order.append(number)
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

    tasks = []
    for i in range(calls):
        # One at a time, so that they arrive at the manager in the order they asked.
        tasks.append(asyncio.create_task(call(i)))
        while (g := (await client.stats()).groups[group.id]).granted + g.pending <= i:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    every = calls // (kills + 1)
    print(f"{calls} calls on a cap-1 group, {hold:g} s each; manager killed {kills} times")
    print(f"{'kill':>4} {'answers':>9} {'requeued':>9} {'next call':>10}")
    for kill in range(1, kills + 1):
        async with a_call_started:
            await a_call_started.wait_for(started_at_least(kill * every))
        waiting = calls - len(started)
        killed, answers = await kill_manager(client)
        # The manager is another process: nothing to wait on but its answers.
        while (await client.stats()).total_pending + sum(  # noqa: ASYNC110
            t > killed for t in started
        ) < waiting:
            await asyncio.sleep(0.005)
        requeued = time.monotonic() - killed
        async with a_call_started:
            await a_call_started.wait_for(started_after(killed))
        next_call = min(t for t in started if t > killed) - killed
        print(f"{kill:>4} {answers:>8.2f}s {requeued:>8.2f}s {next_call:>9.2f}s")
    finished, lost = await asyncio.wait(tasks, timeout=calls * hold * 2 + 120)
    failed = [t.exception() for t in finished if t.exception() is not None]
    stats = await client.stats()
    overtaken = sum(later < earlier for earlier, later in itertools.pairwise(order))
    print(
        f"done {len(finished) - len(failed)}, failed {len(failed)}, lost {len(lost)}; "
        f"most inside the slot at once: {peak}; started out of the order asked: {overtaken}; "
        f"left active {stats.total_active}, pending {stats.total_pending}"
    )
    for error in failed[:3]:
        print(f"  {type(error).__name__}: {error}")
    for task in lost:
        task.cancel()
    ray.kill(client.handle)


# A driver of its own (argv: cluster, manager name, group): writes its pid, then asks for
# three slots of the group and holds whatever it gets until killed.
HOLDING_DRIVER = """
import asyncio, os, sys, ray
from actors.client import ManagerClient
from actors.names import NAMESPACE
ray.init(address=sys.argv[1], log_to_driver=False)
client = ManagerClient(ray.get_actor(sys.argv[2], namespace=NAMESPACE))

async def hold() -> None:
    async with client.slot(sys.argv[3]):
        await asyncio.Event().wait()

async def main() -> None:
    await asyncio.gather(*(hold() for _ in range(3)))

print(os.getpid(), flush=True)
asyncio.run(main())
"""


def hold_three(manager: Any, group: str) -> None:
    """Hold one slot of ``group`` and wait for two more, until this process is killed."""
    from actors.client import ManagerClient

    client = ManagerClient(manager)

    async def hold() -> None:
        async with client.slot(group):
            await asyncio.Event().wait()

    async def three() -> None:
        await asyncio.gather(*(hold() for _ in range(3)))

    asyncio.run(three())


async def dropped_after(client: ManagerClient, group: str, kill: Callable[[], None]) -> float:
    """Seconds from ``kill`` of a holder of ``group``'s slot with two waits until the
    manager dropped all three."""

    async def level() -> tuple[int, int]:
        stats = await client.stats()
        return stats.active_by_group.get(group, 0), stats.pending_by_group.get(group, 0)

    # The manager is another process: nothing to wait on but its answers.
    while await level() != (1, 2):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    killed = time.monotonic()
    kill()
    while await level() != (0, 0):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return time.monotonic() - killed


async def caller_kills(rounds: int) -> None:
    import os

    import ray

    from actors.client import ManagerClient
    from actors.groups import classify
    from actors.settings import Settings

    @ray.remote(num_cpus=0)
    class Holder:
        def hold(self, manager: Any, group: str) -> None:
            hold_three(manager, group)

    @ray.remote(num_cpus=0, max_retries=0)
    def holding_task(manager: Any, group: str, pid_file: str) -> None:
        Path(pid_file).write_text(str(os.getpid()))
        hold_three(manager, group)

    address = ray.get_runtime_context().gcs_address
    name = f"bench-{uuid.uuid4().hex[:6]}"
    client = ManagerClient.create(Settings(), name=name)
    print(f"\na caller holding a cap-1 slot with two waits, killed; {rounds} rounds per kind")
    print(f"{'caller':>8} {'slot and waits dropped after the kill (each round)':>52}")

    async def driver(group: str) -> float:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDING_DRIVER, address, name, group,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        await process.stdout.readline()
        took = await dropped_after(client, group, process.kill)
        await process.wait()
        return took

    async def actor(group: str) -> float:
        holder = Holder.remote()  # type: ignore[attr-defined]
        holder.hold.remote(client.handle, group)
        return await dropped_after(client, group, lambda: ray.kill(holder))

    async def task(group: str) -> float:
        with tempfile.NamedTemporaryFile() as pid_file:
            holding_task.remote(client.handle, group, pid_file.name)
            # Written before the task asks for its slots.
            pid = Path(pid_file.name)
            return await dropped_after(
                client, group, lambda: os.kill(int(pid.read_text()), signal.SIGKILL)
            )

    for kind, one in (("driver", driver), ("actor", actor), ("task", task)):
        times: list[float] = []
        for _ in range(rounds):
            group = classify("ollama", f"http://localhost:{11434 + len(times)}")
            await client.register(group)
            times.append(await one(group.id))
        print(f"{kind:>8} {' '.join(f'{t * 1000:.0f} ms' for t in times):>52}")
    ray.kill(client.handle)


async def driver_kills(kills: int) -> None:
    import ray
    import yaml

    from actors.client import ManagerClient
    from actors.groups import classify
    from actors.names import MANAGER_NAME, NAMESPACE
    from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
    from providers.testing.plateau_backend import plateau_answer

    print(f"\npipeline run of 4 services, 10 s per call, cap 1; its driver killed {kills} times")
    print(f"{'kill':>4} {'queue empty':>12} {'calls after kill':>17}")
    address = ray.get_runtime_context().gcs_address
    with tempfile.TemporaryDirectory() as folder:
        services = Path(folder) / "in.jsonl"
        services.write_text("".join(f'{{"id": "svc-{i}", "name": "S{i}"}}\n' for i in range(4)))
        for kill in range(1, kills + 1):
            with FakeLLMServer(OpenAIDialect(), hold=10.0, responder=plateau_answer) as server:
                group = classify("openai-compatible", server.url + "/v1").id
                config = Path(folder) / "raygate.yaml"
                models = {"fake": {"provider": "openai-compatible", "base_url": server.url + "/v1"}}
                config.write_text(yaml.safe_dump({"models": models, "pipeline": {"model": "fake"}}))
                out = Path(folder) / f"out-{kill}.jsonl"
                command = [sys.executable, "-m", "pipelines", "run", str(services)]
                driver = await asyncio.create_subprocess_exec(
                    *command, "--out", str(out), "--config", str(config), "--address", address,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                # The job's own process creates the manager (if need be), registers the
                # group and queues its calls; nothing here can be told of that.
                while True:
                    try:
                        client = ManagerClient(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
                        waiting = (await client.stats()).pending_by_group.get(group, 0)
                        # The running call's request at the server, three calls waiting.
                        if waiting >= 3 and server.received:
                            break
                    except ValueError:
                        pass
                    await asyncio.sleep(0.05)
                calls_at_kill = len(server.received)
                killed = time.monotonic()
                driver.send_signal(signal.SIGKILL)
                await driver.wait()
                while True:
                    stats = await client.stats()
                    if (stats.pending_by_group[group], stats.active_by_group[group]) == (0, 0):
                        break
                    await asyncio.sleep(0.01)
                empty = time.monotonic() - killed
                print(f"{kill:>4} {empty:>11.2f}s {len(server.received) - calls_at_kill:>17}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--hold", type=float, default=0.2)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--callers", type=int, default=3)
    parser.add_argument("--drivers", type=int, default=3)
    args = parser.parse_args()

    async def all_parts() -> None:
        await manager_kills(args.calls, args.hold, args.kills)
        await caller_kills(args.callers)
        await driver_kills(args.drivers)

    on_embedded_ray(all_parts())


if __name__ == "__main__":
    main()
