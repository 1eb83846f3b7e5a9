"""Transcripts: one JSON line for each backend call of a run, beside its results.

With ``pipeline.transcripts: true``, a run of the plateau job writes
``<out>.transcript.jsonl`` next to its results (``<out>.jsonl``). Each call the
run made, answered, failed or cancelled, gets a line when it ends: its request
id, run, service, stage, model, group (for a pool, the server that answered),
priority, wait for its slot, latency, tokens and outcome, and, unless
``pipeline.transcripts_text`` is false, the messages it sent and the answer it
got. The pipeline actor sends each line with the run's events; the driver (the
command line's run, or an HTTP job's actor) appends it, so a run resumed after a
crash appends to the same transcript. ``python -m pipelines transcript OUT``
prints a run's; ``GET /v1/pipelines/{id}/transcript`` returns an HTTP job's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from actors.options import CallOptions
from providers.models import ChatRequest, ChatResponse


class TranscriptLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    run: str
    service_id: str
    stage: str
    model: str
    # The group whose slot the call took: for a pool, the server that answered.
    group: str
    priority: int
    wait_seconds: float = 0.0
    latency_seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    # "ok", "cached" (answered from the response cache), "cancelled", or the error's type.
    outcome: str
    error: str | None = None
    # The model asked for, when one of its fallbacks answered.
    fallback_from: str | None = None
    messages: list[dict[str, str]] | None = None
    answer: str | None = None


def transcribed(
    request: ChatRequest,
    options: CallOptions,
    group: str,
    ended: ChatResponse | BaseException,
    *,
    text: bool,
) -> TranscriptLine:
    """The line of the call ``request`` at ``options`` that ended as ``ended`` (its answer,
    or what stopped it); ``text``: with its messages and answer."""
    labels = options.labels
    line = TranscriptLine(
        request_id=options.request_id or "",
        run=labels.run,
        service_id=labels.service_id,
        stage=labels.stage,
        model=request.model,
        group=group,
        priority=options.priority,
        outcome="cancelled" if isinstance(ended, asyncio.CancelledError) else "",
        messages=[m.model_dump() for m in request.messages] if text else None,
    )
    if not isinstance(ended, ChatResponse):
        kind = line.outcome or type(ended).__name__
        return line.model_copy(update={"outcome": kind, "error": str(ended) or None})
    return line.model_copy(
        update={
            "model": ended.model,
            "group": ended.group,
            "wait_seconds": ended.queue_wait_seconds,
            "latency_seconds": ended.latency_seconds,
            "input_tokens": ended.usage.input_tokens,
            "output_tokens": ended.usage.output_tokens,
            "outcome": "cached" if ended.cached else "ok",
            "fallback_from": ended.fallback_from,
            "answer": ended.text if text else None,
        }
    )


def transcript_path(results: Path) -> Path:
    """Where the transcript of the results file ``results`` goes: ``out.jsonl`` ->
    ``out.transcript.jsonl``."""
    return results.with_name(f"{results.stem}.transcript.jsonl")


class TranscriptFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, line: TranscriptLine) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line.model_dump_json() + "\n")

    def read(self) -> list[TranscriptLine]:
        """Its lines so far; one that does not parse (torn by a crash mid-write) left out."""
        if not self.path.exists():
            return []
        lines = []
        for text in self.path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(TranscriptLine.model_validate_json(text))
            except ValidationError:
                continue
        return lines
