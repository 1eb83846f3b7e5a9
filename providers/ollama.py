"""Ollama's native chat API (``POST {base}/api/chat``); its models at ``GET {base}/api/tags``.

``stream`` defaults to true in Ollama, so a whole answer asks ``stream: false``.
Structured output is ``format`` set to the JSON schema. Sampling settings go in
``options`` (``num_predict`` is the token limit). A stream is
newline-delimited JSON: message pieces, then one object with ``done: true``,
the ``done_reason`` and the token counts. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from providers.errors import ProviderUnavailable
from providers.http import Answer, Backend
from providers.models import ChatRequest, FinishReason, StreamDelta, Usage

DONE_REASONS: dict[str | None, FinishReason] = {"stop": "stop", "length": "length"}


class OllamaBackend(Backend):
    provider = "ollama"
    path = "/api/chat"
    models_path = "/api/tags"

    def headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        options: dict[str, object] = {"num_predict": self.max_tokens(request)}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, object] = {
            "model": request.model,
            "messages": [m.model_dump() for m in request.messages],
            "stream": stream,
            "options": options,
        }
        if request.response_format is not None:
            body["format"] = request.response_format.json_schema
        return body

    def read_answer(self, payload: Any, request: ChatRequest) -> Answer:
        return Answer(
            text=payload["message"]["content"],
            finish_reason=DONE_REASONS.get(payload.get("done_reason"), "other"),
            usage=_usage(payload),
            model=payload.get("model"),
        )

    async def read_stream(self, lines: AsyncIterator[str]) -> AsyncIterator[StreamDelta]:
        async for line in lines:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise ProviderUnavailable(self.provider, str(chunk["error"]))
            text = chunk.get("message", {}).get("content", "")
            if text:
                yield StreamDelta(text=text)
            if chunk.get("done"):
                yield StreamDelta(
                    finish_reason=DONE_REASONS.get(chunk.get("done_reason"), "other"),
                    usage=_usage(chunk),
                )
                return

    def read_models(self, payload: Any) -> list[str]:
        return [str(model["name"]) for model in payload["models"]]

    def error_message(self, payload: Any) -> str | None:
        error = payload.get("error")
        return str(error) if error else None


def _usage(payload: dict[str, object]) -> Usage:
    return Usage(
        input_tokens=payload.get("prompt_eval_count", 0),
        output_tokens=payload.get("eval_count", 0),
    )
