"""OpenAI Chat Completions (``POST {base}/chat/completions``), and servers that speak it.

OpenAI itself wants a bearer key and takes ``max_completion_tokens``; LM Studio,
vLLM and llama.cpp's server speak the same format at their own base URL, with
no key by default and the older ``max_tokens``. Structured output is
``response_format: {type: json_schema, ...}``; llama-cpp-python's server wants
``{type: json_object, schema: ...}`` instead (see :class:`Quirks`).
Streaming is server-sent events of ``chat.completion.chunk`` ending in
``data: [DONE]``; with ``stream_options.include_usage`` the last chunk carries
the token counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from providers.http import Answer, Backend, read_sse
from providers.models import ChatRequest, FinishReason, StreamDelta, Usage

SchemaStyle = Literal["json_schema", "json_object"]

FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
}


class OpenAIBackend(Backend):
    provider = "openai"
    path = "/chat/completions"
    # OpenAI's own API renamed max_tokens; compatible servers know the old name.
    max_tokens_field = "max_completion_tokens"
    schema_style: SchemaStyle = "json_schema"

    def headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": request.model,
            "messages": [m.model_dump() for m in request.messages],
            self.max_tokens_field: self.max_tokens(request),
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.response_format is not None:
            fmt = request.response_format
            if self.schema_style == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": fmt.name,
                        "schema": fmt.json_schema,
                        "strict": fmt.strict,
                    },
                }
            else:
                body["response_format"] = {"type": "json_object", "schema": fmt.json_schema}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def read_answer(self, payload: Any, request: ChatRequest) -> Answer:
        choice = payload["choices"][0]
        return Answer(
            text=choice["message"]["content"] or "",
            finish_reason=FINISH_REASONS.get(choice.get("finish_reason"), "other"),
            usage=_usage(payload.get("usage") or {}),
            model=payload.get("model"),
        )

    async def read_stream(self, lines: AsyncIterator[str]) -> AsyncIterator[StreamDelta]:
        finish: FinishReason | None = None
        async for _, data in read_sse(lines):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                yield StreamDelta(finish_reason=finish or "stop", usage=_usage(chunk["usage"]))
                finish = None
                continue
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    yield StreamDelta(text=text)
                if choice.get("finish_reason"):
                    finish = FINISH_REASONS.get(choice["finish_reason"], "other")
        if finish is not None:  # a server that sends no usage chunk
            yield StreamDelta(finish_reason=finish)

    def error_message(self, payload: Any) -> str | None:
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or "")
        return str(error) if error else None


def _usage(usage: dict[str, object]) -> Usage:
    return Usage(
        input_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
    )


@dataclass(frozen=True)
class Quirks:
    """What an OpenAI-compatible server does differently from OpenAI's own API."""

    schema_style: SchemaStyle = "json_schema"
    # Put the system prompt at the head of the first user turn, for chat
    # formats that drop system messages (Gemma's).
    fold_system_prompt: bool = False
    # The tokens an answer may take when its request names no limit; None: the default of
    # every backend.
    max_tokens: int | None = None


class OpenAICompatibleBackend(OpenAIBackend):
    """vLLM, llama.cpp's server and others that speak Chat Completions."""

    provider = "openai-compatible"
    max_tokens_field = "max_tokens"

    def __init__(self, *args: Any, quirks: Quirks = Quirks(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema_style = quirks.schema_style
        self.quirks = quirks
        if quirks.max_tokens is not None:
            self.default_max_tokens = quirks.max_tokens

    def body(self, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        body = super().body(request, stream=stream)
        if self.quirks.fold_system_prompt and request.system is not None:
            turns = [m.model_dump() for m in request.turns]
            if turns and turns[0]["role"] == "user":
                turns[0]["content"] = f"{request.system}\n\n{turns[0]['content']}"
            body["messages"] = turns
        return body


class LMStudioBackend(OpenAICompatibleBackend):
    """LM Studio's OpenAI-compatible server (``http://localhost:1234/v1`` by default)."""

    provider = "lmstudio"
