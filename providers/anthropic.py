"""Anthropic Messages (``POST {base}/v1/messages``).

The system prompt is a top-level ``system`` field, not a message;
``max_tokens`` is required. Structured output goes through a tool: one tool
whose ``input_schema`` is the schema, forced with ``tool_choice``, so the
answer is a ``tool_use`` block whose ``input`` is the JSON. Streaming is
server-sent events: ``message_start``, ``content_block_delta`` (``text_delta``
or ``input_json_delta``), ``message_delta`` with the stop reason and output
tokens, ``message_stop``; ``error`` events carry failures mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from providers.errors import ProviderUnavailable
from providers.http import Answer, Backend, read_sse
from providers.models import ChatRequest, FinishReason, StreamDelta, Usage

API_VERSION = "2023-06-01"

STOP_REASONS: dict[str | None, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",  # the forced tool is how JSON answers end
    "max_tokens": "length",
    "refusal": "content_filter",
}


class AnthropicBackend(Backend):
    provider = "anthropic"
    path = "/v1/messages"
    models_path = "/v1/models"

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.get_secret_value()
        return headers

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": request.model,
            "max_tokens": self.max_tokens(request),
            "messages": [m.model_dump() for m in request.turns],
        }
        if request.system is not None:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.response_format is not None:
            fmt = request.response_format
            body["tools"] = [
                {
                    "name": fmt.name,
                    "description": "Record the answer in this exact structure.",
                    "input_schema": fmt.json_schema,
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": fmt.name}
        if stream:
            body["stream"] = True
        return body

    def read_answer(self, payload: Any, request: ChatRequest) -> Answer:
        texts, data = [], None
        for block in payload["content"]:
            if block["type"] == "text":
                texts.append(block["text"])
            elif block["type"] == "tool_use":
                data = block["input"]
        usage = payload.get("usage") or {}
        return Answer(
            text=json.dumps(data) if data is not None else "".join(texts),
            finish_reason=STOP_REASONS.get(payload.get("stop_reason"), "other"),
            usage=Usage(
                input_tokens=usage.get("input_tokens", 0),
                output_tokens=usage.get("output_tokens", 0),
            ),
            data=data,
            model=payload.get("model"),
        )

    async def read_stream(self, lines: AsyncIterator[str]) -> AsyncIterator[StreamDelta]:
        input_tokens = output_tokens = 0
        finish: FinishReason = "other"
        async for event, data in read_sse(lines):
            payload = json.loads(data)
            if event == "message_start":
                input_tokens = payload["message"].get("usage", {}).get("input_tokens", 0)
            elif event == "content_block_delta":
                delta = payload["delta"]
                text = (
                    delta.get("text")
                    if delta["type"] == "text_delta"
                    else delta.get("partial_json")
                )
                if text:
                    yield StreamDelta(text=text)
            elif event == "message_delta":
                finish = STOP_REASONS.get(payload["delta"].get("stop_reason"), "other")
                output_tokens = payload.get("usage", {}).get("output_tokens", output_tokens)
            elif event == "message_stop":
                break
            elif event == "error":
                raise ProviderUnavailable(
                    self.provider, self.error_message(payload) or "error event in the stream"
                )
        yield StreamDelta(
            finish_reason=finish,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        )

    def error_message(self, payload: Any) -> str | None:
        error = payload.get("error")
        return str(error.get("message")) if isinstance(error, dict) else None
