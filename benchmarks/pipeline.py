"""Makespan of the plateau job with the queue on and off, beside its lower bound.

    python -m benchmarks.pipeline [--services 4] [--plateaus 5] [--latency 0.2] [--cap 8]

The backend is a loopback server speaking the OpenAI wire format that takes
``latency`` seconds per call (the deterministic test backend). Lower bound
for a cap of C slots: every call takes ``latency``, so no schedule beats
ceil(calls / C) rounds, nor a service's chain of K features then one mappings
round: bound = latency * max(ceil(calls / C), K + 1).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import tempfile
import uuid
from pathlib import Path

# Ray reads this when it is imported: keep the embedded instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray

from actors.client import ManagerClient
from actors.groups import ModelEntry, classify
from actors.manager import get_or_create_manager
from actors.runtime import init_ray
from actors.settings import PipelineSettings, QueueSettings, Settings
from actors.timeline import peak_overlap
from pipelines.job import Outcome, run_pipeline
from pipelines.plateau import Service
from pipelines.results import ResultsFile
from tests.support.fake_llm import FakeLLMServer, OpenAIDialect
from tests.support.plateau_backend import plateau_answer

MAPPING_TYPES = ("data", "applications", "technologies")


async def makespan(services: list[Service], settings: Settings, manager: object | None) -> Outcome:
    with tempfile.TemporaryDirectory() as directory:
        return await run_pipeline(
            services,
            ResultsFile(Path(directory) / "out.jsonl"),
            settings,
            manager=manager,
            priority=5,
            progress_out=io.StringIO(),
        )


async def main(count: int, plateaus: int, latency: float, cap: int) -> None:
    with FakeLLMServer(OpenAIDialect(), hold=latency, responder=plateau_answer) as server:
        base_url = server.url + "/v1"
        group = classify("openai-compatible", base_url).id
        settings = Settings(
            models={"fake": ModelEntry(provider="openai-compatible", base_url=base_url)},
            pipeline=PipelineSettings(model="fake", plateaus=plateaus, mapping_types=MAPPING_TYPES),
            queue=QueueSettings(group_limits={group: cap}),
        )
        services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(count)]
        manager = ManagerClient(
            get_or_create_manager(settings, name=f"bench-{uuid.uuid4().hex[:8]}")
        )
        on = await makespan(services, settings, manager.handle)
        ungated = settings.model_copy(update={"queue": QueueSettings(enabled=False)})
        off = await makespan(services, ungated, None)

    calls = count * (1 + plateaus + plateaus * len(MAPPING_TYPES))
    bound = latency * max(math.ceil(calls / cap), plateaus + 1)
    peak = peak_overlap(c.held for c in on.calls)
    print(f"## plateau job: {count} services x {plateaus} plateaus x {len(MAPPING_TYPES)} types\n")
    print(
        "| calls | latency | cap | peak in flight (on) | makespan, queue on | makespan, queue off "
        "| lower bound | on / bound | off / on |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {calls} | {latency:.2f} s | {cap} | {peak} | {on.elapsed:.2f} s | {off.elapsed:.2f} s "
        f"| {bound:.2f} s | {on.elapsed / bound:.2f}x | {off.elapsed / on.elapsed:.2f}x |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=4)
    parser.add_argument("--plateaus", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--cap", type=int, default=8)
    args = parser.parse_args()
    init_ray(None, num_cpus=2)
    try:
        asyncio.run(main(args.services, args.plateaus, args.latency, args.cap))
    finally:
        ray.shutdown()
