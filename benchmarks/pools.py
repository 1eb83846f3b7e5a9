"""A model on two servers behind one queue (a pool), beside one server and LiteLLM's router.

    python -m benchmarks.pools [--calls 200] [--seed 7]

On an embedded Ray, loopback servers of cap 1, each a process of its own that
answers a call after its call time and records when each call started and
ended there. ``--calls`` calls of random priority go to model "pooled"
(``models.pooled.servers``, see :mod:`providers.pool`) through its
provider; the run holds every server's slot until all of them wait in the
manager, then lets go, so every call could have been granted in any order.

1. Equal servers, calls of 50 ms and of 200 ms: the pool of two against one
   server alone: throughput, and the ratio (the goal: at least 1.9x).
2. Unequal servers (50 and 100 ms): the pool's makespan against the best
   split of the calls between the two (the goal: at most 1.10x).
3. Two 50 ms servers, one killed (SIGKILL) at half time: calls lost (must be
   0), calls failed, calls the other server answered after the kill, and the
   time until the manager had the dead one out of rotation (the goal: 2 s).
4. Fallback: a cap-1 server of 50 ms calls whose model falls back to a
   "remote" server (loopback, no limit) past ``fallback_after_seconds: 2``; a
   burst of 100 calls: those the manager estimates would wait past 2 s go
   to the remote at once, the others wait; the local server never above 1.
5. Weights: two equal servers of weights 1:1 and 3:1, 40 calls one at a time
   (each finds both free): the calls each server took (the goal: the
   weights' shares).
6. With the ``compare`` extra (``.venv/bin/pip install -e '.[compare]'``),
   LiteLLM's Router over the same two 50 ms servers: two deployments of one
   model name, ``max_parallel_requests: 1`` each, ``least-busy`` routing,
   its priority scheduler; without retries and with 8.

Priority inversions: pairs of calls where the less urgent one started at its
server more than 2 ms before the more urgent one (every call waited from the
start; two grants to two servers in one millisecond may reach them in either
order). The most calls each server had at once, from its own records.

The slots held at the start are the manager's own leases, held by no
client: when the driver held them through its client, its release passed a
slot on, in its own process, to the waiter it had last heard was next (the
hand-over), and in 2 of 8 runs the last arrivals had overtaken that one a
moment before: one call started ahead of 86 more urgent ones (0 in 8 runs
with ``queue.hand_over: false``; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks import on_embedded_ray
from benchmarks.compare import Call, Request, calls_at, litellm_router, peak, record_calls
from benchmarks.serve import backend_process

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from actors.client import ManagerClient

# A later start of a more urgent call within this is no inversion (see the module).
SAME_MOMENT = 0.002
LITELLM_RETRIES = 8


@dataclass
class Run:
    """How one scenario's calls went."""

    system: str
    servers: int
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    seconds: float = 0.0
    calls: dict[str, list[Call]] = field(default_factory=dict)  # by server URL
    notes: list[str] = field(default_factory=list)

    def inversions(self, priority: dict[str, int]) -> int:
        started = sorted(
            (call.started, priority[call.tag]) for calls in self.calls.values() for call in calls
        )
        return sum(
            1
            for i, (at, low) in enumerate(started)
            for later, high in started[i + 1 :]
            if high > low and later - at > SAME_MOMENT
        )

    def peaks(self) -> list[int]:
        return [peak(calls) for calls in self.calls.values()]


def requests(count: int, rng: random.Random) -> list[Request]:
    return [Request(f"call-{i}", rng.randint(1, 10)) for i in range(count)]


@contextlib.asynccontextmanager
async def servers(latencies: list[float]) -> AsyncIterator[list[tuple[str, BaseProcess]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(backend_process(latency, record_calls))
            for latency in latencies
        ]


async def through_raygate(
    urls: list[str],
    asked: list[Request],
    *,
    during: Callable[[ManagerClient, float], Awaitable[None]] | None = None,
) -> Run:
    """``asked`` through model "pooled" on ``urls``; ``during(manager, started)`` runs
    beside the calls once the slots are let go."""
    from actors.client import ManagerClient
    from actors.groups import ModelEntry, ServerEntry
    from actors.ops import Acquire, Release
    from actors.options import CallOptions
    from actors.settings import ProviderSettings, QueueSettings, Settings
    from providers.models import ChatMessage, ChatRequest
    from providers.routing import provider_for_model

    servers = tuple(ServerEntry(provider="openai-compatible", base_url=url) for url in urls)
    settings = Settings(
        models={"pooled": ModelEntry(servers=servers)},
        queue=QueueSettings(max_pending_per_group=100_000),
        providers=ProviderSettings(timeout_seconds=30, retry_deadline_seconds=60),
    )
    manager = ManagerClient.create(settings, name=f"pools-{uuid.uuid4().hex[:6]}")
    provider, model = provider_for_model(settings, "pooled", manager)
    await provider.ready()
    specs = settings.models["pooled"].specs()

    def chat(request: Request) -> Awaitable[Any]:
        message = ChatMessage(role="user", content=request.tag)
        call = ChatRequest(model=model, messages=(message,), max_tokens=8)
        return provider.chat(call, CallOptions(priority=request.priority, request_id=request.tag))

    for url in urls:
        await chat(Request("warm-up", 5))
        await calls_at(url)  # forget the warm-up
    run = Run("raygate pool" if len(urls) > 1 else "raygate, one server", len(urls))
    # Held by no process's client: let go, each slot goes to the best waiter then (a
    # client's own release may pass it on in its process to the waiter it last heard was
    # next, which the last arrivals may have overtaken a moment before; see the module).
    # The warm-up's slots, lent to its process, come back after their linger.
    while (await manager.stats()).total_active:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    held = await manager.handle.apply.remote(
        [Acquire(spec.id, f"held-{spec.id}", CallOptions(), "pools-benchmark") for spec in specs]
    )
    tasks = [asyncio.ensure_future(chat(request)) for request in asked]
    while (await manager.stats()).total_pending < len(asked):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    for lease in held:
        await manager.handle.apply.remote([Release(lease.id, lease.epoch)])
    started = time.monotonic()
    beside = asyncio.ensure_future(during(manager, started)) if during else None
    done, lost = await asyncio.wait(tasks, timeout=300)
    run.seconds = time.monotonic() - started
    if beside is not None:
        await beside
    for task in done:
        if task.exception() is None:
            run.ok += 1
        else:
            name = type(task.exception()).__name__
            run.failed[name] = run.failed.get(name, 0) + 1
    run.lost = len(lost)
    for task in lost:
        task.cancel()
    for url in urls:
        with contextlib.suppress(Exception):  # a killed server has no records to give
            run.calls[url] = await calls_at(url)
    manager.kill()
    return run


async def through_litellm(urls: list[str], asked: list[Request], retries: int) -> Run:
    """``asked`` through LiteLLM's Router, one deployment per URL (see the module)."""
    async with litellm_router(urls, 1, retries=retries, routing="least-busy") as send:
        for _ in urls:
            await send(Request("warm-up", 5))
        for url in urls:
            await calls_at(url)
        run = Run(f"LiteLLM Router, {retries} retries", len(urls))
        started = time.monotonic()
        answers = await asyncio.gather(*(send(r) for r in asked), return_exceptions=True)
        run.seconds = time.monotonic() - started
    for answer in answers:
        if isinstance(answer, BaseException):
            name = type(answer).__name__
            run.failed[name] = run.failed.get(name, 0) + 1
        else:
            run.ok += 1
    for url in urls:
        run.calls[url] = await calls_at(url)
    return run


def best_split(latencies: list[float], count: int) -> float:
    """The shortest makespan of ``count`` calls split between two servers of these call
    times, one call at a time each."""
    fast, slow = latencies
    return min(max(k * fast, (count - k) * slow) for k in range(count + 1))


def row(run: Run, priority: dict[str, int], baseline: float | None = None) -> str:
    failed = ", ".join(f"{n} {name}" for name, n in sorted(run.failed.items())) or "0"
    rate = run.ok / run.seconds if run.seconds else 0.0
    ratio = f"{rate / baseline:.2f}x" if baseline else "-"
    peaks = "/".join(str(p) for p in run.peaks())
    return (
        f"| {run.system} | {run.servers} | {run.ok} | {failed} | {run.lost} | "
        f"{run.seconds:.2f} s | {rate:.1f}/s | {ratio} | {run.inversions(priority)} | {peaks} |"
    )


HEADER = (
    "| system | servers | ok | failed | lost | makespan | throughput | vs one server "
    "| inversions | most at once (each server) |\n" + "|---" + "|---:" * 9 + "|"
)


async def equal_servers(asked: list[Request], latency: float) -> list[str]:
    priority = {r.tag: r.priority for r in asked}
    async with servers([latency, latency]) as pair:
        urls = [url for url, _ in pair]
        one = await through_raygate(urls[:1], asked)
        two = await through_raygate(urls, asked)
    rate = one.ok / one.seconds
    return [row(one, priority), row(two, priority, rate)]


async def unequal_servers(asked: list[Request], latencies: list[float]) -> list[str]:
    priority = {r.tag: r.priority for r in asked}
    async with servers(latencies) as pair:
        run = await through_raygate([url for url, _ in pair], asked)
    best = best_split(latencies, len(asked))
    return [
        row(run, priority),
        f"\nmakespan {run.seconds:.2f} s; best split {best:.2f} s: {run.seconds / best:.3f}x",
    ]


async def killed_server(asked: list[Request], latency: float) -> list[str]:
    priority = {r.tag: r.priority for r in asked}
    out_after: list[float] = []
    killed_at: list[float] = []  # monotonic time
    half_time: list[float] = []  # seconds after the slots were let go

    async with servers([latency, latency]) as pair:
        (survivor, _), (doomed, process) = pair
        doomed_group = _group_of(doomed)

        async def kill_at_half_time(manager: ManagerClient, started: float) -> None:
            await asyncio.sleep(len(asked) * latency / 2 / 2)
            process.kill()
            killed_at.append(time.monotonic())
            half_time.append(killed_at[0] - started)
            while (await manager.stats()).groups[doomed_group].out_reason is None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            out_after.append(time.monotonic() - killed_at[0])

        run = await through_raygate([survivor, doomed], asked, during=kill_at_half_time)
    after = sum(1 for call in run.calls.get(survivor, []) if call.started > killed_at[0])
    return [
        row(run, priority),
        f"\nkilled {half_time[0]:.2f} s in: the other server answered {after} calls after "
        f"the kill; out of rotation {out_after[0]:.2f} s after it",
    ]


def _group_of(url: str) -> str:
    from actors.groups import classify

    return classify("openai-compatible", url).id


async def fallback_burst(count: int, latency: float, after: float) -> list[str]:
    """``count`` calls at once to a cap-1 server's model that falls back after ``after``
    seconds to an unlimited one (see the module)."""
    from actors.client import ManagerClient
    from actors.groups import ModelEntry
    from actors.options import CallOptions
    from actors.settings import QueueSettings, Settings
    from providers.models import ChatMessage, ChatRequest
    from providers.routing import provider_for_model

    async with servers([latency, latency]) as pair:
        (local, _), (remote, _) = pair
        settings = Settings(
            models={
                "local": ModelEntry(
                    provider="openai-compatible",
                    base_url=local,
                    fallbacks=("remote",),
                    fallback_after_seconds=after,
                ),
                "remote": ModelEntry(provider="openai-compatible", base_url=remote),
            },
            queue=QueueSettings(group_limits={_group_of(remote): None}),
        )
        manager = ManagerClient.create(settings, name=f"pools-{uuid.uuid4().hex[:6]}")
        provider, model = provider_for_model(settings, "local", manager)
        await provider.ready()

        async def one(n: int) -> tuple[float, str | None]:
            message = ChatMessage(role="user", content=f"call-{n}")
            request = ChatRequest(model=model, messages=(message,), max_tokens=8)
            started = time.monotonic()
            answer = await provider.chat(request, CallOptions(request_id=f"call-{n}"))
            return time.monotonic() - started, answer.fallback_from

        for n in range(-10, 0):  # the manager learns how long a call takes
            await one(n)
        for url in (local, remote):
            await calls_at(url)
        answers = await asyncio.gather(*(one(n) for n in range(count)))
        at_local, at_remote = await calls_at(local), await calls_at(remote)
        manager.kill()
    stayed = sorted(seconds for seconds, by in answers if by is None)
    moved = sorted(seconds for seconds, by in answers if by is not None)
    return [
        f"{len(stayed)} calls stayed on the local server (took at most {stayed[-1]:.2f} s; "
        f"most at once there: {peak(at_local)}), {len(moved)} went to the fallback (took at "
        f"most {moved[-1] if moved else 0:.2f} s; {len(at_remote)} calls reached it)"
    ]


async def weighted_split(count: int, latency: float, weights: list[float]) -> list[str]:
    """``count`` calls one at a time (each finds both servers free) to a pool of two equal
    servers of these weights: the calls each server took."""
    from actors.client import ManagerClient
    from actors.groups import ModelEntry, ServerEntry
    from actors.settings import Settings
    from providers.models import ChatMessage, ChatRequest
    from providers.routing import provider_for_model

    async with servers([latency, latency]) as pair:
        urls = [url for url, _ in pair]
        weighted = tuple(
            ServerEntry(provider="openai-compatible", base_url=url, weight=weight)
            for url, weight in zip(urls, weights, strict=True)
        )
        settings = Settings(models={"pooled": ModelEntry(servers=weighted)})
        manager = ManagerClient.create(settings, name=f"pools-{uuid.uuid4().hex[:6]}")
        provider, model = provider_for_model(settings, "pooled", manager)
        await provider.ready()
        for url in urls:
            await calls_at(url)  # forget the checks of ready()
        for n in range(count):
            message = ChatMessage(role="user", content=f"call-{n}")
            await provider.chat(ChatRequest(model=model, messages=(message,), max_tokens=8))
        taken = [len(await calls_at(url)) for url in urls]
        manager.kill()
    share = " / ".join(f"{n} ({n / count:.0%})" for n in taken)
    asked = " / ".join(f"{w / sum(weights):.0%}" for w in weights)
    return [f"weights {' : '.join(f'{w:g}' for w in weights)}: {share}; their shares {asked}"]


async def beside_litellm(asked: list[Request], latency: float) -> list[str]:
    priority = {r.tag: r.priority for r in asked}
    if importlib.util.find_spec("litellm") is None:
        return ["| LiteLLM Router | not installed: .venv/bin/pip install -e '.[compare]' |"]
    lines = []
    async with servers([latency, latency]) as pair:
        urls = [url for url, _ in pair]
        lines.append(row(await through_raygate(urls, asked), priority))
        for retries in (0, LITELLM_RETRIES):
            lines.append(row(await through_litellm(urls, asked, retries), priority))
    return lines


async def main(count: int, seed: int) -> None:
    asked = requests(count, random.Random(seed))
    for latency in (0.05, 0.2):
        print(f"## equal servers, cap 1, {latency * 1e3:.0f} ms calls, {count} calls\n")
        print(HEADER)
        print("\n".join(await equal_servers(asked, latency)))
        print()
    print(f"## unequal servers, cap 1, 50 and 100 ms calls, {count} calls\n")
    print(HEADER)
    print("\n".join(await unequal_servers(asked, [0.05, 0.1])))
    print()
    print(f"## one of two 50 ms servers killed at half time, {count} calls\n")
    print(HEADER)
    print("\n".join(await killed_server(asked, 0.05)))
    print()
    print("## fallback after 2 s: a cap-1 server of 50 ms calls, a burst of 100\n")
    print("\n".join(await fallback_burst(100, 0.05, 2.0)))
    print()
    print("## weights: two 50 ms servers, 40 calls one at a time\n")
    for weights in ([1.0, 1.0], [3.0, 1.0]):
        print("\n".join(await weighted_split(40, 0.05, weights)))
    print()
    print(f"## beside LiteLLM's router, two 50 ms servers, {count} calls\n")
    print(HEADER)
    print("\n".join(await beside_litellm(asked, 0.05)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pools")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    on_embedded_ray(main(args.calls, args.seed))
