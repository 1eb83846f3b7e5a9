"""A pool through the real manager: calls wait once on two servers' groups and each runs
on the server whose slot it was granted; a server killed mid-run hands its calls over."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.groups import GroupSpec, ModelEntry, ServerEntry, classify
from actors.options import CallOptions
from actors.settings import PipelineSettings, ProviderSettings, ServeSettings, Settings
from pipelines.plateau import Service
from providers.errors import ContextTooLong
from providers.models import ChatMessage, ChatRequest
from providers.routing import provider_for_model
from providers.testing.fake_llm import Fail, FakeLLMServer, OpenAIDialect
from providers.testing.plateau_backend import plateau_answer
from providers.testing.probe_server import ProbeServer
from tests.integration.conftest import ManagerFactory, active_is, pending_is, records, run, settled
from tests.support.polling import eventually
from tests.support.serve_app import ask, respond, serve_app

SERVICES = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(4)]
KEY = "sk-test-pools"


@ray.remote(num_cpus=0)
class PoolCaller:
    """Calls on its own worker process, as a provider or pipeline actor would."""

    def __init__(self, manager: Any) -> None:
        self.client = ManagerClient(manager)

    async def post(self, pool: tuple[str, ...], urls: dict[str, str], priority: int) -> str:
        """Post to the server of the group granted; the group's id."""
        async with (
            self.client.slot(pool, CallOptions(priority=priority)) as lease,
            httpx.AsyncClient() as http,
        ):
            body = {"priority": priority, "group": lease.group}
            (await http.post(urls[lease.group], json=body)).raise_for_status()
        return lease.group

    async def wait_forever(self, pool: tuple[str, ...]) -> None:
        async with self.client.slot(pool):
            await asyncio.Event().wait()


def servers_pool(servers: list[ProbeServer]) -> tuple[list[GroupSpec], dict[str, str]]:
    """A cap-1 local-server group per server, and each group's server URL."""
    specs = [classify("openai-compatible", server.url) for server in servers]
    return specs, {spec.id: server.url for spec, server in zip(specs, servers, strict=True)}


async def test_a_pool_of_two_cap_one_servers_keeps_each_at_one_and_the_order_across_both(
    make_manager: ManagerFactory,
) -> None:
    priorities = [1 + (i * 7) % 10 for i in range(40)]
    with ProbeServer(hold=0.01) as a, ProbeServer(hold=0.01) as b:
        specs, urls = servers_pool([a, b])
        pool = tuple(urls)
        client = make_manager(*specs)
        callers = [PoolCaller.remote(client.handle) for _ in range(4)]  # type: ignore[attr-defined]
        async with client.slot(specs[0].id), client.slot(specs[1].id):
            calls = [callers[i % 4].post.remote(pool, urls, p) for i, p in enumerate(priorities)]
            for spec in specs:  # each waiter waits in both groups' queues
                await eventually(pending_is(client, spec.id, 40), f"40 waiting on {spec.id}")
        granted = await asyncio.gather(*calls)

    assert (a.max_in_flight, b.max_in_flight) == (1, 1)
    assert len(a.received) + len(b.received) == 40
    assert min(len(a.received), len(b.received)) > 0
    for spec, server in zip(specs, (a, b), strict=True):
        assert {body["group"] for body in server.bodies} == {spec.id}
        # Grants go out in priority order across the pool: so do each server's calls.
        served = [body["priority"] for body in server.bodies]
        assert served == sorted(served, reverse=True)
    assert sorted(granted) == sorted(body["group"] for body in a.bodies + b.bodies)
    await settled(client)  # nothing held, nobody waiting


async def test_a_killed_callers_pool_waits_leave_both_queues_at_once(
    make_manager: ManagerFactory,
) -> None:
    # Two cap-1 servers on loopback; nothing is called there.
    specs = [classify("openai-compatible", f"http://127.0.0.1:{port}") for port in (9101, 9102)]
    client = make_manager(*specs)
    pool = tuple(spec.id for spec in specs)
    holder, waiter = (PoolCaller.remote(client.handle) for _ in range(2))  # type: ignore[attr-defined]
    for _ in range(2):
        holder.wait_forever.remote(pool)
    for spec in specs:
        await eventually(active_is(client, spec.id, 1), f"the holder's slot of {spec.id}")
    for _ in range(3):
        waiter.wait_forever.remote(pool)
    for spec in specs:
        await eventually(pending_is(client, spec.id, 3), f"three waiting on {spec.id}")

    ray.kill(waiter)
    for spec in specs:
        await eventually(pending_is(client, spec.id, 0), f"the dead caller's waits on {spec.id}")
    ray.kill(holder)
    for spec in specs:
        await eventually(active_is(client, spec.id, 0), f"the dead holder's slot of {spec.id}")

    stats = await client.stats()
    assert sum(stats.groups[spec.id].abandoned for spec in specs) == 3 + 2
    assert stats.total_pending == 0


def deployed(*servers: FakeLLMServer) -> tuple[ServerEntry, ...]:
    """A deployment of each loopback server (a cap-1 group each)."""
    return tuple(ServerEntry(provider="openai-compatible", base_url=s.url + "/v1") for s in servers)


def pooled(servers: list[FakeLLMServer]) -> Settings:
    """The main job on model "pooled": one deployment per server, each a cap-1 group."""
    return Settings(
        models={"pooled": ModelEntry(servers=deployed(*servers))},
        pipeline=PipelineSettings(model="pooled", plateaus=2, mapping_types=("data",)),
        providers=ProviderSettings(retry_attempts=2, retry_deadline_seconds=10),
    )


async def test_the_main_job_on_a_pool_of_two_servers_writes_every_service_using_both(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    with (
        FakeLLMServer(OpenAIDialect(), hold=0.05, responder=plateau_answer) as a,
        FakeLLMServer(OpenAIDialect(), hold=0.05, responder=plateau_answer) as b,
    ):
        settings = pooled([a, b])
        client = make_manager(*settings.models["pooled"].specs())

        outcome = await run(SERVICES, settings, tmp_path / "out.jsonl", client)

    assert [r["status"] for r in records(tmp_path / "out.jsonl")] == ["ok"] * len(SERVICES)
    assert (a.max_in_flight, b.max_in_flight) == (1, 1)
    assert min(len(a.received), len(b.received)) > 0
    by_group = {call.group for call in outcome.calls}
    assert by_group == {spec.id for spec in settings.models["pooled"].specs()}


async def test_a_server_killed_mid_run_takes_no_more_calls_and_its_calls_move_over(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    """Server b is killed once it has taken some calls: the run ends with every service
    written, b's call in flight answered by a, and b out of rotation, named."""
    with (
        FakeLLMServer(OpenAIDialect(), hold=0.1, responder=plateau_answer) as a,
        FakeLLMServer(OpenAIDialect(), hold=0.1, responder=plateau_answer) as b,
    ):
        settings = pooled([a, b])
        specs = settings.models["pooled"].specs()
        client = make_manager(*specs)
        job = asyncio.ensure_future(run(SERVICES, settings, tmp_path / "out.jsonl", client))
        await eventually(lambda: b.in_flight == 1 and len(b.received) >= 3, "b mid-call")
        b.kill()
        taken_by_b = len(b.received)

        outcome = await job

    assert [r["status"] for r in records(tmp_path / "out.jsonl")] == ["ok"] * len(SERVICES)
    assert len(b.received) == taken_by_b  # none after it died
    assert all(call.ok for call in outcome.calls)
    assert a.max_in_flight == 1
    stats = (await client.stats()).groups[specs[1].id]
    assert "cannot reach" in (stats.out_reason or "")
    assert stats.active == 0


async def test_a_server_back_after_its_cooldown_takes_a_probe_then_its_share(
    make_manager: ManagerFactory,
) -> None:
    """Server b dies: its call moves to a, and b is out for the 1 s cooldown. Still dead
    after it, the probe finds it down and it is out again; the probe's call moves to a
    too. Restarted, its next probe answers and b is back in rotation. No call fails."""
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as a,
        FakeLLMServer(OpenAIDialect(), responder=respond) as b,
    ):
        settings = Settings(
            models={"pooled": ModelEntry(servers=deployed(a, b))},
            providers=ProviderSettings(breaker_cooldown_seconds=1.0),
        )
        group_a, group_b = (spec.id for spec in settings.models["pooled"].specs())
        client = make_manager(*settings.models["pooled"].specs())
        provider, _ = provider_for_model(settings, "pooled", client)

        async def b_is(state: str) -> bool:
            stats = (await client.stats()).groups[group_b]
            probing, out = stats.probing, stats.out_reason is not None
            return {"out": out and not probing, "probing": probing, "in": not out}[state]

        async def calls(n: int) -> list[str]:
            return [(await provider.chat(chat(f"call {i}"))).group for i in range(n)]

        assert set(await calls(2)) == {group_a, group_b}  # both free: they take turns
        b.kill()
        assert set(await calls(4)) == {group_a}
        assert await b_is("out")
        await eventually(lambda: b_is("probing"), "b's cooldown to pass")
        before = len(a.received)
        assert set(await calls(4)) == {group_a}
        assert len(a.received) == before + 4
        assert await b_is("out")  # the probe found it down again

        b.revive()
        await eventually(lambda: b_is("probing"), "b's second cooldown to pass")
        answered_by = await calls(4)

    assert group_b in answered_by
    assert await b_is("in")


async def test_a_pools_answer_is_kept_for_the_pool_whichever_server_gave_it(
    make_manager: ManagerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic requests asked twice of a pool: the second time each is answered from
    the cache (no slot, no server), though the pool has two servers."""
    monkeypatch.setenv("RAYGATE_CACHE__ENABLED", "true")
    monkeypatch.setenv("RAYGATE_CACHE__PATH", str(tmp_path / "answers.sqlite3"))
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as a,
        FakeLLMServer(OpenAIDialect(), responder=respond) as b,
    ):
        settings = Settings(models={"pooled": ModelEntry(servers=deployed(a, b))})
        client = make_manager(*settings.models["pooled"].specs())
        provider, _ = provider_for_model(settings, "pooled", client)
        requests = [chat(f"question {i}").model_copy(update={"temperature": 0.0}) for i in range(4)]
        cached = CallOptions(cache=True)

        first = [await provider.chat(request, cached) for request in requests]
        again = [await provider.chat(request, cached) for request in requests]
        opted_out = await provider.chat(requests[0], CallOptions(cache=False))

    assert [answer.cached for answer in first + again] == [False] * 4 + [True] * 4
    assert [answer.text for answer in again] == [answer.text for answer in first]
    assert not opted_out.cached
    assert len(a.received) + len(b.received) == 4 + 1
    assert min(len(a.received), len(b.received)) >= 1


@pytest.mark.slow
async def test_pools_and_fallbacks_over_http(ray_session: None) -> None:
    """The endpoint serves model "pooled" on two servers; its first server also serves
    model "local": one server, one group, one call at a time for both models. Model
    "primary", whose server is down, is answered by its fallback "local", and says so,
    unless the request says ``X-Fallback: off`` or ``"fallbacks": []``."""
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as a,
        FakeLLMServer(OpenAIDialect(), responder=respond) as b,
        FakeLLMServer(OpenAIDialect(), responder=respond) as down,
    ):
        servers = deployed(a, b)
        down.kill()
        settings = Settings(
            models={
                "local": ModelEntry(provider="openai-compatible", base_url=a.url + "/v1"),
                "pooled": ModelEntry(servers=servers),
                "primary": ModelEntry(
                    provider="openai-compatible",
                    base_url=down.url + "/v1",
                    fallbacks=("local",),
                ),
            },
            providers=ProviderSettings(retry_attempts=1),
            serve=ServeSettings(api_keys=(SecretStr(KEY),)),
        )
        with serve_app(settings, KEY) as url:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
                listed = (await http.get("/v1/models")).raise_for_status().json()
                asks = [("pooled", "slow:0.2")] * 6 + [("local", "slow:0.2")] * 2
                answers = await asyncio.gather(
                    *(
                        http.post(
                            "/v1/chat/completions",
                            json={"model": model, "messages": ask(text)},
                        )
                        for model, text in asks
                    )
                )
                primary = {"model": "primary", "messages": ask("hi")}
                fell_back = await http.post("/v1/chat/completions", json=primary)
                off = {"X-Fallback": "off"}
                kept = [
                    await http.post("/v1/chat/completions", json=primary, headers=off),
                    await http.post("/v1/chat/completions", json={**primary, "fallbacks": []}),
                ]
                after = (await http.get("/v1/models")).raise_for_status().json()
                queue = (await http.get("/v1/queue")).raise_for_status().json()

    by_id = {m["id"]: m for m in listed["data"]}
    assert [s["group"] for s in by_id["pooled"]["servers"]] == [s.spec().id for s in servers]
    assert by_id["primary"]["fallbacks"] == ["local"]
    pooled = {s["group"]: s for s in {m["id"]: m for m in after["data"]}["pooled"]["servers"]}
    group_a, group_b = (s.spec().id for s in servers)
    assert (pooled[group_a]["limit"], pooled[group_b]["out_reason"]) == (1, None)
    # Each call a server received was granted a slot of its group (a's: model "local"'s
    # and the fallback's calls too); a pool's waiter moved to a slot passed on to it
    # counts a grant in each of the two groups.
    assert pooled[group_a]["granted"] >= len(a.calls)
    assert pooled[group_b]["granted"] >= len(b.calls) >= 2
    assert queue["models"]["pooled"]["groups"] == [group_a, group_b]
    assert queue["models"]["primary"]["fallbacksTaken"] == {"local": {"ProviderUnavailable": 1}}
    assert fell_back.status_code == 200
    assert fell_back.headers["X-Fallback-From"] == "primary"
    assert fell_back.json()["model"] == "local"
    assert fell_back.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert [answer.status_code for answer in kept] == [503, 503]
    assert all("cannot reach" in answer.json()["error"]["message"] for answer in kept)
    assert [answer.status_code for answer in answers] == [200] * len(asks)
    assert (a.max_in_flight, b.max_in_flight) == (1, 1)
    assert min(len(a.received), len(b.received)) >= 2


# -- fallbacks ---------------------------------------------------------------------------


def chat(text: str) -> ChatRequest:
    return ChatRequest(model="m", messages=(ChatMessage(role="user", content=text),))


def with_fallback(primary: ModelEntry, fallback: FakeLLMServer) -> Settings:
    """Model "primary" falls back to "remote" (``fallback``'s server, no limit)."""
    return Settings(
        models={
            "primary": primary,
            "remote": ModelEntry(provider="openai-compatible", base_url=fallback.url + "/v1"),
        },
        providers=ProviderSettings(retry_attempts=2, retry_deadline_seconds=10),
    )


async def test_a_call_that_would_wait_past_fallback_after_goes_to_the_fallback_at_once(
    make_manager: ManagerFactory,
) -> None:
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as local,
        FakeLLMServer(OpenAIDialect(), responder=respond) as remote,
    ):
        primary = ModelEntry(
            provider="openai-compatible",
            base_url=local.url + "/v1",
            fallbacks=("remote",),
            fallback_after_seconds=0.5,
        )
        settings = with_fallback(primary, remote)
        remote_group = classify("openai-compatible", remote.url + "/v1").id
        client = make_manager(group_limits={remote_group: None})
        provider, _ = provider_for_model(settings, "primary", client)
        await provider.chat(chat("slow:0.3"))  # the manager learns a call takes 0.3 s

        answers = await asyncio.gather(*(provider.chat(chat("slow:0.3")) for _ in range(6)))

    # The first runs, the second waits about 0.3 s; the others would wait 0.6 s and more.
    by = [answer.fallback_from for answer in answers]
    assert (by.count("primary"), by.count(None)) == (4, 2)
    assert local.max_in_flight == 1
    assert (len(local.received), len(remote.received)) == (1 + 2, 4)
    assert {answer.group for answer in answers if answer.fallback_from} == {remote_group}


async def test_a_pool_with_no_server_up_hands_its_calls_to_the_fallback(
    make_manager: ManagerFactory,
) -> None:
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as a,
        FakeLLMServer(OpenAIDialect(), responder=respond) as b,
        FakeLLMServer(OpenAIDialect(), responder=respond) as remote,
    ):
        servers = deployed(a, b)
        settings = with_fallback(ModelEntry(servers=servers, fallbacks=("remote",)), remote)
        client = make_manager()
        provider, _ = provider_for_model(settings, "primary", client)
        a.kill()
        b.kill()

        answers = [await provider.chat(chat(f"call {i}")) for i in range(3)]

    assert [answer.fallback_from for answer in answers] == ["primary"] * 3
    assert [answer.text for answer in answers] == [f"echo: call {i}" for i in range(3)]
    stats = (await client.stats()).groups
    for spec in settings.models["primary"].specs():
        assert "cannot reach" in (stats[spec.id].out_reason or "")


async def test_a_prompt_too_long_for_the_model_goes_to_the_fallback_unless_the_call_says_no(
    make_manager: ManagerFactory,
) -> None:
    with (
        FakeLLMServer(OpenAIDialect()) as small,
        FakeLLMServer(OpenAIDialect(), responder=respond) as remote,
    ):
        too_long = "This model's maximum context length is 2048 tokens."
        small.script(Fail(400, too_long), Fail(400, too_long))
        primary = ModelEntry(
            provider="openai-compatible", base_url=small.url + "/v1", fallbacks=("remote",)
        )
        settings = with_fallback(primary, remote)
        provider, _ = provider_for_model(settings, "primary", make_manager())

        answered = await provider.chat(chat("a long prompt"))
        with pytest.raises(ContextTooLong):
            await provider.chat(chat("a long prompt"), CallOptions(fallbacks=False))

    assert (answered.fallback_from, answered.text) == ("primary", "echo: a long prompt")
    assert (len(small.received), len(remote.received)) == (2, 1)


async def test_the_main_job_records_which_answers_its_models_fallback_gave(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    """The run's model has no server up: every answer is the fallback's, and each
    service's record says so, stage by stage."""
    with (
        FakeLLMServer(OpenAIDialect(), responder=plateau_answer) as down,
        FakeLLMServer(OpenAIDialect(), responder=plateau_answer) as remote,
    ):
        primary = ModelEntry(servers=deployed(down), fallbacks=("remote",))
        settings = with_fallback(primary, remote)
        settings = settings.model_copy(
            update={
                "pipeline": PipelineSettings(model="primary", plateaus=1, mapping_types=("data",))
            }
        )
        down.kill()

        await run(SERVICES[:1], settings, tmp_path / "out.jsonl", make_manager())

    [record] = records(tmp_path / "out.jsonl")
    assert record["status"] == "ok"
    assert record["fallbacks"] == [
        "ambitions: remote",
        "features of plateau 1: remote",
        "mappings (data) of plateau 1: remote",
    ]


# -- the first calls of a cold endpoint --------------------------------------------------


async def _answered(http: httpx.AsyncClient, model: str, text: str) -> tuple[float, httpx.Response]:
    """Post ``text`` to ``model``; how long it took, and the answer."""
    started = asyncio.get_running_loop().time()
    answer = await http.post("/v1/chat/completions", json={"model": model, "messages": ask(text)})
    return asyncio.get_running_loop().time() - started, answer


@pytest.mark.slow
async def test_a_pools_first_burst_over_http_is_answered_within_a_few_call_times(
    ray_session: None,
) -> None:
    """40 requests at once to a pool nothing has called yet (the endpoint warmed up on
    another model): whatever serves the pool is made once while the others wait, and the
    first answer comes within 3 s (it took 15 s when each request made its own)."""
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as warm,
        FakeLLMServer(OpenAIDialect(), responder=respond) as a,
        FakeLLMServer(OpenAIDialect(), responder=respond) as b,
    ):
        settings = Settings(
            models={
                "warm": ModelEntry(provider="openai-compatible", base_url=warm.url + "/v1"),
                "pooled": ModelEntry(servers=deployed(a, b)),
            },
            serve=ServeSettings(api_keys=(SecretStr(KEY),)),
        )
        with serve_app(settings, KEY, "warm") as url:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
                burst = [_answered(http, "pooled", "slow:0.2") for _ in range(40)]
                answers = await asyncio.gather(*burst)

    assert [answer.status_code for _, answer in answers] == [200] * 40
    assert min(took for took, _ in answers) < 3.0
    assert (a.max_in_flight, b.max_in_flight) == (1, 1)
    assert len(a.received) + len(b.received) == 40


@pytest.mark.slow
async def test_a_cold_models_calls_go_to_its_fallback_once_their_max_wait_passes(
    ray_session: None,
) -> None:
    """20 requests at once to a cap-1 model of 0.3 s calls that falls back after 0.5 s,
    nothing called before: no call ended yet, so the wait cannot be estimated at arrival;
    a call still waiting 0.5 s after it reached the endpoint leaves the queue then, for
    the fallback, and no call the model kept waited for its slot past its 0.5 s by more
    than one call time (the answer's X-Queue-Wait; it took 5.3 s before this)."""
    call, max_wait = 0.3, 0.5
    with (
        FakeLLMServer(OpenAIDialect(), responder=respond) as capped,
        FakeLLMServer(OpenAIDialect(), responder=respond) as other,
    ):
        settings = Settings(
            models={
                "capped": ModelEntry(
                    provider="openai-compatible",
                    base_url=capped.url + "/v1",
                    fallbacks=("other",),
                    fallback_after_seconds=max_wait,
                ),
                "other": ModelEntry(provider="openai", base_url=other.url + "/v1"),
            },
            api_keys={"openai": SecretStr("sk-test-other")},
            serve=ServeSettings(api_keys=(SecretStr(KEY),)),
        )
        with serve_app(settings, KEY, "other") as url:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
                burst = [_answered(http, "capped", f"slow:{call}") for _ in range(20)]
                answers = await asyncio.gather(*burst)

    kept = [
        float(answer.headers["X-Queue-Wait"])
        for _, answer in answers
        if "X-Fallback-From" not in answer.headers
    ]
    fell_back = [answer for _, answer in answers if "X-Fallback-From" in answer.headers]
    assert [answer.status_code for _, answer in answers] == [200] * 20
    assert fell_back, "no call went to the fallback"
    assert all(answer.json()["model"] == "other" for answer in fell_back)
    assert max(kept) <= max_wait + call, sorted(kept)
    assert capped.max_in_flight == 1
