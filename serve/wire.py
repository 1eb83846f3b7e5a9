"""OpenAI's chat completions wire format, server side: the request body raygate
accepts, and the responses, stream chunks and errors it answers with.

Fields OpenAI defines that raygate does not act on (``n``, ``top_p``, ``user``,
...) are accepted and ignored, as OpenAI-compatible servers do; the fields it
acts on are validated, and a bad one is named in the 422.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.groups import ModelEntry
from actors.stats import GroupStats
from pipelines.plateau import Service
from providers.models import ChatMessage, ChatRequest, ChatResponse, JsonSchemaFormat, StreamDelta

# What /v1/models shows of each server's group (see actors.stats.GroupStats).
SERVER_FIGURES = {"limit", "active", "pending", "granted", "out_reason", "out_seconds", "probing"}
FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "answer"
    json_schema: dict[str, object] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    """A ``POST /v1/chat/completions`` body, plus raygate's ``priority`` (``extra_body``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int | None = Field(default=None, ge=1, le=10)
    fallbacks: list[str] | None = Field(
        default=None,
        max_length=0,
        description="[]: only the model asked may answer, not its fallbacks.",
    )

    def chat_request(self, backend_model: str) -> ChatRequest:
        """The request for the backend (raises pydantic's ValidationError, e.g. for a
        system message that does not come first)."""
        limit = self.max_completion_tokens or self.max_tokens
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return ChatRequest(
            model=backend_model,
            messages=tuple(
                ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
                for m in self.messages
            ),
            temperature=self.temperature,
            stop=stop,
            response_format=self._format(),
            stream=self.stream,
            **({"max_tokens": limit} if limit is not None else {}),
        )

    def _format(self) -> JsonSchemaFormat | None:
        requested = self.response_format
        if requested is None or requested.type == "text":
            return None
        if requested.type == "json_object" or requested.json_schema is None:
            return JsonSchemaFormat(json_schema={"type": "object"}, strict=False)
        spec = requested.json_schema
        return JsonSchemaFormat(
            name=spec.name, json_schema=spec.json_schema, strict=bool(spec.strict)
        )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(response: ChatResponse, model: str, completion_id: str) -> dict[str, object]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text},
                "finish_reason": FINISH_REASONS.get(response.finish_reason, "stop"),
            }
        ],
        "usage": _usage(response.usage.input_tokens, response.usage.output_tokens),
    }


def chunk(
    delta: StreamDelta, model: str, completion_id: str, *, first: bool = False
) -> dict[str, object]:
    content: dict[str, str] = {"role": "assistant"} if first else {}
    if delta.text:
        content["content"] = delta.text
    finish = FINISH_REASONS.get(delta.finish_reason, "stop") if delta.finish_reason else None
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": content, "finish_reason": finish}],
    }


def usage_chunk(delta: StreamDelta, model: str, completion_id: str) -> dict[str, object]:
    usage = delta.usage
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": _usage(usage.input_tokens, usage.output_tokens) if usage else _usage(0, 0),
    }


def model_object(
    model_id: str,
    entry: ModelEntry | None,
    groups: Mapping[str, GroupStats] | None,
    *,
    discovered: bool = False,
) -> dict[str, object]:
    """A model as ``GET /v1/models`` lists it: OpenAI's fields, then raygate's: its servers
    (``servers``: each one's group, provider and weight, and with the queue on, its
    limit, calls held, waiting and granted, and why it is out of rotation), its
    fallbacks, and whether it is ``discovered`` (listed by its servers, not named in the
    settings). The embedded model (``entry`` None) has OpenAI's fields only."""
    listed: dict[str, object] = {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "raygate",
    }
    if entry is None:
        return listed
    servers = []
    for server in entry.each_server():
        group = server.spec().id
        shown = {"group": group, "provider": server.provider.value, "weight": server.weight or 1.0}
        if groups is not None and (figures := groups.get(group)) is not None:
            shown |= figures.model_dump(include=SERVER_FIGURES)
        servers.append(shown)
    return listed | {
        "servers": servers,
        "fallbacks": list(entry.fallbacks),
        "fallback_after_seconds": entry.fallback_after_seconds,
        "discovered": discovered,
    }


def error(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """OpenAI's error shape (:class:`ErrorBody`)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, the body of every error the endpoint answers (for its
    OpenAPI document; :func:`error` builds it)."""

    error: ErrorDetail


class PipelineSubmission(BaseModel):
    """A ``POST /v1/pipelines`` body: the services inline, or a JSONL file under the
    configured data folder; and the run's priority."""

    # The rule below, in the OpenAPI document too: exactly one of the two, not null.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["services"], "properties": {"services": {"type": "array"}}},
                {"required": ["file"], "properties": {"file": {"type": "string"}}},
            ]
        },
    )

    services: list[Service] | None = Field(default=None, min_length=1)
    file: str | None = Field(default=None, min_length=1)
    priority: int | None = Field(
        default=None, ge=1, le=10, description="The run's priority; none: the tenant's default."
    )

    @model_validator(mode="after")
    def _one_source(self) -> PipelineSubmission:
        if (self.services is None) == (self.file is None):
            raise ValueError("give either services (inline) or file (under serve.data_dir)")
        return self


def wants_cache(cache_control: str | None, default: bool) -> bool:
    """Whether a request uses the response cache: the endpoint's ``serve.cache`` (the
    default), unless its ``Cache-Control`` says ``no-cache`` or ``no-store``."""
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    return default and not directives & {"no-cache", "no-store"}
