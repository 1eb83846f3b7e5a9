"""A provider's rate limit, met two ways: retries after each 429 alone, or the manager's budget.

    python -m benchmarks.ratelimit [--requests 500] [--rpm 300]

On an embedded Ray, a loopback server in OpenAI's wire format enforces its
own requests-per-minute limit the way OpenAI does: a bucket of one minute's
requests that refills continuously, and 429 with ``Retry-After`` past it.
``--requests`` chat completions are sent at once through a provider actor,
side by side in one run:

- **retries only**: no budget in raygate; each call that gets 429 waits the
  ``Retry-After`` and tries again (4 attempts, within 300 s), alone;
- **budget**: ``queue.group_budgets`` set to the provider's limit, so the
  manager grants no more than it allows.

Per run: calls answered, calls failed and their errors, 429s the provider
sent, the makespan,
and the makespan over the least the limit allows: a full bucket goes at
once, the rest at ``rpm / 60`` a second (so 1.00 is the limit's own pace).
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


async def run(requests: int, rpm: int, budget: bool) -> Run:
    import ray
    from pydantic import SecretStr

    from actors.budget import BudgetLimits
    from actors.groups import classify
    from actors.manager import get_or_create_manager
    from actors.settings import QueueSettings, Settings
    from providers.actor import ProviderOptions, get_or_create_provider
    from providers.models import ChatMessage, ChatRequest
    from tests.support.fake_llm import FakeLLMServer, OpenAIDialect
    from tests.support.rate_limits import ProviderLimits

    limits = ProviderLimits(rpm=rpm)
    request = ChatRequest(
        model="gpt-4o-mini", messages=(ChatMessage(role="user", content="hi"),), max_tokens=8
    )
    with FakeLLMServer(OpenAIDialect(api_key=KEY), responder=limits) as server:
        spec = classify("openai", server.url + "/v1")
        budgets = {spec.id: BudgetLimits(rpm=rpm)} if budget else {}
        settings = Settings(queue=QueueSettings(group_budgets=budgets))
        name = f"ratelimit-{'budget' if budget else 'retries'}"
        manager = get_or_create_manager(settings, name=name)
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
            ray.kill(manager)
    failed = Counter(type(a).__name__ for a in answers if isinstance(a, BaseException))
    return Run(requests - failed.total(), failed, limits.limited, makespan)


async def main(requests: int, rpm: int) -> None:
    rate = rpm / 60
    least = max(0, requests - rpm) / rate
    print(f"{requests} requests at once; the provider allows {rpm} a minute ({rate:g}/s)")
    print(f"the least makespan its limit allows: {least:.1f} s\n")
    print("| raygate | answered | failed (with) | 429s received | makespan | makespan / least |")
    print("|---|---:|---:|---:|---:|---:|")
    for budget in (False, True):
        result = await run(requests, rpm, budget)
        name = "budget set to the provider's" if budget else "retries only"
        ratio = f"{result.makespan / least:.2f}" if least else "-"
        failed = ", ".join(f"{n} {error}" for error, n in result.failed.most_common()) or "0"
        print(
            f"| {name} | {result.answered} | {failed} | {result.refused} "
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
