"""Keeping a model server that raygate runs itself alive, and naming its deaths.

    spawn -> ready? (its API answers, then one tiny generation) -> serving
      ^                                                               |
      +---- restart (at most ``restarts`` within ``window`` s) <- it exited

The supervisor learns of an exit the moment it happens (a pidfd on the
event loop, no polling), so a call that loses its connection can tell a
crash from any other failure and says which server died and how: its exit
code or signal, and the tail of its output. Calls wait while the server
restarts and then go on (they are retried by the provider's retry loop);
past the bound, every call fails at once with the crash that ended it.

A server that cannot answer a tiny generation at start is not ready: it
fails then, with its own words, instead of on the job's first real call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from actors.settings import PROVIDER_DEFAULTS
from providers.errors import (
    ModelServerCrashed,
    ModelServerError,
    ModelServerFailedToStart,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.models import ChatRequest, ChatResponse, StreamDelta
from providers.openai import OpenAICompatibleBackend

log = logging.getLogger(__name__)

# How long a call that lost its server waits to see the process exit: the
# connection can break a moment before the kernel reports the exit.
EXIT_GRACE_SECONDS = 2.0
# Between readiness probes of a starting server (its HTTP API is its only signal).
PROBE_INTERVAL_SECONDS = 0.2
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``restarts`` restarts within any ``window`` seconds; 0 never restarts."""

    restarts: int = PROVIDER_DEFAULTS.model_server_restarts
    window: float = PROVIDER_DEFAULTS.model_server_restart_window_seconds


@dataclass(frozen=True)
class Exit:
    """How one server process ended, with the last of what it printed."""

    pid: int
    returncode: int
    output: str
    at: float

    @property
    def how(self) -> str:
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exited with code {self.returncode}"


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Run as the server's first program (argv: the starting process's id, then the server's
# command): Linux sends the server SIGTERM when the thread that started it exits, however
# it ends (even SIGKILL of its process); then it becomes the server (same process id).
# Set here, after the exec, not in a preexec_fn: Python code run between fork and exec in
# a process with threads inside gRPC (a Ray worker) crashed the child (SIGSEGV, SIGALRM).
DIE_WITH_PARENT = f"""
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the process that started this server ended before it started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class LoopbackServer:
    """A server the supervisor can start again on the same address: a process on a fixed
    loopback port, its output kept for the errors that name its end. Subclasses give its
    ``command``, ``kind`` and ``model``, and may give a ``hint`` for an exit.

    The port is chosen once, so a restarted server keeps the address, and with
    it the concurrency group, of the first. The server is told to die with the
    thread that started it, so a killed owner leaves none behind.
    """

    provider = "openai-compatible"
    kind: str  # e.g. "llama.cpp server"
    model: str

    def __init__(self) -> None:
        self.port = free_loopback_port()
        self.process: subprocess.Popen[bytes] | None = None
        # The current process's output, for the errors that name its end.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    @property
    def name(self) -> str:
        return f"{self.kind} at 127.0.0.1:{self.port} ({self.model})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def spawn(self) -> subprocess.Popen[bytes]:
        self._log.seek(0)
        self._log.truncate()
        command = self.command()
        parent = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid())]
        self.process = subprocess.Popen(
            [*parent, shutil.which(command[0]) or command[0], *command[1:]],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self.process

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def output_tail(self, most: int = 600) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-most:] or "(no output)"

    def hint(self, exit: Exit) -> str:
        """What a user can do about this exit, or ""."""
        return ""


class ServerSupervisor:
    def __init__(
        self,
        server: LoopbackServer,
        policy: RestartPolicy | None = None,
        *,
        startup_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.policy = policy or RestartPolicy()
        self.startup_timeout = startup_timeout
        self._clock = clock
        self.exits: list[Exit] = []  # every crash while serving, oldest first
        self.restarts = 0
        self.pid: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._failure: ModelServerError | None = None
        self._exited: asyncio.Future[Exit] | None = None

    async def ready(self) -> None:
        """Start the server if nobody has; wait while it (re)starts; raise once it gave up."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._supervise(), name=f"supervise {self.server.name}"
            )
        await self._up.wait()
        if self._failure is not None:
            raise self._failure

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Around one call to the server: a lost connection that its death explains
        becomes the crash. Only transport failures are checked, so an answer the
        caller rejects (a 400, invalid JSON) costs no wait."""
        await self.ready()
        exited = self._exited
        assert exited is not None
        try:
            yield
        except (ProviderUnavailable, ProviderTimeout) as error:
            try:
                ended = await asyncio.wait_for(asyncio.shield(exited), EXIT_GRACE_SECONDS)
            except TimeoutError:
                ended = None  # the server lives: the failure was something else
            if ended is None:
                raise
            raise ModelServerCrashed(
                self.server.provider,
                self.server.name,
                f"{ended.how} (pid {ended.pid}) during this call; its last output: {ended.output}",
                restarting=True,  # if the bound forbids it, the retry's ready() says so
            ) from error

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.server.stop()

    # -- the supervising task ------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._keep_running()
        except Exception as error:  # e.g. the command cannot be run at all
            self.server.stop()
            self._give_up(self._failed_to_start(f"could not be run: {error!r}"))

    async def _keep_running(self) -> None:
        while True:
            process = self.server.spawn()
            self.pid = process.pid
            self._exited = exited = self._watch(process)
            try:
                await self._until_ready(exited)
            except ModelServerFailedToStart as failure:
                self.server.stop()
                self._give_up(failure)
                return
            self._up.set()
            ended = await exited
            self._up.clear()
            self.exits.append(ended)
            recent = [e for e in self.exits if ended.at - e.at <= self.policy.window]
            if len(recent) > self.policy.restarts:
                self._give_up(
                    ModelServerCrashed(
                        self.server.provider,
                        self.server.name,
                        f"{ended.how} (pid {ended.pid}); not restarted again: "
                        f"{_count(len(recent), 'crash', 'crashes')} within "
                        f"{self.policy.window:g}s, at most "
                        f"{_count(self.policy.restarts, 'restart', 'restarts')}; "
                        f"its last output: {ended.output}",
                        restarting=False,
                    )
                )
                return
            self.restarts += 1
            log.warning(
                "%s %s (pid %d); restarting it (%d of at most %d within %gs)",
                self.server.name,
                ended.how,
                ended.pid,
                len(recent),
                self.policy.restarts,
                self.policy.window,
            )

    def _give_up(self, failure: ModelServerError) -> None:
        self._failure = failure
        self._up.set()  # wake every waiter, to raise the failure

    def _watch(self, process: subprocess.Popen[bytes]) -> asyncio.Future[Exit]:
        """A future of the process's exit, resolved by the kernel's word (a pidfd), not polled."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[Exit] = loop.create_future()
        pidfd = os.pidfd_open(process.pid)

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            returncode = process.wait()
            if not exited.done():
                exited.set_result(
                    Exit(process.pid, returncode, self.server.output_tail(), self._clock())
                )

        loop.add_reader(pidfd, on_exit)
        return exited

    async def _until_ready(self, exited: asyncio.Future[Exit]) -> None:
        """Return once the API answers and one tiny generation succeeds; else raise why not."""
        try:
            async with asyncio.timeout(self.startup_timeout), httpx.AsyncClient() as http:
                while not await self._answers(http, exited):
                    await asyncio.wait([exited], timeout=PROBE_INTERVAL_SECONDS)
                await self._first_generation(http, exited)
        except TimeoutError:
            raise self._failed_to_start(
                f"not ready after {self.startup_timeout:g}s; its output: "
                f"{self.server.output_tail()}"
            ) from None

    async def _answers(self, http: httpx.AsyncClient, exited: asyncio.Future[Exit]) -> bool:
        self._check_alive(exited, "before it answered")
        try:
            response = await http.get(self.server.base_url + "/models", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def _first_generation(
        self, http: httpx.AsyncClient, exited: asyncio.Future[Exit]
    ) -> None:
        generation = asyncio.ensure_future(self._generate(http))
        either: list[asyncio.Future[Any]] = [generation, exited]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not generation.done():
            generation.cancel()
        elif generation.exception() is not None:
            # The connection breaks a moment before the kernel reports the exit.
            await asyncio.wait([exited], timeout=EXIT_GRACE_SECONDS)
        self._check_alive(exited, "on its first generation")
        try:
            response = generation.result()
        except httpx.HTTPError as error:
            raise self._failed_to_start(
                f"its first generation failed ({error!r}); its output: {self.server.output_tail()}"
            ) from error
        if response.status_code != 200:
            raise self._failed_to_start(
                f"its first generation answered HTTP {response.status_code}: "
                f"{response.text[:300]}; its output: {self.server.output_tail()}"
            )

    async def _generate(self, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(
            self.server.base_url + "/chat/completions",
            json={
                "model": self.server.model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
            },
            timeout=self.startup_timeout,
        )

    def _check_alive(self, exited: asyncio.Future[Exit], when: str) -> None:
        if exited.done():
            ended = exited.result()
            hint = self.server.hint(ended)
            raise self._failed_to_start(
                f"{ended.how} {when}{'; ' + hint if hint else ''}; its output: {ended.output}"
            )

    def _failed_to_start(self, detail: str) -> ModelServerFailedToStart:
        return ModelServerFailedToStart(self.server.provider, self.server.name, detail)


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


class SupervisedBackend(OpenAICompatibleBackend):
    """The OpenAI-compatible API of a supervised server: every call goes through ``serving``."""

    def __init__(self, supervisor: ServerSupervisor, **kwargs: Any) -> None:
        super().__init__(supervisor.server.base_url, **kwargs)
        self.supervisor = supervisor

    async def chat(self, request: ChatRequest) -> ChatResponse:
        async with self.supervisor.serving():
            return await super().chat(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        async with self.supervisor.serving():
            async for delta in super().stream(request):
                yield delta
