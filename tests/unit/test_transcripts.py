"""A run's transcript: one line per backend call, whatever ended it, with its text or not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.options import CallLabels, CallOptions
from pipelines.transcripts import TranscriptFile, transcribed, transcript_path
from providers.errors import ProviderUnavailable
from providers.models import ChatMessage, ChatRequest, ChatResponse, Usage

REQUEST = ChatRequest(model="qwen2.5", messages=(ChatMessage(role="user", content="features?"),))
OPTIONS = CallOptions(
    priority=7,
    request_id="run-1:svc-a:features-0",
    labels=CallLabels(stage="features", service_id="svc-a", run="run-1"),
)
ANSWER = ChatResponse(
    text='{"features": []}',
    finish_reason="stop",
    usage=Usage(input_tokens=31, output_tokens=9),
    latency_seconds=0.25,
    queue_wait_seconds=1.5,
    provider="lmstudio",
    group="local-lmstudio-http://localhost:1234@gpu-b",
    model="qwen2.5",
)


def test_an_answered_call_says_who_asked_where_it_went_and_what_it_cost() -> None:
    line = transcribed(REQUEST, OPTIONS, "pool:qwen2.5", ANSWER, text=True)

    assert (line.request_id, line.run, line.service_id, line.stage) == (
        "run-1:svc-a:features-0",
        "run-1",
        "svc-a",
        "features",
    )
    # The server that answered, not the pool asked.
    assert (line.group, line.priority, line.outcome) == (ANSWER.group, 7, "ok")
    assert (line.wait_seconds, line.latency_seconds) == (1.5, 0.25)
    assert (line.input_tokens, line.output_tokens) == (31, 9)
    assert line.messages == [{"role": "user", "content": "features?"}]
    assert line.answer == '{"features": []}'


def test_a_failed_or_cancelled_call_names_what_ended_it_and_the_text_may_be_left_out() -> None:
    failed = transcribed(REQUEST, OPTIONS, "g", ProviderUnavailable("lmstudio", "down"), text=False)
    cancelled = transcribed(REQUEST, OPTIONS, "g", asyncio.CancelledError(), text=False)
    from_cache = ANSWER.model_copy(update={"cached": True})
    cached = transcribed(REQUEST, OPTIONS, "g", from_cache, text=False)

    assert (failed.outcome, failed.group) == ("ProviderUnavailable", "g")
    assert failed.error is not None
    assert "down" in failed.error
    assert (cancelled.outcome, cancelled.error) == ("cancelled", None)
    assert cached.outcome == "cached"
    assert all(line.messages is None and line.answer is None for line in (failed, cached))


def test_the_transcript_sits_beside_the_results_and_a_torn_line_is_left_out(
    tmp_path: Path,
) -> None:
    path = transcript_path(tmp_path / "out.jsonl")
    assert path == tmp_path / "out.transcript.jsonl"
    transcript = TranscriptFile(path)
    line = transcribed(REQUEST, OPTIONS, "g", ANSWER, text=True)
    transcript.append(line)
    with path.open("a") as torn:
        torn.write('{"request_id": "run-1:svc-a:map')  # a crash mid-write

    assert transcript.read() == [line]
