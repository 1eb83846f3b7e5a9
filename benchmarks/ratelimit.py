"""A provider's rate limit, met three ways: retries after each 429 alone, the rate the manager
learns from the 429s, or the manager's budget set to the limit.

    python -m benchmarks.ratelimit [--requests 500] [--rpm 300]

On an embedded Ray, a loopback server in OpenAI's wire format enforces its
own requests-per-minute limit the way OpenAI does: a bucket of one minute's
requests that refills continuously, and 429 with ``Retry-After`` past it.
``--requests`` chat completions are sent at once through a provider actor,
side by side in one run:

- **retries only** (``queue.adaptive: false``, no budget): each call that
  gets 429 waits the ``Retry-After`` and tries again (4 attempts, within
  300 s), alone;
- **adaptive** (the default, no budget): a 429 pauses the whole group until
  its ``Retry-After``, and the manager paces the group at a rate learned from
  the 429s (:mod:`actors.adaptive`); the calls still retry as above;
- **budget**: ``queue.group_budgets`` set to the provider's limit, so the
  manager grants no more than it allows.

Per run: calls answered, calls failed and their errors, 429s the provider
sent, the makespan,
the makespan over the least the limit allows (a full bucket goes at once,
the rest at ``rpm / 60`` a second, so 1.00 is the limit's own pace), and the
429s among the requests that reached the provider more than a second after
its first 429 (once the first pause is over).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from benchmarks import on_embedded_ray

KEY = "sk-bench"


@dataclass(frozen=True)
class Run:
    answered: int
    failed: Counter[str]
    refused: int
    makespan: float
    # 429s and requests that reached the provider a second after its first 429 or later.
    refused_later: int
    arrived_later: int


MODES = {
    "retries only": {"adaptive": False},
    "adaptive": {},
    "budget set to the provider's": {},
}


async def run(requests: int, rpm: int, mode: str) -> Run:
    import ray
    from pydantic import SecretStr

    from actors.budget import BudgetLimits
    from actors.client import ManagerClient
    from actors.groups import classify
    from actors.settings import QueueSettings, Settings
    from providers.actor import ProviderOptions, get_or_create_provider
    from providers.models import ChatMessage, ChatRequest
    from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
    from providers.testing.rate_limits import ProviderLimits

    limits = ProviderLimits(rpm=rpm)
    request = ChatRequest(
        model="gpt-4o-mini", messages=(ChatMessage(role="user", content="hi"),), max_tokens=8
    )
    with FakeLLMServer(OpenAIDialect(api_key=KEY), responder=limits) as server:
        spec = classify("openai", server.url + "/v1")
        budgets = {spec.id: BudgetLimits(rpm=rpm)} if mode.startswith("budget") else {}
        settings = Settings(queue=QueueSettings(group_budgets=budgets, **MODES[mode]))
        name = f"ratelimit-{mode.split()[0]}"
        manager = ManagerClient.create(settings, name=name)
        options = ProviderOptions(api_key=SecretStr(KEY), timeout=60)
        provider = get_or_create_provider(spec, options, manager)
        try:
            await provider.ready()
            started = time.monotonic()
            answers = await asyncio.gather(
                *(provider.chat(request) for _ in range(requests)), return_exceptions=True
            )
            makespan = time.monotonic() - started
        finally:
            ray.kill(provider.handle)
            manager.kill()
    failed = Counter(type(a).__name__ for a in answers if isinstance(a, BaseException))
    first = next((at for at, refused in limits.arrivals if refused), None)
    later = [] if first is None else [r for at, r in limits.arrivals if at > first + 1.0]
    return Run(requests - failed.total(), failed, limits.limited, makespan, sum(later), len(later))


async def main(requests: int, rpm: int) -> None:
    rate = rpm / 60
    least = max(0, requests - rpm) / rate
    print(f"{requests} requests at once; the provider allows {rpm} a minute ({rate:g}/s)")
    print(f"the least makespan its limit allows: {least:.1f} s\n")
    print(
        "| raygate | answered | failed (with) | 429s received | 429s after the first pause "
        "| makespan | makespan / least |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in MODES:
        result = await run(requests, rpm, mode)
        ratio = f"{result.makespan / least:.2f}" if least else "-"
        failed = ", ".join(f"{n} {error}" for error, n in result.failed.most_common()) or "0"
        later = (
            f"{result.refused_later} of {result.arrived_later} "
            f"({result.refused_later / result.arrived_later:.1%})"
            if result.arrived_later
            else "-"
        )
        print(
            f"| {mode} | {result.answered} | {failed} | {result.refused} | {later} "
            f"| {result.makespan:.1f} s | {ratio} |"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rpm", type=int, default=300)
    args = parser.parse_args()
    on_embedded_ray(main(args.requests, args.rpm))


if __name__ == "__main__":
    cli()
