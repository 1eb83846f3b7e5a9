"""Makespan of the plateau job with the queue on and off, beside its lower bound.

    python -m benchmarks.pipeline [--services 4] [--plateaus 5] [--cap 8]
                                  [--latencies 0.2 0.5 1.0]

The backend is a loopback server speaking the OpenAI wire format that holds
each call ``latency`` seconds (the deterministic test backend), run once per
latency. Lower bound for a cap of C slots: every call takes ``latency``, so
no schedule beats ceil(calls / C) rounds, nor a service's chain of K features
then one mappings round: bound = latency * max(ceil(calls / C), K + 1).

Two makespans of the run with the queue on: end to end (what the caller
waits, from submitting the run, so it includes starting the run's
PipelineActor process; the manager and provider actors are cluster services
and run already), and the calls' own span (the first request reaching
the provider to the last answer), which is what scheduling decides. The
measured call time (slot held, at the provider) shows what the backend and
the HTTP client add to ``latency``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import tempfile
import uuid
from pathlib import Path

# Ray reads this when it is imported: keep the embedded instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


from actors.client import ManagerClient
from actors.groups import ModelEntry, classify
from actors.settings import PipelineSettings, QueueSettings, Settings
from benchmarks import on_embedded_ray
from pipelines.job import Outcome, run_pipeline
from pipelines.plateau import Service
from pipelines.results import ResultsFile
from pipelines.timeline import peak_overlap
from providers.routing import provider_for_model
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from providers.testing.plateau_backend import plateau_answer

MAPPING_TYPES = ("data", "applications", "technologies")


async def makespan(
    services: list[Service], settings: Settings, manager: ManagerClient | None
) -> Outcome:
    # The provider actor is a cluster service, running before any run starts.
    provider, _ = provider_for_model(settings, settings.pipeline.model, manager)
    await provider.ready()
    with tempfile.TemporaryDirectory() as directory:
        return await run_pipeline(
            services,
            ResultsFile(Path(directory) / "out.jsonl"),
            settings,
            manager=manager,
            progress_out=io.StringIO(),
        )


def calls_span(outcome: Outcome) -> float:
    """From the first request reaching the provider to the last answer."""
    first = min(c.started_at - c.queue_wait for c in outcome.calls)
    return max(c.started_at + c.latency for c in outcome.calls) - first


async def row(count: int, plateaus: int, latency: float, cap: int) -> str:
    with FakeLLMServer(OpenAIDialect(), hold=latency, responder=plateau_answer) as server:
        base_url = server.url + "/v1"
        group = classify("openai-compatible", base_url).id
        settings = Settings(
            models={"fake": ModelEntry(provider="openai-compatible", base_url=base_url)},
            pipeline=PipelineSettings(model="fake", plateaus=plateaus, mapping_types=MAPPING_TYPES),
            queue=QueueSettings(group_limits={group: cap}),
        )
        services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(count)]
        manager = ManagerClient.create(settings, name=f"bench-{uuid.uuid4().hex[:8]}")
        on = await makespan(services, settings, manager)
        manager.kill()
        ungated = settings.model_copy(update={"queue": QueueSettings(enabled=False)})
        off = await makespan(services, ungated, None)

    calls = len(on.calls)
    if on.failed or off.failed or calls != count * (1 + plateaus + plateaus * len(MAPPING_TYPES)):
        raise RuntimeError(f"a run did not complete: {on.failed} and {off.failed} services failed")
    bound = latency * max(math.ceil(calls / cap), plateaus + 1)
    held = statistics.median(c.latency for c in on.calls)
    span = calls_span(on)
    peak = peak_overlap(c.held for c in on.calls)
    return (
        f"| {latency:.2f} s | {held:.3f} s | {calls} | {cap} | {peak} "
        f"| {bound:.2f} s | {span:.2f} s | {on.elapsed:.2f} s | {off.elapsed:.2f} s "
        f"| {span / bound:.2f}x | {on.elapsed / bound:.2f}x | {off.elapsed / on.elapsed:.2f}x |"
    )


async def main(count: int, plateaus: int, latencies: list[float], cap: int) -> None:
    print(f"## plateau job: {count} services x {plateaus} plateaus x {len(MAPPING_TYPES)} types\n")
    print(
        "| latency | call time (median) | calls | cap | peak in flight | lower bound "
        "| on: calls' span | on: end to end | off | span / bound | end to end / bound "
        "| off / on |"
    )
    print("|---:" * 12 + "|")
    for latency in latencies:
        print(await row(count, plateaus, latency, cap), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=4)
    parser.add_argument("--plateaus", type=int, default=5)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--cap", type=int, default=8)
    args = parser.parse_args()
    on_embedded_ray(main(args.services, args.plateaus, args.latencies, args.cap))
