"""Errors of the concurrency layer.

Every error here is picklable: each class hands all its constructor arguments
to ``Exception.__init__``, so ``cls(*self.args)`` rebuilds it on the other side
of an actor call. Messages are built in ``__str__`` from the stored fields and
say what was wrong and what to do.

    RaygateError                    base of every raygate error
    ├── ConfigError                 settings could not be read or failed validation
    ├── CallerGone                  the call's caller died before it started
    ├── ClassificationError         provider / base URL / model cannot be mapped to a group
    │   ├── UnknownProvider
    │   ├── InvalidBaseURL
    │   ├── UnknownModel
    │   └── AmbiguousModel          a bare model id that servers of no one pool serve
    └── QueueError                  a slot request was refused or did not complete
        ├── InvalidPriority         (also a ValueError)
        ├── EmptyPool               a pool that names no group (also a ValueError)
        ├── PoolAcrossShards        a pool whose groups different managers decide (a ValueError)
        ├── UnknownGroup
        ├── DuplicateLease
        ├── LeaseRetired            the lease id was cancelled or released before it arrived
        ├── TicketNotHeld           a ticket released twice, or by a client that did not take it
        ├── QueueFull               the group's pending bound is reached
        ├── OutOfRotation           no server the call may use takes calls now
        ├── WaitTooLong             the wait would pass, or passed, the call's max_wait
        └── AcquireTimeout          no slot within the caller's queue timeout
"""

from __future__ import annotations

from collections.abc import Iterable


class RaygateError(Exception):
    """Base class of every error raygate raises on purpose."""


class ConfigError(RaygateError):
    """Settings could not be read, parsed or validated."""

    def __init__(self, source: str, problems: tuple[str, ...]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = problems

    def __str__(self) -> str:
        listed = "; ".join(self.problems)
        return f"invalid raygate settings from {self.source}: {listed}"


class CallerGone(RaygateError):
    """A call arrived after the process that made it was known to be dead: not run."""

    def __init__(self, caller: str) -> None:
        super().__init__(caller)
        self.caller = caller

    def __str__(self) -> str:
        return f"the caller of this call, {self.caller}, died before it started; it was not run"


class ClassificationError(RaygateError):
    """A provider, base URL or model id cannot be mapped to a concurrency group."""


class UnknownProvider(ClassificationError):
    def __init__(self, provider: str, known: tuple[str, ...]) -> None:
        super().__init__(provider, known)
        self.provider = provider
        self.known = known

    def __str__(self) -> str:
        return f"unknown provider {self.provider!r}; use one of: {', '.join(self.known)}"


class InvalidBaseURL(ClassificationError):
    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(base_url, reason)
        self.base_url = base_url
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid base URL {self.base_url!r}: {self.reason}"


class UnknownModel(ClassificationError):
    def __init__(self, model_id: str, known: tuple[str, ...]) -> None:
        super().__init__(model_id, known)
        self.model_id = model_id
        self.known = known

    def __str__(self) -> str:
        known = f"known models: {_listing(self.known)}" if self.known else "the registry is empty"
        return (
            f"unknown model {self.model_id!r}; {known}. Name a model as provider/model "
            "(openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, ollama/llama3.2, "
            "lmstudio/qwen2.5-7b-instruct), or add it under `models:` in the settings"
        )


class AmbiguousModel(ClassificationError):
    """A bare model id that two servers or more list, no one pool of the settings joining
    them (see providers.discovery)."""

    def __init__(self, model_id: str, servers: tuple[str, ...]) -> None:
        super().__init__(model_id, servers)
        self.model_id = model_id
        self.servers = servers

    def __str__(self) -> str:
        return (
            f"model {self.model_id!r} is served by {_listing(self.servers)}, which are not one "
            "pool: name it under `models:` with one of them, or with all of them as its "
            "`servers` (a pool), so that a call knows where to go"
        )


class QueueError(RaygateError):
    """A request for a slot was refused or did not complete."""


class OutOfRotation(QueueError):
    """No group a call may use is in rotation (see :mod:`actors.rotation`): each one's
    server is out, for the reason given by group."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(reasons)
        self.reasons = reasons

    def __str__(self) -> str:
        out = "; ".join(f"{group}: {reason}" for group, reason in self.reasons.items())
        return f"no server this call may use takes calls now ({out})"


class WaitTooLong(QueueError):
    """A call that may not wait as long as the manager estimates (``estimate``: not
    queued), or that waited its ``max_wait`` out (``estimate`` None: it left the queue)."""

    def __init__(
        self, group: str | tuple[str, ...], max_wait: float, estimate: float | None = None
    ) -> None:
        super().__init__(group, max_wait, estimate)
        self.group = group
        self.max_wait = max_wait
        self.estimate = estimate

    def __str__(self) -> str:
        where = repr(self.group) if isinstance(self.group, str) else ", ".join(self.group)
        if self.estimate is None:
            return (
                f"{where} granted this call no slot within the {self.max_wait:g}s it may "
                "wait; it left the queue"
            )
        return (
            f"group {where} would take an estimated {self.estimate:.1f}s to grant this "
            f"call, past the {self.max_wait:g}s it may wait"
        )


class EmptyPool(QueueError, ValueError):
    def __str__(self) -> str:
        return "a pool names no group: ask for one group's id, or a tuple of at least one"


class PoolAcrossShards(QueueError, ValueError):
    def __init__(self, pool: tuple[str, ...], shards: int) -> None:
        super().__init__(pool, shards)
        self.pool = pool
        self.shards = shards

    def __str__(self) -> str:
        return (
            f"the pool {_listing(self.pool)} spans groups that {self.shards} manager shards "
            "decide for apart (queue.shards), so no one of them can make its calls wait "
            "once: name the pool's servers as one model's `servers` in the settings, "
            "which puts them on one shard"
        )


class InvalidPriority(QueueError, ValueError):
    def __init__(self, priority: object, low: int, high: int) -> None:
        super().__init__(priority, low, high)
        self.priority = priority
        self.low = low
        self.high = high

    def __str__(self) -> str:
        return (
            f"priority must be an integer from {self.low} to {self.high} "
            f"(higher runs first), got {self.priority!r}"
        )


class UnknownGroup(QueueError):
    def __init__(self, group: str, known: tuple[str, ...]) -> None:
        super().__init__(group, known)
        self.group = group
        self.known = known

    def __str__(self) -> str:
        known = _listing(self.known) if self.known else "none yet"
        return (
            f"unknown concurrency group {self.group!r}; registered groups: {known}. "
            "Register it first (ManagerClient.register) or add its model to the settings"
        )


class DuplicateLease(QueueError):
    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id

    def __str__(self) -> str:
        return f"lease id {self.lease_id!r} is already waiting or held; lease ids must be unique"


class LeaseRetired(QueueError):
    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id

    def __str__(self) -> str:
        return (
            f"lease id {self.lease_id!r} was cancelled or released before its acquire "
            "arrived; nothing was queued"
        )


class TicketNotHeld(QueueError):
    """A ticket given back that its client does not hold (see actors.tickets)."""

    def __init__(self, request_id: str, model: str) -> None:
        super().__init__(request_id, model)
        self.request_id = request_id
        self.model = model

    def __str__(self) -> str:
        return (
            f"the ticket of request {self.request_id!r} ({self.model}) is not held by this "
            "client: released already, or taken by another one; nothing was released"
        )


class QueueFull(QueueError):
    def __init__(
        self, group: str, pending: int, max_pending: int, estimated_wait: float | None
    ) -> None:
        super().__init__(group, pending, max_pending, estimated_wait)
        self.group = group
        self.pending = pending
        self.max_pending = max_pending
        self.estimated_wait = estimated_wait

    def __str__(self) -> str:
        wait = "unknown" if self.estimated_wait is None else f"about {self.estimated_wait:.1f}s"
        return (
            f"queue of group {self.group!r} is full ({self.pending} pending, "
            f"bound {self.max_pending}); estimated wait {wait}. Retry later or raise "
            "queue.max_pending_per_group"
        )


class AcquireTimeout(QueueError):
    def __init__(self, group: str | tuple[str, ...], request_id: str, timeout: float) -> None:
        super().__init__(group, request_id, timeout)
        self.group = group
        self.request_id = request_id
        self.timeout = timeout

    def __str__(self) -> str:
        where = (
            f"group {self.group!r}"
            if isinstance(self.group, str)
            else "any group of the pool " + ", ".join(map(repr, self.group))
        )
        return (
            f"request {self.request_id!r} got no slot in {where} "
            f"within {self.timeout:g}s; it left the queue"
        )


def _listing(names: Iterable[str], most: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"
