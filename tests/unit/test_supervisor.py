"""The model-server supervisor, on a stand-in server process killed for real (no Ray)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from actors.engine import SlotEngine
from actors.gate import SlotGate
from actors.groups import classify
from actors.options import CallOptions
from actors.slots import LocalSlots
from providers.breaker import State
from providers.errors import ModelServerCrashed, ModelServerFailedToStart, ProviderTimeout
from providers.gated import GatedProvider
from providers.models import ChatMessage, ChatRequest
from providers.retry import RetryPolicy
from providers.supervisor import RestartPolicy, ServerSupervisor, SupervisedBackend
from tests.support.model_server import StandInServer
from tests.support.polling import eventually

HI = ChatRequest(model="stand-in", messages=(ChatMessage(role="user", content="hi"),))


@pytest.fixture
async def supervised() -> AsyncIterator[Callable[..., ServerSupervisor]]:
    made: list[ServerSupervisor] = []

    def make(
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        **server: object,
    ) -> ServerSupervisor:
        stand_in = StandInServer(**server)  # type: ignore[arg-type]
        supervisor = ServerSupervisor(stand_in, policy, clock=clock)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.stop()
        process = supervisor.server.process  # type: ignore[attr-defined]
        assert process is None or process.poll() is not None, "a server was left running"


async def kill(supervisor: ServerSupervisor, how: signal.Signals) -> int:
    """Kill the running server; return once the supervisor has seen it go."""
    pid, seen = supervisor.pid, len(supervisor.exits)
    assert pid is not None
    os.kill(pid, how)
    await eventually(lambda: len(supervisor.exits) > seen, "the supervisor to see the exit")
    return pid


def gated(supervisor: ServerSupervisor, limit: int = 1) -> GatedProvider:
    spec = classify("openai-compatible", supervisor.server.base_url)
    engine = SlotEngine(epoch=1, group_limits={spec.id: limit})
    backend = SupervisedBackend(supervisor, group=spec.id, timeout=30.0)
    return GatedProvider(
        backend, spec, LocalSlots(SlotGate(engine)), retry=RetryPolicy(attempts=4, base_delay=0.05)
    )


async def in_flight(supervisor: ServerSupervisor, calls: int) -> None:
    await eventually(
        lambda: supervisor.server.output_tail().count("POST /v1/chat/completions") > calls,
        f"{calls} calls in flight at the server",
    )


async def test_a_server_that_dies_on_its_first_generation_fails_to_start_saying_how(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised(die_on_generation="SIGSEGV")

    with pytest.raises(ModelServerFailedToStart) as failed:
        await supervisor.ready()

    message = str(failed.value)
    assert message.startswith(
        f"openai-compatible: {supervisor.server.name}: killed by SIGSEGV on its first "
        "generation; the stand-in's hint; its output: listening on"
    )
    assert "POST /v1/chat/completions" in message
    assert not failed.value.retryable
    with pytest.raises(ModelServerFailedToStart):
        await supervisor.ready()  # every later call fails at once, the same way


async def test_calls_in_flight_and_waiting_go_on_after_the_server_is_killed_and_restarted(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised(hold=2.0)
    provider = gated(supervisor)
    await provider.ready()
    await supervisor.ready()

    calls = [
        asyncio.create_task(provider.chat(HI, CallOptions(request_id=f"call-{i}")))
        for i in range(3)
    ]
    await in_flight(supervisor, calls=1)  # the first holds the slot; two wait for it
    first_pid = await kill(supervisor, signal.SIGKILL)
    answers = await asyncio.gather(*calls)

    assert [a.text for a in answers] == ["ok", "ok", "ok"]
    assert supervisor.restarts == 1
    assert [(e.pid, e.how) for e in supervisor.exits] == [(first_pid, "killed by SIGKILL")]
    assert supervisor.pid != first_pid
    assert provider.breaker.state is State.CLOSED  # a crash is not "the backend is down"


async def test_a_call_that_loses_its_server_names_the_crash(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised(hold=5.0)
    backend = gated(supervisor).backend
    await supervisor.ready()

    call = asyncio.create_task(backend.chat(HI))
    await in_flight(supervisor, calls=1)
    pid = await kill(supervisor, signal.SIGSEGV)

    with pytest.raises(ModelServerCrashed) as crashed:
        await call
    assert str(crashed.value).startswith(
        f"openai-compatible: {supervisor.server.name}: killed by SIGSEGV (pid {pid}) during "
        "this call; its last output: listening on"
    )
    assert crashed.value.retryable  # the supervisor restarts it
    await backend.aclose()


async def test_a_call_that_times_out_on_a_living_server_keeps_its_own_error(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised(hold=5.0)
    spec = classify("openai-compatible", supervisor.server.base_url)
    backend = SupervisedBackend(supervisor, group=spec.id, timeout=0.5)
    await supervisor.ready()

    with pytest.raises(ProviderTimeout):
        await backend.chat(HI)

    assert supervisor.exits == []
    await backend.aclose()


async def test_past_the_restart_bound_every_call_fails_at_once_with_the_crash(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised(RestartPolicy(restarts=1, window=300.0))
    provider = gated(supervisor)
    await provider.ready()
    await supervisor.ready()
    await kill(supervisor, signal.SIGKILL)
    await supervisor.ready()  # restarted once
    last = await kill(supervisor, signal.SIGKILL)

    with pytest.raises(ModelServerCrashed) as crashed:
        await provider.chat(HI)

    assert str(crashed.value).startswith(
        f"openai-compatible: {supervisor.server.name}: killed by SIGKILL (pid {last}); not "
        "restarted again: 2 crashes within 300s, at most 1 restart; its last output:"
    )
    assert not crashed.value.retryable
    assert supervisor.restarts == 1


async def test_crashes_older_than_the_window_do_not_count(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    now = [0.0]
    supervisor = supervised(RestartPolicy(restarts=1, window=60.0), clock=lambda: now[0])
    await supervisor.ready()
    for _ in range(3):
        await kill(supervisor, signal.SIGKILL)
        await supervisor.ready()
        now[0] += 61.0

    assert supervisor.restarts == 3


async def test_stop_ends_the_server_and_its_supervision(
    supervised: Callable[..., ServerSupervisor],
) -> None:
    supervisor = supervised()
    await supervisor.ready()
    process = supervisor.server.process  # type: ignore[attr-defined]

    await supervisor.stop()

    assert process.poll() is not None
    assert supervisor.exits == []  # a stop is not a crash
