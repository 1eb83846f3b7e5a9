"""Calls across three groups while things die: nothing lost, no lease leaked, no limit broken.

    python -m benchmarks.chaos [--calls 300] [--seed 7] [--every 1.0]

On an embedded Ray, three loopback servers speaking OpenAI's wire format,
one per group: cap 1, cap 4, and no limit. Each answers in 0.2 s, but 8% of
its answers are a 503 and 4% come after 3 s (the providers time out after
1 s and retry, up to 3 attempts). Like llama.cpp's ``llama-server``, they stop
working on a request whose client hung up. ``--calls`` calls, a third per group, are
sent at once through four caller actors; then, one every ``--every``
seconds, the run cancels 10 waiting calls, kills a caller actor, kills the
manager, kills the cap-4 group's provider actor, kills the manager again and
kills another caller actor (the cap-1 group's calls take about 25 s, so
every event meets work in flight).

It prints how every call ended (ok, or the error it ended with), the calls
lost (no answer and no error by the end: must be 0), the leases left held
or waiting in the manager once all calls ended (must be 0), the most
requests each server worked on at once and, of those, the most whose
clients were still connected (must be <= its limit, restarts included: a
server sees a hang-up a moment after the client closed, so a call sent in
that moment may meet the work it replaces; past the limit the run prints
the requests worked on then, with when each arrived and ended in seconds
from the start, the events being at 1, 2, ... s, and which clients had
gone), and the time to recover after each manager kill: until the restarted
manager answers, and until the next call completes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from benchmarks import kill_manager, on_embedded_ray

if TYPE_CHECKING:
    from actors.client import ManagerClient
    from actors.groups import GroupSpec
    from actors.stats import QueueStats
    from providers.testing.fake_llm import Script
    from providers.testing.probe_server import ProbeServer, Received

SERVER_HOLD = 0.2


@dataclass
class Ended:
    """How calls ended, in all and by group."""

    total: Counter[str] = field(default_factory=Counter)
    by_group: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def note(self, group: str, outcome: str) -> None:
        self.total[outcome] += 1
        self.by_group[group][outcome] += 1

    def of(self, group: str) -> str:
        return ", ".join(f"{outcome} {n}" for outcome, n in self.by_group[group].most_common())


@dataclass
class Recovery:
    killed: float
    answers: float
    next_call: float | None = None

    def next_call_of(self, done_at: list[float]) -> None:
        after = [t for t in done_at if t > self.killed]
        self.next_call = min(after) - self.killed if after else None


def cancel_some(tasks: list[asyncio.Task[None]], rng: random.Random) -> None:
    """Cancel 10 of the calls still waiting or running."""
    waiting = [t for t in tasks if not t.done()]
    for task in rng.sample(waiting, min(10, len(waiting))):
        task.cancel()


async def disrupt(
    every: float, events: list[Callable[[], object] | ManagerClient]
) -> list[Recovery]:
    """Run one event every ``every`` seconds: a function, or a manager to kill (its
    recovery is returned)."""
    started = time.monotonic()
    recoveries = []
    for n, event in enumerate(events, 1):
        await asyncio.sleep(max(0.0, started + n * every - time.monotonic()))
        if callable(event):
            event()
        else:
            recoveries.append(Recovery(*await kill_manager(event)))
    return recoveries


async def run(calls: int, seed: int, every: float) -> None:
    with contextlib.ExitStack() as stack:
        await chaos(calls, seed, every, stack)


async def chaos(calls: int, seed: int, every: float, stack: contextlib.ExitStack) -> None:
    import ray

    from actors.calls import cancellable
    from actors.client import ManagerClient
    from actors.groups import Provider, classify
    from actors.names import NAMESPACE
    from actors.settings import ProviderSettings, QueueSettings, Settings
    from providers.actor import get_or_create_provider, options_for
    from providers.errors import ProviderActorLost
    from providers.models import ChatMessage, ChatRequest
    from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect

    rng = random.Random(seed)

    @ray.remote(num_cpus=0)
    class ChaosCaller:
        """Calls providers on the driver's behalf; providers watch it (actors.watch)."""

        def __init__(self) -> None:
            self._providers: dict[str, Any] = {}

        async def call(self, spec: Any, options: Any, manager: Any, request: Any) -> str:
            provider = self._providers.get(spec.id)
            if provider is None:
                provider = self._providers[spec.id] = get_or_create_provider(spec, options, manager)
            try:
                response = await provider.chat(request)
            except ProviderActorLost:
                self._providers.pop(spec.id, None)  # the next call gets a new actor
                raise
            return str(response.text)

    servers = [
        stack.enter_context(
            FakeLLMServer(
                OpenAIDialect(), hold=SERVER_HOLD, responder=chaotic(rng), stop_on_disconnect=True
            )
        )
        for _ in range(3)
    ]
    specs = [classify(Provider.OPENAI_COMPATIBLE, s.url + "/v1") for s in servers]
    limits = {specs[0].id: 1, specs[1].id: 4, specs[2].id: None}
    settings = Settings(
        queue=QueueSettings(group_limits={specs[1].id: 4, specs[2].id: None}),
        providers=ProviderSettings(
            timeout_seconds=1.0, retry_attempts=3, retry_deadline_seconds=10
        ),
    )
    client = ManagerClient.create(settings, name=f"chaos-{uuid.uuid4().hex[:6]}")
    options = options_for(Provider.OPENAI_COMPATIBLE, settings)
    callers = [
        ChaosCaller.remote()  # type: ignore[attr-defined]
        for _ in range(4)
    ]
    request = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))

    ended = Ended()
    done_at: list[float] = []

    async def one(i: int) -> None:
        spec = specs[i % 3]
        caller = callers[(i // 3) % len(callers)]
        try:
            await cancellable(caller.call.remote(spec, options, client, request))
            ended.note(spec.id, "ok")
            done_at.append(time.monotonic())
        except asyncio.CancelledError:
            ended.note(spec.id, "cancelled by the run")
            raise
        except Exception as error:
            name = type(error).__name__
            ended.note(spec.id, "caller killed" if name == "ActorDiedError" else name)

    started = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(calls)]
    provider = f"provider:{specs[1].id}"

    def kill_provider() -> None:  # made by the first call of its group
        ray.kill(ray.get_actor(provider, namespace=NAMESPACE))

    recoveries = await disrupt(
        every,
        [
            partial(cancel_some, tasks, rng),
            partial(ray.kill, callers[0]),
            client,
            kill_provider,
            client,
            partial(ray.kill, callers[1]),
        ],
    )
    _, lost = await asyncio.wait(tasks, timeout=300)
    for recovery in recoveries:
        recovery.next_call_of(done_at)
    stats, settled = await settled_stats(client)

    print(f"{calls} calls: a third each on a cap-1, a cap-4 and an unlimited group (seed {seed})")
    report(calls, ended, len(lost), stats, settled, recoveries)
    report_servers(zip(specs, servers, strict=True), limits, ended, started)
    for task in lost:
        task.cancel()


def chaotic(rng: random.Random) -> Callable[[Received], Script]:
    """Answers 8% of requests with a 503 and 4% after 3 s, the rest at once."""
    from providers.testing.fake_llm import Fail, Say, Slow

    def answer(_: Received) -> Script:
        roll = rng.random()
        return Fail(503, "overloaded") if roll < 0.08 else Slow(3.0) if roll < 0.12 else Say("ok")

    return answer


def report_servers(
    served: Iterable[tuple[GroupSpec, ProbeServer]],
    limits: dict[str, int | None],
    ended: Ended,
    started: float,
) -> None:
    for spec, server in served:
        limit = limits[spec.id]
        print(
            f"  {'no limit' if limit is None else f'cap {limit}':>8}: most at once at its "
            f"server {server.max_in_flight} ({server.max_connected} with their clients "
            f"connected); requests {len(server.received)}, "
            f"dropped by their client {server.abandoned}; calls ended: {ended.of(spec.id)}"
        )
        if limit is not None:
            report_crowding(server, limit, started)


def report_crowding(server: ProbeServer, limit: int, started: float) -> None:
    """Each moment the server worked on more than ``limit`` requests, with when each of them
    arrived and ended (seconds from the run's start), and whether its client had hung up
    by the time the last of them arrived."""
    for live in server.crowded(limit):
        arrival = live[-1]
        spans = "; ".join(
            f"request {s.request} {s.arrived - started:.3f}-"
            + ("..." if s.ended is None else f"{s.ended - started:.3f}")
            + ("" if s is arrival or s.request in arrival.beside else " (client gone)")
            for s in live
        )
        print(f"    over its limit: {spans}")


def report(
    calls: int,
    ended: Ended,
    lost: int,
    stats: QueueStats,
    settled: float,
    recoveries: list[Recovery],
) -> None:
    for outcome, count in ended.total.most_common():
        print(f"  {outcome:<24} {count}")
    explicit = sum(count for outcome, count in ended.total.items() if outcome != "ok")
    ok = ended.total["ok"]
    print(f"submitted {calls}, succeeded {ok}, failed with an explicit error {explicit}")
    print(f"lost {lost} (must be 0)")
    print(
        f"leaked leases {stats.total_active} held, {stats.total_pending} waiting (must be 0; "
        f"the manager was empty {settled:.2f}s after the last call ended)"
    )
    for n, recovery in enumerate(recoveries, 1):
        next_call = "none" if recovery.next_call is None else f"{recovery.next_call:.2f}s"
        print(
            f"manager kill {n}: answers again after {recovery.answers:.2f}s, "
            f"next call completes after {next_call}"
        )


async def settled_stats(client: ManagerClient) -> tuple[QueueStats, float]:
    """The manager's stats once nothing is held or waiting, or after 10 s; and how long
    that took. Every call has ended: a dead caller's last leases are freed when Ray
    reports its death to the manager, which may come a moment after its calls failed
    here; what is still held after 10 s (a sixth of the lease ttl) is leaked."""
    settle = time.monotonic()
    while (stats := await client.stats()).total_active + stats.total_pending and (  # noqa: ASYNC110
        time.monotonic() < settle + 10
    ):
        await asyncio.sleep(0.05)
    return stats, time.monotonic() - settle


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--every", type=float, default=1.0)
    args = parser.parse_args()
    on_embedded_ray(run(args.calls, args.seed, args.every))


if __name__ == "__main__":
    main()
