"""Do the embedded models answer? The answer-quality check, model beside model, in one run.

    python -m benchmarks.answers [--models ID ...] [--job examples/services.jsonl] [--rounds 1]

For each embedded model (the default first, then Gemma 3 270M), one llama.cpp
server of its own (2 threads, no gate, no cache), asked the fixed prompts of
:mod:`pipelines.answers` one at a time: each answer is checked plainly and
timed. With ``--job``, the main job's plateau chain then runs on that file's
services straight against the server (no Ray: the model is what is measured),
and each record gets :func:`pipelines.answers.check_record`. Printed per
model: prompts passed, the median and total seconds of its answers, and each
failure's problems; with ``--job``, records passed and the job's seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from actors.options import CallOptions
from actors.settings import PipelineSettings
from pipelines.answers import Verdict, check_record, judged, prompts
from pipelines.plateau import PlateauJob, Service, read_services
from providers.http import Backend
from providers.llamacpp import EMBEDDED_MODELS, EmbeddedModel, served
from providers.models import ChatRequest, ChatResponse


async def ask_each(backend: Backend, model: EmbeddedModel) -> list[Verdict]:
    return [await judged(backend.chat, prompt) for prompt in prompts(model.id)]


async def run_job(backend: Backend, model: EmbeddedModel, services: list[Service]) -> list[str]:
    """The main job's chain on ``services``, every call straight to ``backend``; one line
    per service: its problems, or "ok"."""

    async def ask(request: ChatRequest, options: CallOptions) -> ChatResponse:
        return await backend.chat(request)

    job = PlateauJob(ask, PipelineSettings(cache=False), model.id)
    lines = []
    for service in services:
        problems = check_record(service, await job.run(service))
        lines.append(f"{service.id}: {'; '.join(problems) or 'ok'}")
    return lines


def report(model: EmbeddedModel, verdicts: list[Verdict]) -> None:
    passed = sum(v.passed for v in verdicts)
    seconds = [v.seconds for v in verdicts]
    print(
        f"{model.id}: {passed}/{len(verdicts)} prompts passed ({passed / len(verdicts):.0%}); "
        f"median {statistics.median(seconds):.2f} s, total {sum(seconds):.1f} s"
    )
    for verdict in verdicts:
        if not verdict.passed:
            answer = verdict.answer.replace("\n", " ")[:90]
            print(f"  {verdict.prompt}: {'; '.join(verdict.problems)} | {answer!r}")


async def main(models: list[EmbeddedModel], job: list[Service] | None, rounds: int) -> None:
    for round_ in range(1, rounds + 1):
        if rounds > 1:
            print(f"-- round {round_}")
        for model in models:
            async with served(model) as backend:
                report(model, await ask_each(backend, model))
                if job is not None:
                    started = time.monotonic()
                    lines = await run_job(backend, model, job)
                    passed = sum(line.endswith(": ok") for line in lines)
                    took = time.monotonic() - started
                    print(f"  main job: {passed}/{len(lines)} records passed in {took:.0f} s")
                    for line in lines:
                        print(f"    {line}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.answers")
    parser.add_argument("--models", nargs="+", choices=list(EMBEDDED_MODELS))
    parser.add_argument("--job", type=Path, help="a services file to run the main job on")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    chosen = [EMBEDDED_MODELS[m] for m in args.models or EMBEDDED_MODELS]
    services = None
    if args.job is not None:
        services, bad = read_services(args.job.read_text().splitlines())
        if bad:
            parser.error(f"{args.job}: {'; '.join(bad)}")
    asyncio.run(main(chosen, services, args.rounds))
