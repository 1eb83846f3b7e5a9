"""Awaiting Ray actor calls: raygate's errors as themselves, and cancellation that reaches
the call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import ray
from ray import ObjectRef, ObjectRefGenerator
from ray.exceptions import RayTaskError

from actors.errors import RaygateError

log = logging.getLogger(__name__)

# How long a cancelled streaming call may take to clean up before its reader goes on.
CANCEL_GRACE_SECONDS = 10.0

T = TypeVar("T")


async def unwrap(call: Awaitable[T]) -> T:
    """Await an actor call; re-raise raygate's own errors as themselves, not wrapped by Ray."""
    try:
        return await call
    except RayTaskError as exc:
        raise unwrapped(exc) from None


def unwrapped(error: BaseException) -> BaseException:
    """An actor call's error as :func:`unwrap` raises it: raygate's own as itself."""
    if isinstance(error, RayTaskError) and isinstance(error.cause, RaygateError):
        return error.cause
    return error


async def cancellable(ref: ObjectRef[T]) -> T:
    """Await an actor call; if the awaiting task is cancelled, cancel the call too.

    Ray goes on running a call whose caller stopped waiting; only
    ``ray.cancel`` reaches it (as a CancelledError inside an async actor's
    coroutine, where ``finally`` blocks give back what the call held). Not
    recursive: Ray would also cancel the calls that clean-up makes (the
    manager call that takes a waiter out of the queue), and the waiter would
    stay, to be served for nobody.
    """
    try:
        result: T = await unwrap(ref)
    except asyncio.CancelledError:
        ray.cancel(ref, recursive=False)
        raise
    return result


async def cancellable_stream(refs: ObjectRefGenerator) -> AsyncIterator[Any]:
    """Read a streaming actor call; if the reader stops early (an error, a cancelled
    task), cancel the call and give it up to ``CANCEL_GRACE_SECONDS`` to run its
    clean-up (give back its slot, cancel its own calls) before the reader goes on."""
    try:
        async for ref in refs:
            yield await unwrap(ref)
    except BaseException:
        ray.cancel(refs, recursive=False)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CANCEL_GRACE_SECONDS):
                async for _ in refs:
                    pass
        raise


class Background:
    """Work started without waiting for it (calls sent, loops run): each kept until it
    ends, since an event loop holds its tasks only weakly, and all of it awaitable at
    once (a client's drain)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def start(self, work: Awaitable[T]) -> asyncio.Future[T]:
        future = asyncio.ensure_future(work)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return future

    def send(self, call: Awaitable[object]) -> None:
        """Start ``call``, which nobody awaits: its failure is logged. Its own task, not one
        awaiting it: a task its ending loop cancels before it starts leaves no coroutine
        behind that nothing ever awaited."""
        self.start(call).add_done_callback(_logged)

    async def drain(self) -> None:
        """Wait until everything started here, and what that started meanwhile, ended."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _logged(call: asyncio.Future[object]) -> None:
    """The end of a call nobody waits for: its failure logged (not its loop's end)."""
    if not call.cancelled() and (error := call.exception()) is not None:
        log.warning("a call nobody waited for failed", exc_info=error)
