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
requests each capped server saw at once (must be <= its limit, restarts
included), and the time to recover after each manager kill: until the
restarted manager answers, and until the next call completes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from benchmarks import kill_manager, on_embedded_ray

SERVER_HOLD = 0.2


@dataclass
class Recovery:
    killed: float
    answers: float
    next_call: float | None = None


async def run(calls: int, seed: int, every: float) -> None:
    with contextlib.ExitStack() as stack:
        await chaos(calls, seed, every, stack)


async def chaos(calls: int, seed: int, every: float, stack: contextlib.ExitStack) -> None:
    import ray

    from actors.client import ManagerClient, cancellable
    from actors.groups import Provider, classify
    from actors.manager import get_or_create_manager
    from actors.names import NAMESPACE
    from actors.settings import ProviderSettings, QueueSettings, Settings
    from providers.actor import get_or_create_provider, options_for
    from providers.errors import ProviderActorLost
    from providers.models import ChatMessage, ChatRequest
    from tests.support.fake_llm import Fail, FakeLLMServer, OpenAIDialect, Say, Script, Slow
    from tests.support.probe_server import Received

    rng = random.Random(seed)

    def chaotic(_: Received) -> Script:
        roll = rng.random()
        if roll < 0.08:
            return Fail(503, "overloaded")
        if roll < 0.12:
            return Slow(3.0)
        return Say("ok")

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
                OpenAIDialect(), hold=SERVER_HOLD, responder=chaotic, stop_on_disconnect=True
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
    manager = get_or_create_manager(settings, name=f"chaos-{uuid.uuid4().hex[:6]}")
    client = ManagerClient(manager)
    options = options_for(Provider.OPENAI_COMPATIBLE, settings)
    callers = [
        ChaosCaller.remote()  # type: ignore[attr-defined]
        for _ in range(4)
    ]
    request = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))

    ended: Counter[str] = Counter()
    by_group: dict[str, Counter[str]] = {spec.id: Counter() for spec in specs}
    done_at: list[float] = []

    async def one(i: int) -> None:
        spec = specs[i % 3]
        caller = callers[(i // 3) % len(callers)]
        try:
            await cancellable(caller.call.remote(spec, options, manager, request))
            ended["ok"] += 1
            by_group[spec.id]["ok"] += 1
            done_at.append(time.monotonic())
        except asyncio.CancelledError:
            ended["cancelled by the run"] += 1
            by_group[spec.id]["cancelled by the run"] += 1
            raise
        except Exception as error:
            name = type(error).__name__
            outcome = "caller killed" if name == "ActorDiedError" else name
            ended[outcome] += 1
            by_group[spec.id][outcome] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(calls)]
    recoveries: list[Recovery] = []
    started = time.monotonic()

    async def at(second: float) -> None:
        await asyncio.sleep(max(0.0, started + second * every - time.monotonic()))

    async def restart_manager() -> None:
        killed, answers = await kill_manager(client)
        recoveries.append(Recovery(killed, answers))

    await at(1)
    waiting = [t for t in tasks if not t.done()]
    for task in rng.sample(waiting, min(10, len(waiting))):
        task.cancel()
    await at(2)
    ray.kill(callers[0])
    await at(3)
    await restart_manager()
    await at(4)
    ray.kill(ray.get_actor(f"provider:{specs[1].id}", namespace=NAMESPACE))
    await at(5)
    await restart_manager()
    await at(6)
    ray.kill(callers[1])

    _, lost = await asyncio.wait(tasks, timeout=300)
    for recovery in recoveries:
        after = [t for t in done_at if t > recovery.killed]
        recovery.next_call = min(after) - recovery.killed if after else None
    # Every call has ended. A dead caller's last leases are freed when Ray reports its
    # death to the manager, which may come a moment after its calls failed here; what
    # is still held after 10 s (a sixth of the lease ttl) is leaked.
    settle = time.monotonic()
    while (stats := await client.stats()).total_active + stats.total_pending and (  # noqa: ASYNC110
        time.monotonic() < settle + 10
    ):
        await asyncio.sleep(0.05)
    settled = time.monotonic() - settle

    print(f"{calls} calls: a third each on a cap-1, a cap-4 and an unlimited group (seed {seed})")
    for outcome, count in sorted(ended.items(), key=lambda item: -item[1]):
        print(f"  {outcome:<24} {count}")
    explicit = sum(count for outcome, count in ended.items() if outcome != "ok")
    print(f"submitted {calls}, succeeded {ended['ok']}, failed with an explicit error {explicit}")
    print(f"lost {len(lost)} (must be 0)")
    print(
        f"leaked leases {stats.total_active} held, {stats.total_pending} waiting (must be 0; "
        f"the manager was empty {settled:.2f}s after the last call ended)"
    )
    for spec, server in zip(specs, servers, strict=True):
        limit = limits[spec.id]
        print(
            f"  {'no limit' if limit is None else f'cap {limit}':>8}: most at once at its "
            f"server {server.max_in_flight}; requests {len(server.received)}, "
            f"dropped by their client {server.abandoned}; calls ended: "
            + ", ".join(f"{outcome} {n}" for outcome, n in by_group[spec.id].most_common())
        )
    for n, recovery in enumerate(recoveries, 1):
        next_call = "none" if recovery.next_call is None else f"{recovery.next_call:.2f}s"
        print(
            f"manager kill {n}: answers again after {recovery.answers:.2f}s, "
            f"next call completes after {next_call}"
        )
    for task in lost:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--every", type=float, default=1.0)
    args = parser.parse_args()
    on_embedded_ray(run(args.calls, args.seed, args.every))


if __name__ == "__main__":
    main()
