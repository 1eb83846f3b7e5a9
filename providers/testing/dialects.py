"""Each provider's wire format as a fake server speaks it: the request checked the way the
real API checks it (path, auth headers, required fields), and each scripted reply (see
:mod:`providers.testing.fake_llm`) rendered in the provider's real response shape, errors
in its own error body, its models list at its own path."""

from __future__ import annotations

import json
from typing import Any

from providers.testing.probe_server import Received, Reply


class Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status=status,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


class Dialect:
    path: str
    # Where the server lists its models.
    models_path = "/v1/models"

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        # The model an answer names for the one asked, where they differ (OpenAI answers
        # a snapshot, e.g. gpt-4o-2024-08-06 for gpt-4o).
        self.snapshots: dict[str, str] = {}

    def answered_by(self, body: dict[str, object]) -> str:
        """The model an answer to ``body`` names."""
        asked = str(body["model"])
        return self.snapshots.get(asked, asked)

    def listing(self, models: tuple[str, ...]) -> Reply:
        """The server's list of the models it serves (OpenAI's shape)."""
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "library"}
                    for m in models
                ],
            }
        )

    def check(self, request: Received) -> None:
        if request.path != self.path:
            raise Reject(404, f"no route {request.path}")
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise Reject(400, "model is required")
        messages = body.get("messages")
        if not messages or not all({"role", "content"} <= set(m) for m in messages):
            raise Reject(400, "messages must be a non-empty list of {role, content}")

    def streaming(self, body: dict[str, object]) -> bool:
        return bool(body.get("stream"))

    def answer(self, text: str, body: dict[str, object], usage: tuple[int, int]) -> Reply:
        raise NotImplementedError

    def answer_json(self, data: dict[str, object], body: dict[str, object]) -> Reply:
        return self.answer(json.dumps(data), body, (11, 7))

    def stream(self, pieces: tuple[str, ...]) -> Reply:
        raise NotImplementedError

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        raise NotImplementedError


class OpenAIDialect(Dialect):
    path = "/v1/chat/completions"

    def check(self, request: Received) -> None:
        super().check(request)
        if self.api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            raise Reject(401, "Incorrect API key provided.")
        fmt = request.body.get("response_format")
        if (
            fmt is not None
            and fmt.get("type") == "json_schema"
            and ("schema" not in fmt.get("json_schema", {}))
        ):
            raise Reject(400, "response_format.json_schema.schema is required")

    def answer(self, text: str, body: dict[str, object], usage: tuple[int, int]) -> Reply:
        return _json(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": self.answered_by(body),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
        )

    def stream(self, pieces: tuple[str, ...]) -> Reply:
        def event(payload: Any) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        chunks = [event(chunk({"role": "assistant", "content": ""}))]
        chunks += [event(chunk({"content": piece})) for piece in pieces]
        chunks.append(event(chunk({}, "stop")))
        chunks.append(
            event(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": len(pieces)},
                }
            )
        )
        chunks.append(b"data: [DONE]\n\n")
        return Reply(headers={"Content-Type": "text/event-stream"}, chunks=chunks)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        return _json(
            {"error": {"message": message, "type": "api_error", "code": None}}, status, headers
        )


class AnthropicDialect(Dialect):
    path = "/v1/messages"

    def check(self, request: Received) -> None:
        super().check(request)
        headers, body = request.headers, request.body
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            raise Reject(401, "invalid x-api-key")
        if "anthropic-version" not in headers:
            raise Reject(400, "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            raise Reject(400, "max_tokens: Field required")
        if any(m["role"] not in ("user", "assistant") for m in body["messages"]):
            raise Reject(400, "messages: roles must be user or assistant; use the system field")

    def answer(self, text: str, body: dict[str, object], usage: tuple[int, int]) -> Reply:
        return self._message([{"type": "text", "text": text}], "end_turn", body, usage)

    def answer_json(self, data: dict[str, object], body: dict[str, object]) -> Reply:
        choice = body["tool_choice"]
        if not isinstance(choice, dict):
            raise Reject(400, "tool_choice: must be an object")
        tool = choice["name"]
        block = {"type": "tool_use", "id": "toolu_1", "name": tool, "input": data}
        return self._message([block], "tool_use", body, (11, 7))

    def _message(
        self,
        content: list[dict[str, object]],
        stop: str,
        body: dict[str, object],
        usage: tuple[int, int],
    ) -> Reply:
        return _json(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": self.answered_by(body),
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
            }
        )

    def stream(self, pieces: tuple[str, ...]) -> Reply:
        def event(name: str, payload: dict[str, object]) -> bytes:
            return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n".encode()

        chunks = [
            event(
                "message_start",
                {"message": {"id": "msg_1", "type": "message", "usage": {"input_tokens": 11}}},
            ),
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]
        chunks += [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ]
        chunks += [
            event("content_block_stop", {"index": 0}),
            event(
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(pieces)}},
            ),
            event("message_stop", {}),
        ]
        return Reply(headers={"Content-Type": "text/event-stream"}, chunks=chunks)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "api_error")
        return _json(
            {"type": "error", "error": {"type": kind, "message": message}}, status, headers
        )


class OllamaDialect(Dialect):
    path = "/api/chat"
    models_path = "/api/tags"

    def listing(self, models: tuple[str, ...]) -> Reply:
        return _json(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "modified_at": "2026-11-23T00:00:00Z",
                        "size": 13780173839,
                        "digest": "a" * 64,
                        "details": {"format": "gguf", "family": "llama"},
                    }
                    for m in models
                ]
            }
        )

    def streaming(self, body: dict[str, object]) -> bool:
        return body.get("stream", True) is not False  # Ollama streams unless told not to

    def answer(self, text: str, body: dict[str, object], usage: tuple[int, int]) -> Reply:
        return _json(
            {
                "model": self.answered_by(body),
                "created_at": "2026-11-23T00:00:00Z",
                "message": {"role": "assistant", "content": text},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": usage[0],
                "eval_count": usage[1],
            }
        )

    def stream(self, pieces: tuple[str, ...]) -> Reply:
        lines = [
            {"model": "m", "message": {"role": "assistant", "content": p}, "done": False}
            for p in pieces
        ]
        lines.append(
            {
                "model": "m",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 11,
                "eval_count": len(pieces),
            }
        )
        return Reply(
            headers={"Content-Type": "application/x-ndjson"},
            chunks=[(json.dumps(line) + "\n").encode() for line in lines],
        )

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        return _json({"error": message}, status, headers)
