"""``python -m pipelines demo``: the seed's mixed-resource scenario through a real manager.

Seven requests for four backends arrive one after another. Remote APIs and
the remote Ollama run at once; the local Ollama takes one at a time, and the
priority-9 request that arrived later overtakes the priority-3 one waiting
before it. Each call holds its slot for a fixed time (no model is called):
the point is the gating, read from the recorded start and end times.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from actors.client import ManagerClient
from actors.groups import GroupSpec, classify
from actors.options import CallOptions
from pipelines.timeline import peak_overlap

LOCAL = classify("ollama", "http://localhost:11434")
REMOTE_OLLAMA = classify("ollama", "http://server.com:11434")
CLAUDE = classify("anthropic")
GPT = classify("openai")

SCENARIO: list[tuple[str, GroupSpec, int]] = [
    ("A", LOCAL, 5),
    ("B", CLAUDE, 10),
    ("C", LOCAL, 3),
    ("D", REMOTE_OLLAMA, 7),
    ("E", LOCAL, 9),
    ("F", GPT, 5),
    ("G", CLAUDE, 8),
]


@dataclass(frozen=True)
class Run:
    request: str
    group: str
    priority: int
    asked: float
    started: float
    ended: float


async def run_scenario(client: ManagerClient, hold: float = 0.5) -> list[Run]:
    for spec in {spec.id: spec for _, spec, _ in SCENARIO}.values():
        await client.register(spec)
    t0 = time.monotonic()
    everyone_asked = asyncio.Event()
    running = {request: asyncio.Event() for request, _, _ in SCENARIO}

    async def call(request: str, spec: GroupSpec, priority: int) -> Run:
        asked = time.monotonic() - t0
        async with client.slot(spec.id, CallOptions(priority=priority, request_id=request)):
            started = time.monotonic() - t0
            running[request].set()
            # No call ends before every request has asked, so the order in
            # which slots are handed out is the scenario's, not the machine's.
            await everyone_asked.wait()
            await asyncio.sleep(hold)
            ended = time.monotonic() - t0  # the work ends here, before the release
        return Run(request, spec.id, priority, asked, started, ended)

    tasks = []
    for request, spec, priority in SCENARIO:
        tasks.append(asyncio.create_task(call(request, spec, priority)))
        # Until the manager has it, running or queued. It lives in another
        # process, so there is no local event to wait on.
        while not running[request].is_set() and await client.position(request) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    everyone_asked.set()
    runs = await asyncio.gather(*tasks)
    await client.drain()
    return sorted(runs, key=lambda run: (run.started, run.request))


def peak_overlap_by_group(runs: list[Run]) -> dict[str, int]:
    """Most calls of each group that were running at the same moment."""
    return {
        group: peak_overlap((run.started, run.ended) for run in runs if run.group == group)
        for group in {run.group for run in runs}
    }


def report(runs: list[Run]) -> str:
    width = max(len(run.group) for run in runs)
    lines = [
        f"{'request':<8} {'group':<{width}} {'priority':>8} {'waited':>7}  ran",
    ]
    for run in runs:
        lines.append(
            f"{run.request:<8} {run.group:<{width}} {run.priority:>8} "
            f"{run.started - run.asked:>6.2f}s  {run.started:.2f}s-{run.ended:.2f}s"
        )
    lines.append("")
    lines.append("most calls at once, per group:")
    for group, peak in sorted(peak_overlap_by_group(runs).items()):
        lines.append(f"  {group:<{width}} {peak}")
    return "\n".join(lines)
