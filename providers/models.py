"""One request and one response shape for every backend.

Each backend module translates these to and from its provider's wire format;
callers never see a provider's own JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Tokens an answer may take when its request names no limit, unless its backend says
# otherwise (an embedded model's own default: see providers.llamacpp).
DEFAULT_MAX_TOKENS = 1024

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "content_filter", "other"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class JsonSchemaFormat(BaseModel):
    """Ask for structured output: the answer must be JSON valid against ``json_schema``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="answer", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, object]
    strict: bool = True


class ChatRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # None: the backend's default (see Backend.max_tokens).
    max_tokens: int | None = Field(default=None, gt=0)
    stop: tuple[str, ...] = ()
    response_format: JsonSchemaFormat | None = None
    stream: bool = False

    @field_validator("messages")
    @classmethod
    def _one_system_prompt_first(cls, messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
        systems = [i for i, m in enumerate(messages) if m.role == "system"]
        if systems and systems != [0]:
            raise ValueError("at most one system message, and it must come first")
        if all(m.role == "system" for m in messages):
            raise ValueError("needs at least one user or assistant message")
        return messages

    @property
    def system(self) -> str | None:
        first = self.messages[0]
        return first.content if first.role == "system" else None

    @property
    def turns(self) -> tuple[ChatMessage, ...]:
        """The messages without the system prompt."""
        return self.messages[1:] if self.system is not None else self.messages


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0


class ChatResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: FinishReason
    usage: Usage
    latency_seconds: float
    # Time spent waiting for a slot of the group before the call (0 when ungated).
    queue_wait_seconds: float = 0.0
    # Wall-clock time the backend call started, holding its slot; it held it
    # for latency_seconds. Wall clock, so calls seen on different nodes compare.
    started_at: float = 0.0
    provider: str
    group: str
    model: str
    # The parsed JSON when the request asked for a schema.
    data: Any = None
    # Answered from the response cache (see providers.cache), not by the backend now.
    cached: bool = False
    # The model asked for, when one of its fallbacks answered (see providers.fallback).
    fallback_from: str | None = None


class StreamDelta(BaseModel):
    """One piece of a streamed answer; the last one carries the finish reason and usage."""

    model_config = ConfigDict(frozen=True)

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
