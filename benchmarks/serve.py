"""What the HTTP endpoint adds: straight to the backend, through bare Serve, through raygate.

    python -m benchmarks.serve [--latency 0.05] [--clients 1 16 128]

On an embedded Ray, one loopback server speaking OpenAI's wire format answers
every request after ``--latency`` seconds. The same chat completion request
goes, side by side in one run, (a) straight to that server, (b) through a
bare Ray Serve deployment that only forwards the body to it, and (c) through
raygate's endpoint (``serve.app``) on an unlimited group: provider actor,
manager and all. Per number of concurrent clients: requests per second and
the latency p50 / p95, and for (b) and (c) the latency each adds to (a).
The clients are asyncio tasks with one httpx client in this driver, which
shares the machine's 2 cores with Serve's proxy, the replicas and the actors.
Then where raygate's added latency goes: the same request from this driver
straight to the group's provider actor (the hop raygate's replica makes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import on_embedded_ray

KEY = "sk-bench"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass(frozen=True)
class Cell:
    rps: float
    p50: float
    p95: float


async def measure(call: Callable[[], Awaitable[None]], clients: int, total: int) -> Cell:
    """``total`` calls from ``clients`` concurrent clients, each one after another."""
    latencies: list[float] = []

    async def client(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(2) for _ in range(clients)))  # warm-up
    latencies.clear()
    started = time.perf_counter()
    await asyncio.gather(*(client(total // clients) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=20)
    return Cell(len(latencies) / elapsed, statistics.median(latencies), cuts[18])


async def load(url: str, clients: int, total: int) -> Cell:
    """``measure`` of a POST of the request to ``url``."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as http:

        async def post() -> None:
            (await http.post(url, json=BODY)).raise_for_status()

        return await measure(post, clients, total)


def added(cell: Cell, direct: Cell) -> str:
    """The latency ``cell`` adds to the direct path, p50 / p95."""
    p50, p95 = (cell.p50 - direct.p50) * 1e3, (cell.p95 - direct.p95) * 1e3
    return f"{p50:.1f} / {p95:.1f} ms"


async def main(latency: float, client_counts: list[int]) -> None:
    import httpx
    from pydantic import SecretStr
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from actors.groups import ModelEntry, classify
    from actors.manager import get_or_create_manager
    from actors.settings import QueueSettings, ServeSettings, Settings
    from providers.actor import provider_for_model
    from providers.models import ChatMessage, ChatRequest
    from providers.supervisor import free_loopback_port
    from serve.app import application
    from tests.support.fake_llm import FakeLLMServer, OpenAIDialect

    @serve.deployment(max_ongoing_requests=20_000, ray_actor_options={"num_cpus": 0})
    class Forward:
        """Bare Serve: the body to the backend and its answer back, nothing else."""

        def __init__(self, url: str) -> None:
            self._url = url
            self._http: Any = None

        async def __call__(self, request: Request) -> Response:
            if self._http is None:
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=1_000)
                self._http = httpx.AsyncClient(timeout=120, limits=limits)
            headers = {"content-type": "application/json"}
            answer = await self._http.post(self._url, content=await request.body(), headers=headers)
            return Response(answer.content, answer.status_code, media_type="application/json")

    with FakeLLMServer(OpenAIDialect(), hold=latency) as backend:
        base_url = backend.url + "/v1"
        group = classify("openai-compatible", base_url).id
        settings = Settings(
            models={"bench": ModelEntry(provider="openai-compatible", base_url=base_url)},
            queue=QueueSettings(group_limits={group: None}),  # unlimited
            serve=ServeSettings(api_keys=(SecretStr(KEY),)),
        )
        port = free_loopback_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(application(settings), name="raygate", route_prefix="/")
            forward = Forward.bind(base_url + "/chat/completions")  # type: ignore[attr-defined]
            serve.run(forward, name="bare", route_prefix="/bare")
            paths = {
                "direct": base_url + "/chat/completions",
                "bare": f"http://127.0.0.1:{port}/bare",
                "raygate": f"http://127.0.0.1:{port}/v1/chat/completions",
            }
            print(f"backend latency {latency * 1e3:.0f} ms; an unlimited group\n")
            print(
                "| clients | direct req/s | direct p50 / p95 | bare Serve req/s "
                "| bare adds p50 / p95 | raygate req/s | raygate adds p50 / p95 "
                "| raygate / bare, added p50 | raygate / bare, req/s |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            # raygate's endpoint calls the group's provider actor; so does this driver here.
            provider, model = provider_for_model(settings, "bench", get_or_create_manager(settings))
            request = ChatRequest(
                model=model, messages=(ChatMessage(role="user", content="hi"),), max_tokens=8
            )

            async def through_provider() -> None:
                await provider.chat(request)

            hops = []
            for clients in client_counts:
                total = max(40, 4 * clients)
                cells = {name: await load(url, clients, total) for name, url in paths.items()}
                direct, bare, ours = cells["direct"], cells["bare"], cells["raygate"]
                hop = await measure(through_provider, clients, total)
                hops.append((clients, direct, ours, hop))

                ratio = (ours.p50 - direct.p50) / max(bare.p50 - direct.p50, 1e-9)
                print(
                    f"| {clients} | {direct.rps:.0f} | {direct.p50 * 1e3:.1f} / "
                    f"{direct.p95 * 1e3:.1f} ms | {bare.rps:.0f} | {added(bare, direct)} | "
                    f"{ours.rps:.0f} | {added(ours, direct)} | {ratio:.2f}x | "
                    f"{ours.rps / bare.rps:.2f}x |"
                )
            print("\nraygate's added latency, and its provider actor's, called from a driver\n")
            print("| clients | raygate adds p50 / p95 | the provider actor adds p50 / p95 |")
            print("|---:|---:|---:|")
            for clients, direct, ours, hop in hops:
                print(f"| {clients} | {added(ours, direct)} | {added(hop, direct)} |")
        finally:
            serve.shutdown()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 128])
    args = parser.parse_args()
    on_embedded_ray(main(args.latency, args.clients))


if __name__ == "__main__":
    cli()
