"""What the HTTP endpoint adds: straight to the backend, through bare Serve, through raygate.

    python -m benchmarks.serve [--latency 0.05] [--clients 1 16 128] [--rounds 3]

On an embedded Ray, one loopback server speaking OpenAI's wire format answers
every request after ``--latency`` seconds: an asyncio server (uvicorn) in a
process of its own, so that it keeps up with 128 clients and does not share
this driver's GIL with them. The same chat completion request goes, side by
side in one run, (a) straight to that server, (b) through a bare Ray Serve
deployment that only forwards the body to it, and (c) through raygate's
endpoint (``serve.app``) on an unlimited group: the replica takes a slot
from the manager and calls the server itself, which is on its node.

Per number of concurrent clients: requests per second and the latency
p50 / p95, and for (b) and (c) the latency each adds to (a). The three
paths take turns, ``--rounds`` times, and each figure is the median of its
rounds, so that the machine's drift meets all three alike. The clients are
asyncio tasks in this driver, each with a connection of its own, on the
same 2 cores as Serve's proxy, the replicas and the manager.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple, dataclass
from typing import Any

from benchmarks import on_embedded_ray

KEY = "sk-bench"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass(frozen=True)
class Cell:
    rps: float
    p50: float
    p95: float


async def load(url: str, clients: int, total: int) -> Cell:
    """``total`` POSTs of the request to ``url`` from ``clients`` concurrent clients (see
    :func:`closed_loop`), every one answered."""
    latencies, refused, elapsed = await closed_loop(url, clients, total)
    if refused:
        raise RuntimeError(f"{url} refused {refused} requests (429)")
    cuts = statistics.quantiles(latencies, n=20)
    return Cell(len(latencies) / elapsed, statistics.median(latencies), cuts[18])


async def closed_loop(
    url: str, clients: int, total: int, key: str = KEY
) -> tuple[list[float], int, float]:
    """``total`` POSTs of the request to ``url`` from ``clients`` concurrent clients, one
    after another each, on a connection of its own (one shared httpx pool serves
    128 concurrent requests several times slower than 128 clients would), after two
    each to open the connections: the latency of each one answered, how many were
    refused (429: the client goes on), and the seconds they took. Any other error ends
    the run."""
    import httpx

    latencies: list[float] = []
    refused = 0
    headers = {"Authorization": f"Bearer {key}"}

    async def client(http: httpx.AsyncClient, count: int) -> None:
        nonlocal refused
        for _ in range(count):
            started = time.perf_counter()
            answer = await http.post(url, json=BODY)
            if answer.status_code == 429:
                refused += 1
                continue
            answer.raise_for_status()
            latencies.append(time.perf_counter() - started)

    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=120, headers=headers))
            for _ in range(clients)
        ]
        await asyncio.gather(*(client(http, 2) for http in https))  # warm-up: connections open
        latencies.clear()
        refused = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(http, total // clients) for http in https))
        elapsed = time.perf_counter() - started
    return latencies, refused, elapsed


def added(cell: Cell, direct: Cell) -> str:
    """The latency ``cell`` adds to the direct path, p50 / p95."""
    p50, p95 = (cell.p50 - direct.p50) * 1e3, (cell.p95 - direct.p95) * 1e3
    return f"{p50:.1f} / {p95:.1f} ms"


def answer_after(port: int, latency: float) -> None:
    """The backend's process: each chat completion answered in OpenAI's shape after
    ``latency`` seconds."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from providers.testing.fake_llm import OpenAIDialect

    dialect = OpenAIDialect()

    async def chat(request: Request) -> Response:
        body = await request.json()
        await asyncio.sleep(latency)
        reply = dialect.answer("ok", body, (11, 7))
        return Response(reply.body, reply.status, headers=reply.headers)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


@contextlib.asynccontextmanager
async def backend(
    latency: float, target: Callable[[int, float], None] = answer_after
) -> AsyncIterator[str]:
    """The base URL of a backend process (``target(port, latency)``), once it answers; the
    process is ended on the way out."""
    async with backend_process(latency, target) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def backend_process(
    latency: float, target: Callable[[int, float], None] = answer_after
) -> AsyncIterator[tuple[str, multiprocessing.process.BaseProcess]]:
    """As :func:`backend`, with the process (to kill it mid-run)."""
    import httpx

    from providers.supervisor import free_loopback_port

    port = free_loopback_port()
    process = multiprocessing.get_context("spawn").Process(
        target=target, args=(port, latency), daemon=True
    )
    process.start()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(60):
            while True:
                if not process.is_alive():
                    raise RuntimeError(f"the backend's process ended ({process.exitcode})")
                with contextlib.suppress(httpx.TransportError):
                    (await http.post(url + "/chat/completions", json=BODY)).raise_for_status()
                    break
                await asyncio.sleep(0.1)  # the process is still starting
        yield url, process
    finally:
        process.terminate()
        process.join()


def median_cell(cells: list[Cell]) -> Cell:
    return Cell(*(statistics.median(values) for values in zip(*map(astuple, cells), strict=True)))


async def main(latency: float, client_counts: list[int], rounds: int) -> None:
    import httpx
    from pydantic import SecretStr
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from actors.groups import ModelEntry, classify
    from actors.settings import QueueSettings, ServeSettings, Settings
    from providers.supervisor import free_loopback_port
    from serve.app import application

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

    async with backend(latency) as base_url:
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
            print(f"backend latency {latency * 1e3:.0f} ms; an unlimited group; ", end="")
            print(f"medians of {rounds} rounds\n")
            print(
                "| clients | direct req/s | direct p50 / p95 | bare Serve req/s "
                "| bare adds p50 / p95 | raygate req/s | raygate adds p50 / p95 "
                "| raygate / bare, added p50 | raygate / bare, req/s |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for clients in client_counts:
                total = max(40, 4 * clients)
                runs: dict[str, list[Cell]] = {name: [] for name in paths}
                for _ in range(rounds):
                    for name, url in paths.items():
                        runs[name].append(await load(url, clients, total))
                direct, bare, ours = (median_cell(runs[name]) for name in paths)

                bare_adds = bare.p50 - direct.p50
                ratio = f"{(ours.p50 - direct.p50) / bare_adds:.2f}x" if bare_adds > 0 else "n/a"
                print(
                    f"| {clients} | {direct.rps:.0f} | {direct.p50 * 1e3:.1f} / "
                    f"{direct.p95 * 1e3:.1f} ms | {bare.rps:.0f} | {added(bare, direct)} | "
                    f"{ours.rps:.0f} | {added(ours, direct)} | {ratio} | "
                    f"{ours.rps / bare.rps:.2f}x |"
                )
        finally:
            serve.shutdown()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    on_embedded_ray(main(args.latency, args.clients, args.rounds))


if __name__ == "__main__":
    cli()
