"""The live queue page: who waits for what, in which order, and when it will run.

``GET /`` is the page (plain HTML, CSS and JavaScript shipped in ``serve/page/``,
no build step, no CDN); it opens ``GET /v1/queue/events``, a stream of
server-sent events each carrying the whole state: the manager's
:class:`~actors.queueview.QueueView` and the pipeline runs. The stream waits
on the manager for the next change (the manager pushes it, see
``SlotGate.view``), sends at most ``1 / MIN_INTERVAL_SECONDS`` events a
second, and one every ``HEARTBEAT_SECONDS`` when nothing changed; since each
event is whole, a page that reconnects is right again with its first one.

Keys: a browser cannot put a bearer key on a page load or an EventSource, so
the page's login form trades a valid key for a session cookie (HttpOnly,
SameSite=Strict), an HMAC of the key that the key's removal from the
settings invalidates. A request that only the cookie authorizes and that
changes something must also carry ``X-Raygate-Page`` (which no other site's
form can send).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from importlib import resources

from pydantic import SecretStr

from actors.client import ManagerClient
from actors.queueview import QueueView
from pipelines.jobrecords import JobStatus
from pipelines.submitted import PipelineJobClient

COOKIE = "raygate_session"
PAGE_HEADER = "x-raygate-page"
SESSION_SECONDS = 12 * 3600
# Waiters shown per group; the stats give the count of all.
FIRST_WAITERS = 50
# Runs shown: the running ones, then the latest ended.
RUNS_SHOWN = 20
MIN_INTERVAL_SECONDS = 0.25
HEARTBEAT_SECONDS = 5.0
RUNS_REFRESH_SECONDS = 1.0
RECONNECT_MILLISECONDS = 1000

ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
# The page and its assets come from this server only, and no other site frames it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def asset(name: str) -> str:
    return resources.files("serve").joinpath("page", name).read_text(encoding="utf-8")


def login_page(problem: str = "") -> str:
    said = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    return asset("login.html").replace("<!--problem-->", said)


def session_token(key: SecretStr) -> str:
    """The cookie that stands for ``key``: useless to learn the key from."""
    return hmac.new(
        key.get_secret_value().encode(), b"raygate queue page", hashlib.sha256
    ).hexdigest()


def session_cookie(token: str, *, secure: bool) -> str:
    flags = f"Path=/; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={token}; {flags}" + ("; Secure" if secure else "")


def session_in(cookie_header: str) -> str | None:
    """The session token the ``Cookie`` header carries, if any."""
    try:
        morsel = SimpleCookie(cookie_header).get(COOKIE)
    except CookieError:
        return None
    return None if morsel is None else morsel.value


class RunList:
    """The statuses of ``owner``'s pipeline runs (every run's for ""), read again at
    most every RUNS_REFRESH_SECONDS."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._read_at = -float("inf")
        self._runs: list[JobStatus] = []

    async def statuses(self) -> list[JobStatus]:
        if time.monotonic() - self._read_at >= RUNS_REFRESH_SECONDS:
            jobs = await asyncio.to_thread(PipelineJobClient.all, self._owner)
            found = await asyncio.gather(*(job.status() for job in jobs), return_exceptions=True)
            # A run whose actor exits between the listing and its status is gone.
            runs = [status for status in found if isinstance(status, JobStatus)]
            runs.sort(key=lambda run: (run.state != "running", -run.submitted_at))
            self._runs, self._read_at = runs[:RUNS_SHOWN], time.monotonic()
        return self._runs


async def queue_events(
    manager: ManagerClient,
    owner: str,
    seen: Callable[[QueueView], QueueView],
    schedules: Callable[[], Awaitable[list[dict[str, object]]]],
) -> AsyncIterator[str]:
    """The page's stream: the whole state at once, then again after each change, as
    ``seen`` shows it to the reader; the pipeline runs shown are ``owner``'s (see
    :class:`RunList`), the ``schedules`` those the reader may see (read as often)."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
    runs = RunList(owner)
    scheduled: list[dict[str, object]] = []
    version, read_at = -1, -float("inf")
    while True:
        view = await manager.view(version, FIRST_WAITERS, HEARTBEAT_SECONDS)
        if time.monotonic() - read_at >= RUNS_REFRESH_SECONDS:
            scheduled, read_at = await schedules(), time.monotonic()
        state: dict[str, object] = {
            "now": time.time(),
            "queue": seen(view).model_dump(mode="json", by_alias=True),
            "runs": [run.model_dump(mode="json") for run in await runs.statuses()],
            "schedules": scheduled,
        }
        yield f"event: state\ndata: {json.dumps(state, separators=(',', ':'))}\n\n"
        version = view.version
        await asyncio.sleep(MIN_INTERVAL_SECONDS)
