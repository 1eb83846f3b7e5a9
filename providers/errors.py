"""Errors of the provider layer.

Every error is picklable (``args`` holds exactly the constructor's arguments)
since they cross actor boundaries, and none carries a request body, header or
key. ``retryable`` says whether the retry loop may try again.

    RaygateError
    └── ProviderError               a backend call failed
        ├── MissingAPIKey           a remote API without a key
        ├── RateLimited             429 (retryable, honours Retry-After)
        ├── ProviderTimeout         no answer in time (retryable)
        ├── ProviderUnavailable     5xx, 529, connection refused (retryable)
        ├── BadRequest              400, 404, 422: the request itself is wrong
        │   └── ContextTooLong      for this model's context window
        ├── AuthenticationFailed    401, 403
        ├── BadResponse             the answer is not what the wire format promises,
        │                           or not JSON when a schema was asked
        ├── CircuitOpen             the group failed too often; failing fast
        ├── ProviderActorLost       the provider actor died or is restarting (e.g. its
        │                           GPU host's node was lost)
        ├── NoGpuHost               no live node is labelled the GPU host a local
        │                           server is pinned to
        └── ModelServerError        raygate's own model server (the embedded llama.cpp)
            ├── ModelNotInstalled   the local extra is missing
            ├── ModelServerFailedToStart   it exited, or could not answer, before it was ready
            └── ModelServerCrashed  it died while serving (retryable while it is restarted)
"""

from __future__ import annotations

from actors.errors import RaygateError
from actors.groups import GPU_HOST_LABEL


class ProviderError(RaygateError):
    retryable = False
    # Whether the circuit breaker counts this error as the backend's (see providers.breaker).
    breaker_counts = True

    def __init__(self, provider: str, detail: str, status: int | None = None) -> None:
        super().__init__(provider, detail, status)
        self.provider = provider
        self.detail = detail
        self.status = status

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.provider}: {self.detail}{status}"


class MissingAPIKey(ProviderError):
    def __init__(self, provider: str, env_vars: tuple[str, ...]) -> None:
        super().__init__(
            provider,
            f"no API key; set {' or '.join(env_vars)}, or api_keys.{provider} in the settings",
        )
        self.args = (provider, env_vars)  # what pickling passes back to __init__
        self.env_vars = env_vars


class RateLimited(ProviderError):
    retryable = True
    # The backend is up; its limit is the manager's to keep (see actors.adaptive).
    breaker_counts = False

    def __init__(
        self, provider: str, detail: str, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(provider, detail, status)
        self.args = (provider, detail, status, retry_after)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    retryable = True


class ProviderUnavailable(ProviderError):
    retryable = True


class BadRequest(ProviderError):
    pass


class ContextTooLong(BadRequest):
    """The request does not fit the model's context window (a model with a larger one may
    take it: see :mod:`providers.fallback`)."""


class AuthenticationFailed(ProviderError):
    pass


class BadResponse(ProviderError):
    pass


class CircuitOpen(ProviderError):
    def __init__(self, provider: str, group: str, retry_in: float, last_failure: str) -> None:
        super().__init__(
            provider,
            f"circuit for group {group!r} is open after repeated failures (the last: "
            f"{last_failure}); calls fail fast for another {retry_in:.1f}s, then one probe "
            "is let through",
        )
        self.args = (provider, group, retry_in, last_failure)
        self.group = group
        self.retry_in = retry_in
        self.last_failure = last_failure


class ProviderActorLost(ProviderError):
    """The provider actor itself is gone: the call never got an answer from it."""

    def __init__(self, actor: str, reason: str) -> None:
        super().__init__(
            actor,
            f"the provider actor is unavailable ({reason}); it died or is restarting, and "
            "a local server's actor restarts only on its GPU host, once that node is back",
        )
        self.args = (actor, reason)
        self.reason = reason


class NoGpuHost(ProviderError):
    """No live node carries the label of the GPU host ``host``: a local server pinned
    there has nowhere to run (see providers.actor.local_placement)."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"gpu-host:{host}",
            f"no live node is labelled {GPU_HOST_LABEL}={host}, the GPU host named by "
            f"`host: {host}`; start that host's node with `ray start --labels "
            f"{GPU_HOST_LABEL}={host}` (on KubeRay: its worker group's labels)",
        )
        self.args = (host,)
        self.host = host


class ModelServerError(ProviderError):
    """A model server that raygate runs itself failed; ``server`` names it."""

    def __init__(self, provider: str, server: str, detail: str) -> None:
        super().__init__(provider, f"{server}: {detail}")
        self.args = (provider, server, detail)
        self.server = server


class ModelNotInstalled(ModelServerError):
    pass


class ModelServerFailedToStart(ModelServerError):
    pass


class ModelServerCrashed(ModelServerError):
    """The server died while serving. Retryable while its supervisor restarts it.

    The breaker does not count it: the supervisor bounds the restarts itself,
    and an open circuit would hide the crash behind "circuit open".
    """

    breaker_counts = False

    def __init__(self, provider: str, server: str, detail: str, restarting: bool) -> None:
        super().__init__(provider, server, detail)
        self.args = (provider, server, detail, restarting)
        self.retryable = restarting
