"""What a cap costs over HTTP: raygate's endpoint gated, the same with the queue off, and
LiteLLM's proxy, in front of one loopback server, in one run.

    python -m benchmarks.gateways [--clients 64] [--limit 32] [--latency 0.02]
                                  [--requests 640] [--rounds 3]

One loopback server speaking OpenAI's wire format answers every request
after ``--latency`` seconds (an asyncio server in a process of its own; see
benchmarks.serve). In front of it, side by side:

- **raygate, gated**: the Serve app (``serve.app``) with the model's group
  capped at ``--limit``;
- **raygate, queue off**: the same app with ``queue.enabled: false``, which
  calls the server directly (the gate's cost is gated / queue off);
- **LiteLLM's proxy** (``litellm --config``, ``litellm[proxy]`` from the
  ``compare`` extra), its deployment's ``max_parallel_requests`` at
  ``--limit`` and nothing else set: over the cap it answers 429 at once
  instead of queueing, and those answers are counted apart;
- **the server alone**.

``--clients`` closed-loop clients (each with its own connection, one request
after another) send ``--requests`` requests in all to each, the four taking
turns ``--rounds`` times; each figure is the median of its rounds. These
machines are CPU-bound at this load (the clients, Serve's proxy and replica,
the manager and LiteLLM's proxy share 2 cores), so the ratios in one run are
the result, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import astuple, dataclass
from pathlib import Path

from benchmarks import on_embedded_ray
from benchmarks.serve import BODY, KEY, backend, closed_loop


@dataclass(frozen=True)
class Row:
    # Requests answered 200 a second, and those refused (429) in the run.
    ok_per_second: float
    refused: int
    p50: float
    p95: float


async def load(url: str, clients: int, total: int, key: str = KEY) -> Row:
    """``total`` requests to ``url`` from ``clients`` closed-loop clients (see
    :func:`benchmarks.serve.closed_loop`); a 429 is counted and the client goes on."""
    latencies, refused, elapsed = await closed_loop(url, clients, total, key)
    cuts = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [0.0] * 19
    return Row(len(latencies) / elapsed, refused, statistics.median(latencies), cuts[18])


@contextlib.asynccontextmanager
async def litellm_proxy(base_url: str, limit: int) -> AsyncIterator[tuple[str, str]]:
    """LiteLLM's proxy in a process of its own, with one deployment of model "bench" at
    ``base_url`` capped at ``limit`` calls at once: its chat completions URL, and the key
    it takes (it starts only with a strong one)."""
    import httpx

    from providers.supervisor import free_loopback_port

    port = free_loopback_port()
    master = f"sk-{secrets.token_hex(32)}"
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: bench\n"
            "    litellm_params:\n"
            "      model: openai/bench\n"
            f"      api_base: {base_url}\n"
            f"      api_key: {KEY}\n"
            f"      max_parallel_requests: {limit}\n"
            "general_settings:\n"
            f"  master_key: {master}\n"
        )
        litellm = Path(sys.executable).with_name("litellm")
        # Its table of model prices from the package, not from GitHub (no network here).
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        command = [str(litellm), "--config", str(config), "--host", "127.0.0.1"]
        process = await asyncio.create_subprocess_exec(
            *command,
            "--port",
            str(port),
            "--num_workers",
            "1",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            headers = {"Authorization": f"Bearer {master}"}
            async with httpx.AsyncClient(timeout=10, headers=headers) as http, asyncio.timeout(120):
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"LiteLLM's proxy exited {process.returncode}")
                    with contextlib.suppress(httpx.TransportError):
                        (await http.post(url, json=BODY)).raise_for_status()
                        break
                    await asyncio.sleep(0.2)  # the proxy is still starting
            yield url, master
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


def median_row(rows: list[Row]) -> Row:
    medians = (statistics.median(values) for values in zip(*map(astuple, rows), strict=True))
    ok, refused, p50, p95 = medians
    return Row(ok, int(refused), p50, p95)


async def main(clients: int, limit: int, latency: float, requests: int, rounds: int) -> None:
    from pydantic import SecretStr
    from ray import serve

    from actors.groups import ModelEntry, classify
    from actors.settings import QueueSettings, ServeSettings, Settings
    from providers.supervisor import free_loopback_port
    from serve.app import application

    async with backend(latency) as base_url, litellm_proxy(base_url, limit) as (proxy, master):
        group = classify("openai-compatible", base_url).id
        model = {"bench": ModelEntry(provider="openai-compatible", base_url=base_url)}
        keys = ServeSettings(api_keys=(SecretStr(KEY),))
        gated = Settings(models=model, queue=QueueSettings(group_limits={group: limit}), serve=keys)
        off = Settings(models=model, queue=QueueSettings(enabled=False), serve=keys)
        port = free_loopback_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(application(gated), name="gated", route_prefix="/gated")
            serve.run(application(off), name="off", route_prefix="/off")
            paths = {
                "raygate, gated": f"http://127.0.0.1:{port}/gated/v1/chat/completions",
                "raygate, queue off": f"http://127.0.0.1:{port}/off/v1/chat/completions",
                "LiteLLM's proxy": proxy,
                "the server alone": base_url + "/chat/completions",
            }
            runs: dict[str, list[Row]] = {name: [] for name in paths}
            for n in range(rounds):
                # Each goes first in turn: none always meets a warmer machine.
                turn = list(paths.items())
                for name, url in turn[n % len(turn) :] + turn[: n % len(turn)]:
                    key = master if url == proxy else KEY
                    runs[name].append(await load(url, clients, requests, key))
        finally:
            serve.shutdown()
    rows = {name: median_row(each) for name, each in runs.items()}
    print(
        f"{clients} closed-loop clients, {requests} requests each round, calls of "
        f"{latency * 1e3:.0f} ms, limit {limit}; medians of {rounds} rounds\n"
    )
    print("| in front of the server | answered req/s | refused (429) | p50 / p95 |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row.ok_per_second:.0f} | {row.refused} | "
            f"{row.p50 * 1e3:.1f} / {row.p95 * 1e3:.1f} ms |"
        )
    ours, off_row, theirs = (rows[name] for name in list(paths)[:3])
    print(
        "\nraygate gated / queue off, answered req/s: "
        f"{ours.ok_per_second / off_row.ok_per_second:.2f}x; "
        f"gated / LiteLLM's proxy: {ours.ok_per_second / theirs.ok_per_second:.2f}x"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    on_embedded_ray(main(args.clients, args.limit, args.latency, args.requests, args.rounds))


if __name__ == "__main__":
    cli()
