"""Answers to repeated deterministic requests, kept for the whole cluster: no slot, no backend.

A request is cached when its answer can be expected to repeat: not streamed,
and at temperature 0 or unset. Its key is a SHA-256 of the backend's identity
and the whole request: model, messages, ``max_tokens``, ``stop``, response
format. The identity is the backend's group (its provider, the server's
address and GPU host: two servers may serve different models under one name),
except for the embedded model, whose port is new each run: its model file
names it (:class:`providers.gated.GatedProvider` ``identity``), and for a
pool, whose servers serve one model: its model id and its servers' groups
(:class:`providers.pool.PooledProvider` ``identity``). A call
uses the cache only if its options say so (:class:`actors.options.CallOptions`
``cache``): the pipeline job's calls do by default, the Serve endpoint's do
not (``pipeline.cache``, ``serve.cache``), and either can be turned off per
call.

The store is one SQLite file on the head node, behind a named actor
(:class:`ResponseCacheActor`). SQLite because it is in Python, durable on
disk across restarts of the actor and of the cluster, and transactional, so a
crash mid-write leaves the file whole; one file on the head node because
the head is the node a cluster never loses, and the actor makes it one store
for every node (a file per node would miss what other nodes cached). A lookup
is one actor call, well under a millisecond of work for SQLite; a hit saves
a whole LLM call. The file is bounded by ``cache.max_bytes``: past it, the
least recently used answers go.

The cache never fails a call: a store that cannot be opened or read (a
corrupt file, a full or read-only disk) is set aside with a warning and a
new one started, or failing that, every lookup is a miss; an unreachable
actor (killed, restarting) makes a lookup a miss too, with a warning at most
once a minute per process. Ray restarts the actor when it dies; one killed
for good is looked up again (or started anew, on the same file) by each
process at most every ``RECONNECT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import ray
from pydantic import ValidationError
from ray import ObjectRef
from ray.actor import ActorHandle

from actors.calls import Background
from actors.metrics import Counter, Gauge
from actors.names import CACHE_NAME, HEAD_NODE, named_actor
from actors.settings import CacheSettings
from providers.models import ChatRequest, ChatResponse

T = TypeVar("T")
log = logging.getLogger(__name__)

# How long a lookup may take before the call goes to its backend instead.
LOOKUP_TIMEOUT_SECONDS = 5.0
WARN_EVERY_SECONDS = 60.0
RECONNECT_SECONDS = 5.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    answer BLOB NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_use ON answers (used);
"""


def cache_key(backend: str, request: ChatRequest) -> str | None:
    """The request's key among the answers of the backend named ``backend``; None if its
    answer may differ each time."""
    if request.stream or (request.temperature or 0.0) != 0.0:
        return None
    payload = {"backend": backend, "request": request.model_dump(mode="json", exclude={"stream"})}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class CacheStore:
    """The SQLite file: answers by key, at most ``max_bytes`` of them, least recently used
    out first. Every failure of the file is a miss and a warning, never an error."""

    def __init__(self, path: Path, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path.expanduser()
        self.max_bytes = max_bytes
        self._clock = clock
        self.evictions = 0
        self.bytes = 0
        self._db = self._open()

    @property
    def usable(self) -> bool:
        return self._db is not None

    def get(self, key: str) -> bytes | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is not None:
                db.execute("UPDATE answers SET used = ? WHERE key = ?", (self._clock(), key))
            return None if row is None else bytes(row[0])

        answer: bytes | None = self._run(read)
        return answer

    def put(self, key: str, answer: bytes) -> None:
        if len(answer) > self.max_bytes:
            return

        def write(db: sqlite3.Connection) -> None:
            with db:
                old = db.execute("SELECT size FROM answers WHERE key = ?", (key,)).fetchone()
                db.execute(
                    "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                    (key, answer, len(answer), self._clock()),
                )
                self.bytes += len(answer) - (old[0] if old else 0)
                while self.bytes > self.max_bytes:
                    key_out, size = db.execute(
                        "SELECT key, size FROM answers ORDER BY used LIMIT 1"
                    ).fetchone()
                    db.execute("DELETE FROM answers WHERE key = ?", (key_out,))
                    self.bytes -= size
                    self.evictions += 1

        self._run(write)

    def discard(self, key: str) -> None:
        """Forget an answer that turned out unreadable."""

        def delete(db: sqlite3.Connection) -> None:
            with db:
                row = db.execute("SELECT size FROM answers WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM answers WHERE key = ?", (key,))
                    self.bytes -= row[0]

        self._run(delete)

    def entries(self) -> int:
        return self._run(lambda db: db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]) or 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run(self, action: Callable[[sqlite3.Connection], T]) -> T | None:
        if self._db is None:
            return None
        try:
            return action(self._db)
        except sqlite3.Error as exc:
            log.warning(
                "the response cache %s failed (%s); it is set aside and a new one started",
                self.path,
                exc,
            )
            self.close()
            self._db = self._open(set_aside=True)
            return None

    def _open(self, *, set_aside: bool = False) -> sqlite3.Connection | None:
        """Open the file, or set it aside (as ``<name>.corrupt``) once and start anew;
        None if neither works."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if set_aside and self.path.exists():
                self.path.replace(self.path.with_name(self.path.name + ".corrupt"))
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.executescript(SCHEMA)
                self.bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()[0]
            except sqlite3.Error:
                db.close()
                raise
            return db
        except sqlite3.DatabaseError as exc:
            if not set_aside:
                log.warning(
                    "the response cache %s cannot be read (%s); it is set aside and a new one "
                    "started",
                    self.path,
                    exc,
                )
                return self._open(set_aside=True)
            reason: Exception = exc
        except OSError as exc:
            reason = exc
        log.warning(
            "the response cache %s cannot be used (%s); calls go to their backends uncached",
            self.path,
            reason,
        )
        return None


# Calls are retried across a restart (each is idempotent): a lookup sent while the cache
# restarts waits for it, within its timeout, instead of missing.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ResponseCacheActor:
    """The cluster's :class:`CacheStore`, on the head node; its hits, misses, evictions and
    size are metrics (``llm_cache_*``)."""

    def __init__(self, settings: CacheSettings) -> None:
        self._store = CacheStore(settings.path, settings.max_bytes)
        self._hits = Counter("llm_cache_hits", "Requests answered from the cache.", ())
        self._misses = Counter("llm_cache_misses", "Cacheable requests not in the cache.", ())
        self._evicted = Counter(
            "llm_cache_evictions", "Answers dropped to keep the cache in its size.", ()
        )
        self._bytes = Gauge("llm_cache_bytes", "Bytes of answers in the cache.", ())
        self._bytes.set(self._store.bytes, {})

    def get(self, key: str) -> bytes | None:
        answer = self._store.get(key)
        (self._misses if answer is None else self._hits).inc({})
        return answer

    def put(self, key: str, answer: bytes) -> None:
        evictions = self._store.evictions
        self._store.put(key, answer)
        for _ in range(self._store.evictions - evictions):
            self._evicted.inc({})
        self._bytes.set(self._store.bytes, {})

    def discard(self, key: str) -> None:
        self._store.discard(key)
        self._bytes.set(self._store.bytes, {})

    def describe(self) -> dict[str, object]:
        """Where the store is, whether it is usable, its entries and bytes."""
        return {
            "path": str(self._store.path),
            "usable": self._store.usable,
            "entries": self._store.entries(),
            "bytes": self._store.bytes,
        }


def get_or_create_cache(settings: CacheSettings) -> ActorHandle:
    """The cluster's cache actor: the running one, else a new one with ``settings``."""
    return named_actor(ResponseCacheActor, CACHE_NAME, settings, placement=HEAD_NODE)


class ResponseCache:
    """A process's way to the cluster's cache: a lookup or a store that fails is a miss."""

    def __init__(
        self, connect: Callable[[], ActorHandle], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._handle: ActorHandle | None = None
        self._lost_at = -RECONNECT_SECONDS
        self._warned_at = -WARN_EVERY_SECONDS
        self._writes = Background()

    async def get(self, key: str) -> ChatResponse | None:
        handle = self._reach()
        if handle is None:
            return None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                answer: bytes | None = await handle.get.remote(key)
        except Exception as exc:
            self._lost(exc)
            return None
        if answer is None:
            return None
        try:
            return ChatResponse.model_validate_json(answer)
        except ValidationError as exc:
            self._warn(exc)
            self._keep(handle.discard.remote(key))
            return None

    async def through(
        self, key: str | None, call: Callable[[], Awaitable[ChatResponse]]
    ) -> ChatResponse:
        """The answer kept under ``key`` (no slot, no backend), marked cached; else
        ``call``'s, kept there. ``key`` None (the call's answer may differ each time, or it
        does not use the cache): ``call``'s."""
        if key is None:
            return await call()
        asked, looked = time.time(), self._clock()
        if (cached := await self.get(key)) is not None:
            latency = self._clock() - looked
            return cached.model_copy(
                update={
                    "cached": True,
                    "queue_wait_seconds": 0.0,
                    "started_at": asked,
                    "latency_seconds": latency,
                }
            )
        response = await call()
        self.put(key, response)
        return response

    def put(self, key: str, response: ChatResponse) -> None:
        """Store in the background: the caller has its answer already."""
        if (handle := self._reach()) is not None:
            self._keep(handle.put.remote(key, response.model_dump_json().encode()))

    async def drain(self) -> None:
        """Wait for the stores under way (a process that ends would lose them)."""
        await self._writes.drain()

    def _keep(self, ref: ObjectRef[None]) -> None:
        self._writes.start(self._settle(ref))

    async def _settle(self, ref: ObjectRef[None]) -> None:
        try:
            await ref
        except Exception as exc:
            self._lost(exc)

    def _reach(self) -> ActorHandle | None:
        """The actor's handle; after a failure, looked up again once the pause is over."""
        if self._handle is None and self._clock() - self._lost_at >= RECONNECT_SECONDS:
            try:
                self._handle = self._connect()
            except Exception as exc:
                self._lost(exc)
        return self._handle

    def _lost(self, exc: BaseException) -> None:
        if self._handle is None or isinstance(exc, ray.exceptions.ActorDiedError):
            self._handle = None  # gone for good; else (restarting, slow) the handle stays
            self._lost_at = self._clock()
        self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(
                "the response cache is unavailable (%s: %s); calls go to their backends",
                type(exc).__name__,
                exc,
            )
