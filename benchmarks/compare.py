"""raygate beside what users compare it with, on the same loopback backends, in one run.

    python -m benchmarks.compare [--latencies 0.05 0.5] [--callers 200] [--seed 7]

Needs Debian's ``redis-server`` and the ``compare`` extra (``redis``, ``litellm``;
never a runtime dependency of raygate):
``.venv/bin/pip install -e '.[compare]'``.

The backend is a loopback server in a process of its own that speaks OpenAI's
wire format, answers each call after a fixed latency and records when each
call started and ended there. Two of them: a "local server" that must never
see more than one call at once, and an unlimited "remote API". The systems:

- **direct, sequential** (on the local server): one call after another, in
  submission order: the floor of any system that keeps the cap of 1;
- **direct, no gating**: every call at once: the transport floor (and what
  happens to a local server nobody guards);
- **asyncio.Semaphore** in this process: the in-process floor, first come
  first served;
- **Redis, polling** and **Redis, pub/sub**: the seed "Replace Polling with
  Pub/Sub", as written there, against a real ``redis-server`` on its own
  loopback port: a request is a priority-ordered sorted set entry; as many
  workers as the cap pop it (``BZPOPMIN``), call the backend and store the
  answer (``SET`` with a 300 s TTL); the waiter polls ``GET`` every 100 ms,
  or, in the pub/sub version, checks once, subscribes, and the worker
  ``PUBLISH``es after storing (with the seed's 5 s fallback poll);
- **LiteLLM Router** with the deployment's ``max_parallel_requests`` and its
  priority scheduler (``priority=`` on ``acompletion``), without retries and
  with ``num_retries=8``;
- **raygate** on an embedded Ray: a driver's calls through the group's
  provider actor (``provider_for_model``), and from the driver itself, which
  calls the backend with its slots from the manager (``provider_in_reach``, as
  a Serve replica does).

Scenarios: on the local server, one call (the blocker) then, while it runs,
30 of random priority at once, and the same with ``--callers`` (at 50 ms
only); on the remote API, ``--callers`` at once. Columns: coordination calls per request (Redis
commands, from the server's own ``INFO commandstats``; manager calls, from
its counters: acquire, release or hand-over, renewals, and the answers that
tell a caller process its waiter next in line), the delay from one call's end to
the next call's start at the local server (p50 / p95), throughput, latency
p95, priority inversions (a call starting while a more urgent one, submitted
before, waits for the same server), the most calls the server saw at once,
rejected calls, and the makespan against as many direct sequential calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actors.stats import percentile
from benchmarks import on_embedded_ray
from benchmarks.serve import backend

BLOCKER_PRIORITY = 5
BURST = 30
REDIS_POLL_SECONDS = 0.1  # the seed's poll interval
PUBSUB_FALLBACK_SECONDS = 5.0  # the seed's fallback poll
RESPONSE_TTL_SECONDS = 300  # the seed's response TTL
LITELLM_RETRIES = 8
RUN_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class Request:
    tag: str
    priority: int  # 1..10, higher first


@dataclass
class Outcome:
    error: str | None  # the exception's class name, if the request failed
    submitted: float
    finished: float

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Call:
    """One call as the backend saw it (its clock is this machine's monotonic clock)."""

    tag: str
    started: float
    ended: float


@dataclass
class Row:
    system: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    coordination: float | None = None  # calls to Redis or the manager per request
    note: str = ""  # why it has no outcomes
    # raygate's grants passed on inside the caller's process, and of those, the ones a
    # better waiter had overtaken while the manager's notice was on its way.
    handed_over: tuple[int, int] | None = None


# A system sends each request of a wave, and says how many coordination calls it made.
Send = Callable[[Request], Awaitable[None]]


def record_calls(port: int, latency: float) -> None:
    """The backend's process: each chat completion answered after ``latency`` seconds,
    its start and end kept; ``GET /calls`` hands them over and forgets them."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from providers.testing.fake_llm import OpenAIDialect

    dialect = OpenAIDialect()
    calls: list[tuple[str, float, float]] = []

    async def chat(request: HTTPRequest) -> Response:
        started = time.monotonic()
        body = await request.json()
        await asyncio.sleep(latency)
        calls.append((body["messages"][-1]["content"], started, time.monotonic()))
        reply = dialect.answer("ok", body, (11, 7))
        return Response(reply.body, reply.status, headers=reply.headers)

    async def taken(request: HTTPRequest) -> Response:
        handed = list(calls)
        calls.clear()
        return JSONResponse(handed)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/calls", taken, methods=["GET"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


async def calls_at(base_url: str) -> list[Call]:
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        seen = (await http.get(base_url.removesuffix("/v1") + "/calls")).json()
    return [Call(*call) for call in seen]


def body(request: Request) -> dict[str, Any]:
    return {"model": "bench", "messages": [{"role": "user", "content": request.tag}]}


# -- one wave of requests --------------------------------------------------------------


async def wave(
    send: Send, requests: list[Request], *, blocker: Request | None, latency: float
) -> dict[str, Outcome]:
    """Send ``blocker``, then (a fifth of a call later, while it runs) every request at
    once; each outcome with its submit and end times."""
    outcomes: dict[str, Outcome] = {}

    async def one(request: Request) -> None:
        submitted = time.monotonic()
        error = None
        try:
            await send(request)
        except Exception as exc:
            error = type(exc).__name__
        outcomes[request.tag] = Outcome(error, submitted, time.monotonic())

    tasks = []
    if blocker is not None:
        tasks.append(asyncio.create_task(one(blocker)))
        await asyncio.sleep(latency / 5)
    tasks += [asyncio.create_task(one(request)) for request in requests]
    async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
        await asyncio.gather(*tasks)
    return outcomes


# -- the systems ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def direct(url: str, cap: int | None, *, sequential: bool) -> AsyncIterator[Send]:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1_000)
    order = asyncio.Lock()  # FIFO: one call after another, in the order they were sent
    async with httpx.AsyncClient(timeout=RUN_TIMEOUT_SECONDS, limits=limits) as http:

        async def send(request: Request) -> None:
            if sequential:
                async with order:
                    (await http.post(url, json=body(request))).raise_for_status()
            else:
                (await http.post(url, json=body(request))).raise_for_status()

        yield send


@contextlib.asynccontextmanager
async def semaphore(url: str, cap: int | None) -> AsyncIterator[Send]:
    gate = asyncio.Semaphore(cap or 1_000_000)
    async with direct(url, None, sequential=False) as call:

        async def send(request: Request) -> None:
            async with gate:
                await call(request)

        yield send


class RedisServer:
    """Debian's redis-server on a free loopback port, with no persistence, for one run."""

    def __init__(self) -> None:
        from providers.supervisor import free_loopback_port

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        self.port = free_loopback_port()
        self._folder = tempfile.TemporaryDirectory()
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._folder.name,
            ],
            stdout=subprocess.DEVNULL,
        )

    async def client(self) -> Any:
        import redis.asyncio as redis

        # A connection for each waiter that subscribes and each worker that blocks.
        connection = redis.Redis(port=self.port, decode_responses=True, max_connections=100_000)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                await connection.ping()
                return connection
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait()
        self._folder.cleanup()


async def commands(connection: Any) -> int:
    """Commands the Redis server has run, all kinds (``INFO`` itself excluded)."""
    stats = await connection.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


@contextlib.asynccontextmanager
async def redis_queue(
    url: str, cap: int | None, server: RedisServer, *, pubsub: bool, row: Row, count: int
) -> AsyncIterator[Send]:
    """The seed's queue: submit, ``cap`` workers, and a waiter that polls or subscribes."""
    connection = await server.client()
    await connection.flushall()
    sequence = iter(range(10**9))
    workers = cap or count

    async with direct(url, None, sequential=False) as call:

        async def worker() -> None:
            own = await server.client()
            try:
                while True:
                    _, request_id, _ = await own.bzpopmin("llm:queue", timeout=0)
                    payload = await own.get(f"llm:request:{request_id}")
                    tag, priority = payload.rsplit("|", 1)
                    try:
                        await call(Request(tag, int(priority)))
                        answer = "ok"
                    except Exception as exc:
                        answer = f"error: {exc}"
                    await own.set(f"llm:response:{request_id}", answer, ex=RESPONSE_TTL_SECONDS)
                    if pubsub:
                        await own.publish(f"llm:response:notify:{request_id}", "ready")
            finally:
                await own.aclose()

        async def send(request: Request) -> None:
            request_id = f"{request.tag}-{next(sequence)}"
            score = (10 - request.priority) * 10**9 + next(sequence)  # priority, then FIFO
            await connection.set(f"llm:request:{request_id}", f"{request.tag}|{request.priority}")
            await connection.zadd("llm:queue", {request_id: score})
            key = f"llm:response:{request_id}"
            answer = await (wait_pubsub(connection, key, request_id) if pubsub else poll(key))
            if answer != "ok":
                raise RuntimeError(answer)

        async def poll(key: str) -> str:
            # The seed's baseline is this very loop: polling is what it measures.
            while (answer := await connection.get(key)) is None:  # noqa: ASYNC110
                await asyncio.sleep(REDIS_POLL_SECONDS)
            return str(answer)

        running = [asyncio.create_task(worker()) for _ in range(workers)]
        before = await commands(connection)
        try:
            yield send
            row.coordination = (await commands(connection) - before) / count
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await connection.aclose()


async def wait_pubsub(connection: Any, key: str, request_id: str) -> str:
    """The seed's ``wait_for_result``: the answer if already there, else subscribe and
    wait for the notice, polling every 5 s as a fallback."""
    if (answer := await connection.get(key)) is not None:
        return str(answer)
    channel = connection.pubsub()
    await channel.subscribe(f"llm:response:notify:{request_id}")
    try:
        while True:
            message = await channel.get_message(
                ignore_subscribe_messages=True, timeout=PUBSUB_FALLBACK_SECONDS
            )
            if (answer := await connection.get(key)) is not None:
                return str(answer)
            del message
    finally:
        await channel.unsubscribe()
        await channel.aclose()


@contextlib.asynccontextmanager
async def litellm_router(
    url: str | list[str], cap: int | None, *, retries: int, routing: str | None = None
) -> AsyncIterator[Send]:
    """LiteLLM's Router with one deployment of model "bench" per URL, each of at most
    ``cap`` calls at once, routed by its ``routing`` strategy (its default if None)."""
    # Its table of model prices from the package, not from GitHub (no network here).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    deployments = []
    for base in [url] if isinstance(url, str) else url:
        params: dict[str, Any] = {"model": "openai/bench", "api_base": base, "api_key": "sk-bench"}
        if cap is not None:
            params["max_parallel_requests"] = cap
        deployments.append({"model_name": "bench", "litellm_params": params})
    router = Router(
        model_list=deployments,
        num_retries=retries,
        polling_interval=0.03,  # the scheduler's documented example
        timeout=RUN_TIMEOUT_SECONDS,
        **({} if routing is None else {"routing_strategy": routing}),
    )

    async def send(request: Request) -> None:
        # LiteLLM's priority: lower is more urgent.
        await router.acompletion(
            model="bench", messages=body(request)["messages"], priority=10 - request.priority
        )

    yield send


@contextlib.asynccontextmanager
async def raygate_driver(
    url: str, cap: int | None, *, row: Row, count: int, in_process: bool
) -> AsyncIterator[Send]:
    """Calls through the group's provider actor, or (``in_process``) from this process,
    which calls the backend itself with its slots from the manager, as a Serve replica
    does (``providers.routing``)."""
    from actors.client import ManagerClient
    from actors.groups import ModelEntry, classify
    from actors.options import CallOptions
    from actors.settings import QueueSettings, Settings
    from providers.client import ChatProvider, ProviderClient
    from providers.gated import GatedProvider
    from providers.models import ChatMessage, ChatRequest
    from providers.routing import provider_for_model, provider_in_reach

    group = classify("openai-compatible", url).id
    settings = Settings(
        models={"bench": ModelEntry(provider="openai-compatible", base_url=url)},
        queue=QueueSettings(group_limits={group: cap}, max_pending_per_group=100_000),
    )
    name = f"compare-{os.getpid()}-{time.time_ns()}"
    manager = ManagerClient.create(settings, name=name)
    actor, model = provider_for_model(settings, "bench", manager)
    assert isinstance(actor, ProviderClient)  # "bench" is one server's
    await actor.ready()
    provider: ChatProvider = actor
    if in_process:
        provider, model = await provider_in_reach(settings, "bench", manager)

    async def send(request: Request) -> None:
        chat = ChatRequest(model=model, messages=(ChatMessage(role="user", content=request.tag),))
        await provider.chat(chat, CallOptions(priority=request.priority))

    def counted(stats: Any) -> int:
        g = stats.groups.get(group)
        # Acquires, releases (a hand-over is one) and renewals, and the answers that tell
        # a process its waiter next in line.
        return (
            0 if g is None else g.granted + g.released + stats.renewed + stats.next_in_line_answers
        )

    try:
        await send(Request("warm-up", 5))
        before = counted(await manager.stats())
        yield send
        stats = await manager.stats()
        row.coordination = (counted(stats) - before) / count
        if group in stats.groups:
            row.handed_over = (stats.groups[group].handed_over, stats.overtaken)
    finally:
        import ray

        if isinstance(provider, GatedProvider):
            await provider.aclose()
        ray.kill(actor.handle)
        ray.kill(manager.handle)


# -- measures --------------------------------------------------------------------------


def peak(calls: list[Call]) -> int:
    edges = sorted([(c.started, 1) for c in calls] + [(c.ended, -1) for c in calls])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def turnovers(calls: list[Call]) -> list[float]:
    ordered = sorted(calls, key=lambda c: c.started)
    return [b.started - a.ended for a, b in itertools.pairwise(ordered)]


def inversions(row: Row, requests: list[Request]) -> int:
    """Calls that started while a more urgent request, submitted before, had not."""
    started = {c.tag: c.started for c in row.calls}
    return sum(
        1
        for b in requests
        if b.tag in started
        for a in requests
        if a.priority > b.priority
        and row.outcomes[a.tag].submitted < started[b.tag] < started.get(a.tag, float("inf"))
    )


def makespan(row: Row) -> float:
    outs = row.outcomes.values()
    return max(o.finished for o in outs) - min(o.submitted for o in outs)


def line(row: Row, requests: list[Request], floor: float, *, capped: bool) -> str:
    outs = list(row.outcomes.values())
    ok = [o for o in outs if o.ok]
    took = makespan(row)
    latencies = [o.finished - o.submitted for o in ok]
    gaps = turnovers(row.calls) if capped and peak(row.calls) == 1 else []
    errors = sorted({o.error for o in outs if o.error is not None})
    cells = [
        row.system,
        "-" if row.coordination is None else f"{row.coordination:.1f}",
        f"{percentile(gaps, 0.5) * 1e3:.1f} / {percentile(gaps, 0.95) * 1e3:.1f} ms"
        if gaps
        else "-",
        f"{len(ok) / took:.1f}/s",
        f"{percentile(latencies, 0.95):.2f} s" if latencies else "-",
        str(inversions(row, requests)) if capped else "-",
        str(peak(row.calls)),
        f"{len(outs) - len(ok)} ({', '.join(errors)})" if errors else "0",
        f"{took:.2f} s ({took / floor:.2f}x)",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| system | calls per request | turnover p50 / p95 | throughput | latency p95 "
    "| priority inversions | max at the server | rejected | makespan (vs the first row) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


# -- the run ---------------------------------------------------------------------------


async def scenario(
    title: str,
    base: str,
    cap: int | None,
    latency: float,
    requests: list[Request],
    blocker: Request | None,
    server: RedisServer,
) -> None:
    count = len(requests) + (blocker is not None)
    url = base + "/chat/completions"
    # The floor first: one call after another for a capped server, all at once for the API.
    floors: list[tuple[str, Callable[[Row], contextlib.AbstractAsyncContextManager[Send]]]] = [
        ("direct, sequential", lambda row: direct(url, cap, sequential=True)),
        ("direct, no gating", lambda row: direct(url, cap, sequential=False)),
    ]
    systems = (floors if cap is not None else floors[1:]) + [
        ("asyncio.Semaphore", lambda row: semaphore(url, cap)),
        (
            "Redis, polling",
            lambda row: redis_queue(url, cap, server, pubsub=False, row=row, count=count),
        ),
        (
            "Redis, pub/sub",
            lambda row: redis_queue(url, cap, server, pubsub=True, row=row, count=count),
        ),
        ("LiteLLM Router", lambda row: litellm_router(base, cap, retries=0)),
        (
            f"LiteLLM Router, {LITELLM_RETRIES} retries",
            lambda row: litellm_router(base, cap, retries=LITELLM_RETRIES),
        ),
        (
            "raygate, through the provider actor",
            lambda row: raygate_driver(base, cap, row=row, count=count, in_process=False),
        ),
        (
            "raygate, the caller calls the backend",
            lambda row: raygate_driver(base, cap, row=row, count=count, in_process=True),
        ),
    ]
    rows: list[Row] = []
    for name, system in systems:
        row = Row(name)
        await calls_at(base)  # forget the calls before this system's
        try:
            async with system(row) as send:
                row.outcomes = await wave(send, requests, blocker=blocker, latency=latency)
        except TimeoutError:
            row.note = f"gave up after {RUN_TIMEOUT_SECONDS:.0f} s"
        row.calls = [c for c in await calls_at(base) if c.tag != "warm-up"]
        rows.append(row)
    floor = makespan(rows[0])
    print(f"\n### {title}\n")
    print(f"{count} requests; the first row took {floor:.2f} s.\n")
    print(HEADER)
    everyone = requests + ([blocker] if blocker else [])
    for row in rows:
        if row.outcomes:
            print(line(row, everyone, floor, capped=cap is not None))
        else:
            print(f"| {row.system} | {row.note} |")
    print()
    for row in rows:
        if row.handed_over is not None and cap is not None:
            handed, overtaken = row.handed_over
            print(f"{row.system}: {handed} grants passed on in the caller, {overtaken} overtaken")


async def main(latencies: list[float], callers: int, seed: int) -> None:
    rng = random.Random(seed)

    def crowd(prefix: str, n: int) -> list[Request]:
        return [Request(f"{prefix}-{i}", rng.randint(1, 10)) for i in range(n)]

    server = RedisServer()
    try:
        for latency in latencies:
            ms = f"{latency * 1e3:.0f} ms"
            async with backend(latency, record_calls) as local:
                await scenario(
                    f"Local server, cap 1, {ms} calls: a blocker, then {BURST} of random priority",
                    local,
                    1,
                    latency,
                    crowd("burst", BURST),
                    Request("blocker", BLOCKER_PRIORITY),
                    server,
                )
                if latency <= 0.1:
                    await scenario(
                        f"Local server, cap 1, {ms} calls: a blocker, then {callers} callers",
                        local,
                        1,
                        latency,
                        crowd("crowd", callers),
                        Request("blocker", BLOCKER_PRIORITY),
                        server,
                    )
            async with backend(latency, record_calls) as remote:
                await scenario(
                    f"Remote API, no limit, {ms} calls: {callers} callers at once",
                    remote,
                    None,
                    latency,
                    crowd("remote", callers),
                    None,
                    server,
                )
    finally:
        server.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.05, 0.5])
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    on_embedded_ray(main(args.latencies, args.callers, args.seed))


if __name__ == "__main__":
    cli()
