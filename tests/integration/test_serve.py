"""The Ray Serve endpoint on the session's cluster, called with the official `openai` client
and with raw HTTP, in front of loopback servers that speak OpenAI's wire format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import openai
import pytest
import ray
from pydantic import SecretStr

from actors.client import ManagerClient
from actors.groups import ModelEntry, classify
from actors.names import MANAGER_NAME, NAMESPACE
from actors.settings import (
    PipelineSettings,
    QueueSettings,
    ServeSettings,
    Settings,
    TenantSettings,
)
from providers.llamacpp import EMBEDDED_MODEL_ID
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from tests.support.polling import eventually
from tests.support.serve_app import RELEASE, ask, respond, serve_app, the_replica

REPO = Path(__file__).parents[2]
KEY = "sk-test-raygate"
# A tenant's key: priorities up to 3, the model "local" only.
TEAM_KEY = "sk-test-team-a"
# A tenant with a quota: 3 requests a minute, 1 at once.
QUOTA_KEY = "sk-test-quota"
# A tenant with no bounds; and one that runs one pipeline job at a time.
TEAM_B_KEY = "sk-test-team-b"
ONE_JOB_KEY = "sk-test-one-job"
MAX_PENDING = 100


@dataclass(frozen=True)
class Gateway:
    url: str
    local: FakeLLMServer  # cap 1
    group: str
    data: Path  # serve.data_dir

    def client(self, key: str = KEY, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)

    def http(self, key: str | None = KEY) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)

    async def queue(self) -> dict[str, Any]:
        async with self.http() as http:
            answer: dict[str, Any] = (await http.get("/v1/queue")).raise_for_status().json()
        return answer

    async def pending(self) -> int:
        return int((await self.queue())["pendingByGroup"].get(self.group, 0))

    async def active(self) -> int:
        return int((await self.queue())["activeByGroup"].get(self.group, 0))


@pytest.fixture(scope="module")
def gateway(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("data")
    with FakeLLMServer(OpenAIDialect(), responder=respond, stop_on_disconnect=True) as local:
        base_url = local.url + "/v1"
        # The cache on, as by default (the suite turns it off): serve.cache decides.
        cache_on = {"RAYGATE_CACHE__ENABLED": "true", "RAYGATE_CACHE__PATH": str(data / "c.db")}
        with mock.patch.dict(os.environ, cache_on):
            settings = Settings(
                models={"local": ModelEntry(provider="openai-compatible", base_url=base_url)},
                queue=QueueSettings(max_pending_per_group=MAX_PENDING),
                # Jobs over HTTP call the backend each time (their tests count calls).
                pipeline=PipelineSettings(
                    model="local",
                    plateaus=1,
                    mapping_types=("data",),
                    cache=False,
                    transcripts=True,
                ),
                serve=ServeSettings(
                    api_keys=(SecretStr(KEY),),
                    tenants={
                        "team-a": TenantSettings(
                            keys=(SecretStr(TEAM_KEY),), max_priority=3, models=("local",)
                        ),
                        "quota": TenantSettings(keys=(SecretStr(QUOTA_KEY),), rpm=3, max_pending=1),
                        "team-b": TenantSettings(keys=(SecretStr(TEAM_B_KEY),)),
                        "one-job": TenantSettings(keys=(SecretStr(ONE_JOB_KEY),), max_jobs=1),
                    },
                    max_body_bytes=64 * 1024,
                    data_dir=data,
                    results_dir=data / "results",
                ),
            )
        # The endpoint creates the cluster's manager with these settings.
        with serve_app(settings, KEY) as url:
            yield Gateway(url, local, classify("openai-compatible", base_url).id, data)


async def test_a_completion_through_the_openai_client(gateway: Gateway) -> None:
    async with gateway.client() as client:
        response = await client.chat.completions.create(model="local", messages=ask("hi"))

    assert response.choices[0].message.content == "echo: hi"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "local"
    assert response.usage is not None
    assert response.usage.total_tokens == 18


async def test_by_default_the_endpoint_answers_no_request_from_the_cache(
    gateway: Gateway,
) -> None:
    """``serve.cache`` is off by default: the same deterministic request twice reaches the
    backend twice."""
    received = len(gateway.local.received)
    async with gateway.client() as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="local", messages=ask("twice"), temperature=0
            )

    assert len(gateway.local.received) == received + 2


async def test_a_stream_through_the_openai_client_ends_with_its_usage(gateway: Gateway) -> None:
    async with gateway.client() as client:
        stream = await client.chat.completions.create(
            model="local",
            messages=ask("pieces"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


async def test_json_schema_output_through_the_openai_client(gateway: Gateway) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    async with gateway.client() as client:
        response = await client.chat.completions.create(
            model="local",
            messages=ask("json"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            },
        )

    assert json.loads(response.choices[0].message.content or "") == {"answer": 42}
    sent = gateway.local.bodies[-1]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"] == schema


async def test_bad_requests_get_openai_shaped_errors_and_the_app_keeps_serving(
    gateway: Gateway,
) -> None:
    async with gateway.client() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="gpt-9", messages=ask("hi"))
        with pytest.raises(openai.UnprocessableEntityError) as bad_field:
            await client.chat.completions.create(model="local", messages=ask("hi"), temperature=5)
        with pytest.raises(openai.UnprocessableEntityError) as bad_priority:
            await client.chat.completions.create(
                model="local", messages=ask("hi"), extra_body={"priority": 11}
            )
        with pytest.raises(openai.UnprocessableEntityError) as system_last:
            await client.chat.completions.create(
                model="local",
                messages=[*ask("hi"), {"role": "system", "content": "be brief"}],
            )
        with pytest.raises(openai.AuthenticationError):
            async with gateway.client(key="sk-wrong") as stranger:
                await stranger.chat.completions.create(model="local", messages=ask("hi"))
        assert "provider/model" in unknown.value.message
        assert unknown.value.body["param"] == "model"  # type: ignore[index]
        assert bad_field.value.body["param"] == "temperature"  # type: ignore[index]
        assert bad_priority.value.body["param"] == "priority"  # type: ignore[index]
        assert system_last.value.body["param"] == "messages"  # type: ignore[index]

        async with gateway.http() as http:
            malformed = await http.post("/v1/chat/completions", content=b"{not json")
            too_big = await http.post(
                "/v1/chat/completions",
                json={"model": "local", "messages": ask("x" * 70_000)},
            )
            bad_headers = [
                await http.post(
                    "/v1/chat/completions",
                    json={"model": "local", "messages": ask("hi")},
                    headers={name: value},
                )
                for name, value in (("X-Priority", "high"), ("X-Queue-Timeout", "-1"))
            ]
        async with gateway.http(key=None) as anonymous:
            health = await anonymous.get("/healthz")
            ready = await anonymous.get("/readyz")
            queue = await anonymous.get("/v1/queue")
        assert malformed.status_code == 422
        assert "error" in malformed.json()
        assert [r.status_code for r in bad_headers] == [422, 422]
        assert too_big.status_code == 413
        assert "error" in too_big.json()
        assert (health.status_code, ready.status_code, queue.status_code) == (200, 200, 401)

        response = await client.chat.completions.create(model="local", messages=ask("still"))
    assert response.choices[0].message.content == "echo: still"


async def test_priority_over_http_with_one_slot(gateway: Gateway) -> None:
    """A cap-1 group held busy; 20 requests of mixed priority, by header or body field,
    each queued before the next is sent: served by priority, first come first served
    within one; the backend never sees two at once."""
    received = len(gateway.local.received)
    priorities = [1 + (i * 7) % 10 for i in range(20)]
    async with gateway.client() as client:

        async def one(i: int, priority: int) -> None:
            by_header = i % 2 == 0
            headers = {"X-Request-Id": f"req-{i}"}
            await client.chat.completions.create(
                model="local",
                messages=ask(f"p{priority}-{i}"),
                extra_headers={**headers, "X-Priority": str(priority)} if by_header else headers,
                extra_body=None if by_header else {"priority": priority},
            )

        RELEASE.clear()
        try:
            holder = asyncio.create_task(
                client.chat.completions.create(model="local", messages=ask("hold"))
            )
            await eventually(lambda: _is(gateway.active, 1), "the held call to take the slot")
            calls = []
            for i, priority in enumerate(priorities):
                calls.append(asyncio.create_task(one(i, priority)))
                await eventually(lambda n=i + 1: _is(gateway.pending, n), f"request {i} queued")
            async with gateway.http() as http:
                last = (await http.get("/v1/queue/req-10")).raise_for_status().json()
                unknown = await http.get("/v1/queue/req-none")
        finally:
            RELEASE.set()  # also when the test fails: the holder's thread ends
        await asyncio.gather(holder, *calls)

    # The second of the two priority-1 requests: all the others go first.
    assert (last["requestId"], last["priority"], last["ahead"]) == ("req-10", 1, 19)
    assert unknown.status_code == 404

    served = [b["messages"][-1]["content"] for b in gateway.local.bodies[received + 1 :]]
    expected = sorted(range(20), key=lambda i: (-priorities[i], i))
    assert served == [f"p{priorities[i]}-{i}" for i in expected]
    assert gateway.local.max_in_flight == 1


async def test_a_tenant_is_served_at_its_ceiling_and_sees_and_calls_only_its_models(
    gateway: Gateway,
) -> None:
    ask_local = {"model": "local", "messages": ask("ceiling")}
    async with gateway.http(TEAM_KEY) as team, gateway.http() as default:
        capped = await team.post(
            "/v1/chat/completions", json=ask_local, headers={"X-Priority": "9"}
        )
        asked = await team.post("/v1/chat/completions", json=ask_local, headers={"X-Priority": "2"})
        free = await default.post(
            "/v1/chat/completions", json=ask_local, headers={"X-Priority": "9"}
        )
        listed = (await team.get("/v1/models")).raise_for_status().json()
        everything = (await default.get("/v1/models")).raise_for_status().json()
        other = await team.post(
            "/v1/chat/completions", json={"model": EMBEDDED_MODEL_ID, "messages": ask("no")}
        )
        invalid = await team.post(
            "/v1/chat/completions", json=ask_local, headers={"X-Priority": "11"}
        )

    assert [r.headers["X-Priority"] for r in (capped, asked, free)] == ["3", "2", "9"]
    assert [m["id"] for m in listed["data"]] == ["local"]
    assert len(everything["data"]) > 1
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "model_not_found"
    assert "local" not in other.json()["error"]["message"]  # the others stay unnamed
    assert invalid.status_code == 422  # above 10 is invalid, not capped


async def test_a_models_outlook_says_whether_a_call_runs_now_and_who_waits(
    gateway: Gateway,
) -> None:
    """One slot, held; a priority-2 call waits. A new call at 9 would wait behind nobody,
    at 1 behind the waiter, both for the slot the held call frees."""
    async with gateway.client() as client, gateway.http() as http:
        # The last test's slot back (a slot lent to the replica lingers idle a moment).
        await eventually(lambda: _is(gateway.active, 0), "the slot free")
        free = (await http.get("/v1/models/local")).raise_for_status().json()
        RELEASE.clear()
        try:
            holder = asyncio.create_task(
                client.chat.completions.create(model="local", messages=ask("hold"))
            )
            await eventually(lambda: _is(gateway.active, 1), "the held call to take the slot")
            waiter = asyncio.create_task(
                client.chat.completions.create(
                    model="local", messages=ask("waits"), extra_headers={"X-Priority": "2"}
                )
            )
            await eventually(lambda: _is(gateway.pending, 1), "the priority-2 call to wait")
            high, low = [
                (await http.get("/v1/models/local", params={"priority": p})).json()["outlook"]
                for p in (9, 1)
            ]
        finally:
            RELEASE.set()
        await asyncio.gather(holder, waiter)
        team = await http.get("/v1/models/local", headers={"Authorization": f"Bearer {TEAM_KEY}"})
        other = await http.get(
            f"/v1/models/{EMBEDDED_MODEL_ID}", headers={"Authorization": f"Bearer {TEAM_KEY}"}
        )
        unknown = await http.get("/v1/models/no-such-model")
        invalid = await http.get("/v1/models/local", params={"priority": 11})

    assert free["id"] == "local"
    assert free["servers"][0]["group"] == gateway.group
    assert (free["outlook"]["runs_now"], free["outlook"]["free"]) == (True, 1)
    assert (high["runs_now"], high["free"], high["priority"]) == (False, 0, 9)
    assert high["waiting_by_priority"] == low["waiting_by_priority"] == {"2": 1}
    # Estimated from the calls that ended before (the warm-up's at least): at priority 1,
    # the waiter's hold more.
    assert high["estimated_wait_seconds"] > 0
    assert low["estimated_wait_seconds"] == pytest.approx(2 * high["estimated_wait_seconds"])
    assert team.json()["outlook"]["priority"] == 3  # the team's ceiling
    assert other.status_code == unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert invalid.status_code == 422


async def test_at_one_priority_a_tenant_waits_beside_another_tenants_flood_not_behind_it(
    gateway: Gateway,
) -> None:
    """A cap-1 group held busy; the default tenant queues 10 requests, then team-a 2, all
    at priority 3: team-a's are served among the first four, not after the ten. Meanwhile
    team-a sees its own flow by name and the default tenant's as others'; the operator's
    keys (the default tenant's) see both."""
    received = len(gateway.local.received)
    async with gateway.client() as default, gateway.client(TEAM_KEY) as team:

        async def one(client: openai.AsyncOpenAI, text: str) -> None:
            await client.chat.completions.create(
                model="local",
                messages=ask(text),
                extra_headers={"X-Priority": "3", "X-Request-Id": f"{text}-{received}"},
            )

        RELEASE.clear()
        try:
            holder = asyncio.create_task(one(default, "hold"))
            await eventually(lambda: _is(gateway.active, 1), "the held call to take the slot")
            calls = []
            senders = [(default, f"flood-{i}") for i in range(10)]
            senders += [(team, f"team-{i}") for i in range(2)]
            for n, (client, text) in enumerate(senders):
                calls.append(asyncio.create_task(one(client, text)))
                await eventually(lambda n=n + 1: _is(gateway.pending, n), f"{text} queued")
            async with gateway.http(TEAM_KEY) as team_http, gateway.http() as operator:
                by_team = (await team_http.get("/v1/queue")).json()["groups"][gateway.group]
                by_operator = (await operator.get("/v1/queue")).json()["groups"][gateway.group]
                floods = [
                    await h.get(f"/v1/queue/flood-9-{received}") for h in (team_http, operator)
                ]
        finally:
            RELEASE.set()
        await asyncio.gather(holder, *calls)

    def waiting_running(flows: dict[str, Any]) -> dict[str, tuple[int, int]]:
        """The flows with calls waiting or running (the others were served earlier)."""
        levels = {name: (f["waiting"], f["running"]) for name, f in flows.items()}
        return {name: level for name, level in levels.items() if level != (0, 0)}

    assert waiting_running(by_team["flows"]) == {"tenant:team-a": (2, 0), "others": (10, 1)}
    assert waiting_running(by_operator["flows"]) == {
        "tenant:default": (10, 1),
        "tenant:team-a": (2, 0),
    }
    assert [flood.status_code for flood in floods] == [404, 200]
    assert floods[1].json()["flow"] == "tenant:default"

    served = [b["messages"][-1]["content"] for b in gateway.local.bodies[received + 1 :]]
    assert sorted(served) == sorted(text for _, text in senders)
    team_served_at = [n for n, text in enumerate(served) if text.startswith("team-")]
    assert len(team_served_at) == 2
    assert max(team_served_at) < 4  # with first come first served: 10 and 11
    assert [text for text in served if text.startswith("flood-")] == [
        f"flood-{i}" for i in range(10)
    ]
    assert gateway.local.max_in_flight == 1


async def test_a_full_queue_answers_429_with_retry_after(gateway: Gateway) -> None:
    async with gateway.client() as client:
        # Held until released, however long the 100 waiters take to arrive.
        RELEASE.clear()
        try:
            holder = asyncio.create_task(
                client.chat.completions.create(model="local", messages=ask("hold"))
            )
            await eventually(lambda: _is(gateway.active, 1), "the held call to take the slot")
            waiting = [
                asyncio.create_task(
                    client.chat.completions.create(model="local", messages=ask("w"))
                )
                for _ in range(MAX_PENDING)
            ]
            await eventually(lambda: _is(gateway.pending, MAX_PENDING), "a full queue")
            async with gateway.http() as http:
                refused = await http.post(
                    "/v1/chat/completions", json={"model": "local", "messages": ask("one more")}
                )
        finally:
            RELEASE.set()  # also when the test fails: the holder's thread ends
        await asyncio.gather(holder, *waiting)

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_100_clients_that_hang_up_mid_stream_or_mid_wait_leave_nothing_behind(
    gateway: Gateway,
) -> None:
    received = len(gateway.local.received)
    async with gateway.client() as client:
        stream = await client.chat.completions.create(
            model="local", messages=ask("long-stream"), stream=True
        )
        await anext(aiter(stream))  # streaming: it holds the group's one slot for 20 s
        waiting = [
            asyncio.create_task(
                client.chat.completions.create(model="local", messages=ask(f"gone-{i}"))
            )
            for i in range(99)
        ]
        await eventually(lambda: _is(gateway.pending, 99), "99 queued requests")
        for task in waiting:
            task.cancel()  # closes each request's connection
        await asyncio.gather(*waiting, return_exceptions=True)
        # While the stream holds the slot, so that none of them could have started.
        await eventually(lambda: _is(gateway.pending, 0), "the waiting requests to leave")
        await stream.close()  # hangs up mid-stream
        hung_up = asyncio.get_running_loop().time()

    # Well before the stream's 20 s: the hang-up cancelled it and freed its slot.
    await eventually(lambda: _is(gateway.active, 0), "the streaming call's slot", timeout=10)
    assert asyncio.get_running_loop().time() - hung_up < 10
    served = [b["messages"][-1]["content"] for b in gateway.local.bodies[received:]]
    assert served == ["long-stream"]  # none of the waiting requests reached the backend
    await eventually(
        lambda: _true(gateway.local.abandoned >= 1), "the backend to see the stream dropped"
    )


async def test_a_replica_killed_mid_work_leaves_no_slot_held_and_no_waiter_queued(
    gateway: Gateway,
) -> None:
    """The replica calls the loopback backend itself: when it dies, the manager learns it
    from the replica's lifeline and frees what its requests held, long before any ttl."""
    received = len(gateway.local.received)
    manager = ManagerClient(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
    async with gateway.client() as client:
        stream = await client.chat.completions.create(
            model="local", messages=ask("long-stream"), stream=True
        )
        await anext(aiter(stream))  # holds the group's one slot for 20 s
        waiting = [
            asyncio.create_task(
                client.chat.completions.create(model="local", messages=ask(f"orphan-{i}"))
            )
            for i in range(5)
        ]
        await eventually(lambda: _is(gateway.pending, 5), "5 queued requests")
        ray.kill(ray.get_actor(the_replica(), namespace="serve"))
        killed = asyncio.get_running_loop().time()

        async def freed() -> bool:
            stats = await manager.stats()
            return (stats.total_active, stats.total_pending) == (0, 0)

        await eventually(freed, "the dead replica's slot and waiters to be freed", timeout=15)
        seconds = asyncio.get_running_loop().time() - killed
        failed = await asyncio.gather(*waiting, return_exceptions=True)
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            await stream.close()

    assert seconds < 15  # the stream alone would have held the slot for 20 s
    assert all(isinstance(f, openai.APIError) for f in failed)  # each told, none hangs
    served = [b["messages"][-1]["content"] for b in gateway.local.bodies[received:]]
    assert served == ["long-stream"]  # no queued request ran for nobody
    await eventually(
        lambda: _true(gateway.local.abandoned >= 1), "the backend to see the stream dropped"
    )
    await eventually(lambda: answers_a_completion(gateway), "a new replica to answer")


async def answers_a_completion(gateway: Gateway) -> bool:
    async with gateway.http() as http:
        with contextlib.suppress(httpx.HTTPError):
            body = {"model": "local", "messages": ask("are you there")}
            return (await http.post("/v1/chat/completions", json=body)).status_code == 200
    return False


async def _is(level: Any, count: int) -> bool:
    return bool(await level() == count)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_the_openapi_document_true(
    gateway: Gateway, tmp_path: Path
) -> None:
    """`schemathesis run --checks all` against the app's own OpenAPI document: no 500,
    every status a route answers documented with its body (OpenAI's error shape), schema-valid
    requests accepted and invalid ones refused, ``Allow`` naming each path's methods. (A 503
    is a documented answer here: a generated ``ollama/...`` model names a server that is
    not running.) Each pipeline job it starts is cancelled at once (tests.support.fuzz_hooks).
    """
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{gateway.url}/openapi.json",
        "--checks", "all", "--header", f"Authorization: Bearer {KEY}",
        "--max-examples", "20", "--seed", "1", "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks", "PYTHONPATH": str(REPO)}
    # Run elsewhere: it keeps a folder of its own where it runs.
    run = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )

    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert "Tested: 15" in run.stdout  # every operation of the document


async def test_a_path_without_the_method_answers_405_naming_all_its_methods(
    gateway: Gateway,
) -> None:
    async with gateway.http() as http:
        options = await http.options("/v1/pipelines/some-job")
        put = await http.put("/v1/chat/completions")

    assert (options.status_code, options.headers["allow"]) == (405, "DELETE, GET")
    assert (put.status_code, put.headers["allow"]) == (405, "POST")
    assert options.json()["error"]["code"] == "method_not_allowed"


async def test_a_client_showing_wrong_keys_is_slowed_down_and_no_other_client(
    gateway: Gateway,
) -> None:
    """Ten wrong keys within a minute (the default): that client's next attempts get 429,
    with its right key too, and at the login form; a client of another address does not."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.9")
    async with httpx.AsyncClient(base_url=gateway.url, transport=transport) as guessing:
        wrong = [
            await guessing.get("/v1/models", headers={"Authorization": f"Bearer sk-guess-{i}"})
            for i in range(10)
        ]
        right = await guessing.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        login = await guessing.post("/login", data={"key": KEY})
    async with gateway.http() as other:
        elsewhere = await other.get("/v1/models")

    assert [answer.status_code for answer in wrong] == [401] * 10
    assert right.status_code == 429
    assert 1 <= int(right.headers["retry-after"]) <= 60
    assert right.json()["error"]["code"] == "too_many_wrong_keys"
    assert login.status_code == 429
    assert "Retry-After" in login.headers
    assert elsewhere.status_code == 200


async def test_a_pipeline_job_over_http_runs_to_the_end(gateway: Gateway) -> None:
    inline = [{"id": f"svc-{i}", "name": f"Service {i}"} for i in range(2)]
    (gateway.data / "in.jsonl").write_text('{"id": "svc-f", "name": "From a file"}\n')
    async with gateway.http() as http:
        submitted = await http.post("/v1/pipelines", json={"services": inline, "priority": 7})
        from_file = await http.post("/v1/pipelines", json={"file": "in.jsonl"})
        assert (submitted.status_code, from_file.status_code) == (202, 202)
        job, file_job = submitted.json()["id"], from_file.json()["id"]

        async def ended(job_id: str) -> bool:
            state = (await http.get(f"/v1/pipelines/{job_id}")).json()["state"]
            return bool(state != "running")

        await eventually(lambda: ended(job), "the job to end")
        await eventually(lambda: ended(file_job), "the file's job to end")
        status = (await http.get(f"/v1/pipelines/{job}")).json()
        results = await http.get(f"/v1/pipelines/{job}/results")
        transcript = await http.get(f"/v1/pipelines/{job}/transcript")
        from_file_results = await http.get(f"/v1/pipelines/{file_job}/results")
        refused = [
            await http.post("/v1/pipelines", json=body)
            for body in ({"file": "missing.jsonl"}, {"file": "../in.jsonl"}, {"services": []})
        ]
        unknown = await http.get("/v1/pipelines/nope")

    assert status["state"] == "finished"
    assert status["services"] == {"done": 2, "total": 2}
    assert status["failed_services"] == 0
    assert status["stages"] == {
        "ambitions": {"done": 2, "total": 2},
        "features": {"done": 2, "total": 2},
        "mappings": {"done": 2, "total": 2},
    }
    records = [json.loads(line) for line in results.text.splitlines()]
    assert sorted(r["service_id"] for r in records) == ["svc-0", "svc-1"]
    assert all(r["status"] == "ok" for r in records)
    # One line per call: an ambition, features and a mapping for each service.
    calls = [json.loads(line) for line in transcript.text.splitlines()]
    assert sorted((c["service_id"], c["stage"]) for c in calls) == [
        (service, stage)
        for service in ("svc-0", "svc-1")
        for stage in ("ambitions", "features", "mappings")
    ]
    assert {(c["run"], c["priority"], c["outcome"]) for c in calls} == {(job, 7, "ok")}
    assert [json.loads(line)["service_id"] for line in from_file_results.text.splitlines()] == [
        "svc-f"
    ]
    # No such file in the data folder: not found; a body the schema refuses: invalid.
    assert [r.status_code for r in refused] == [404, 404, 422]
    assert [r.json()["error"]["code"] for r in refused[:2]] == ["file_not_found"] * 2
    assert unknown.status_code == 404


async def job_ended(http: httpx.AsyncClient, job: str) -> dict[str, Any]:
    """The job's status once it is no longer running."""

    async def ended() -> bool:
        return bool((await http.get(f"/v1/pipelines/{job}")).json()["state"] != "running")

    await eventually(ended, f"job {job} to end")
    status: dict[str, Any] = (await http.get(f"/v1/pipelines/{job}")).json()
    return status


async def test_a_job_whose_actor_died_fails_naming_why_and_its_retry_keeps_what_finished(
    gateway: Gateway,
) -> None:
    """A quick service, then two slow ones (2 s a call); the job's actor killed once the
    quick one's record is written: the job answers from its record, and a retry runs the
    two others only."""
    services = [
        {"id": "quick", "name": "Quick"},
        {"id": "slow-1", "name": "Slowpoke 1"},
        {"id": "slow-2", "name": "Slowpoke 2"},
    ]
    async with gateway.http() as http:
        job = (await http.post("/v1/pipelines", json={"services": services})).json()["id"]

        async def quick_written() -> bool:
            return "quick" in (await http.get(f"/v1/pipelines/{job}/results")).text

        await eventually(quick_written, "the quick service's record")
        asked_of_quick = _asked(gateway, "Service: Quick")
        ray.kill(ray.get_actor(f"pipeline-job:default:{job}", namespace=NAMESPACE))
        died = await job_ended(http, job)
        retried = await http.post(f"/v1/pipelines/{job}/retry")
        again = await job_ended(http, job)
        results = await http.get(f"/v1/pipelines/{job}/results")
        once_more = await http.post(f"/v1/pipelines/{job}/retry")

    assert died["state"] == "failed"
    assert "actor is gone" in died["error"]
    assert retried.status_code == 202
    assert (retried.json()["retries"], retried.json()["services"]["total"]) == (1, 2)
    assert (again["state"], again["failed_services"]) == ("finished", 0)
    written = [json.loads(line) for line in results.text.splitlines()]
    assert sorted(r["service_id"] for r in written) == ["quick", "slow-1", "slow-2"]
    assert _asked(gateway, "Service: Quick") == asked_of_quick  # not run again
    assert once_more.status_code == 409
    assert once_more.json()["error"]["code"] == "job_not_retried"


async def test_jobs_are_listed_by_tenant_and_a_key_that_sees_all_sees_and_cancels_each(
    gateway: Gateway,
) -> None:
    slow = [{"id": "slow-t", "name": "Slowpoke t"}]
    async with gateway.http(TEAM_B_KEY) as team, gateway.http() as operator:
        first = (await team.post("/v1/pipelines", json={"services": slow})).json()["id"]
        second = (await team.post("/v1/pipelines", json={"services": slow})).json()["id"]
        theirs = (await team.get("/v1/pipelines")).json()
        page = (await operator.get("/v1/pipelines", params={"limit": 1})).json()
        next_page = await operator.get(
            "/v1/pipelines", params={"limit": 1, "after": page["data"][0]["id"]}
        )
        seen = await operator.get(f"/v1/pipelines/{first}")
        cancelled = [await operator.delete(f"/v1/pipelines/{j}") for j in (first, second)]
        shown_to_team = (await team.get(f"/v1/pipelines/{first}")).json()

    assert [j["id"] for j in theirs["data"]] == [second, first]  # the newest first
    assert theirs["has_more"] is False
    assert page["has_more"] is True
    assert [j["id"] for j in page["data"]] == [second]
    assert [j["id"] for j in next_page.json()["data"]] == [first]
    assert seen.status_code == 200
    assert [r.json()["state"] for r in cancelled] == ["cancelled", "cancelled"]
    assert shown_to_team["state"] == "cancelled"


async def test_a_tenant_at_its_max_jobs_gets_429_until_one_ends(gateway: Gateway) -> None:
    slow = [{"id": "slow-m", "name": "Slowpoke m"}]
    async with gateway.http(ONE_JOB_KEY) as http:
        running = (await http.post("/v1/pipelines", json={"services": slow})).json()["id"]
        refused = await http.post("/v1/pipelines", json={"services": slow})
        await job_ended(http, running)
        accepted = await http.post("/v1/pipelines", json={"services": slow})
        await job_ended(http, accepted.json()["id"])

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_jobs"
    assert int(refused.headers["Retry-After"]) >= 1
    assert accepted.status_code == 202


def _asked(gateway: Gateway, text: str) -> int:
    """How many calls the backend got whose messages hold ``text``."""
    return sum(text in json.dumps(call.body["messages"]) for call in gateway.local.calls)


async def test_a_tenant_over_its_quota_gets_429_and_nobody_else_does(gateway: Gateway) -> None:
    local = {"model": "local", "messages": ask("hold")}
    async with gateway.http(QUOTA_KEY) as quota, gateway.http() as other:
        RELEASE.clear()
        try:
            first = asyncio.create_task(quota.post("/v1/chat/completions", json=local))
            await eventually(lambda: _is(gateway.active, 1), "its first request to hold the slot")
            at_once = await quota.post("/v1/chat/completions", json=local)
            others = asyncio.create_task(other.post("/v1/chat/completions", json=local))
            await eventually(lambda: _is(gateway.pending, 1), "another tenant's to queue")
        finally:
            RELEASE.set()
        answered = [await first, await others]
        echo = {"model": "local", "messages": ask("quota")}
        in_the_minute = [await quota.post("/v1/chat/completions", json=echo) for _ in range(3)]

    assert [r.status_code for r in answered] == [200, 200]
    assert at_once.status_code == 429
    assert at_once.json()["error"]["code"] == "tenant_quota_exceeded"
    assert "max_pending" in at_once.json()["error"]["message"]
    assert at_once.headers["Retry-After"] == "1"
    # Admitted: the first and two more; the fourth of the minute is refused until the
    # first leaves the minute.
    assert [r.status_code for r in in_the_minute] == [200, 200, 429]
    assert "rpm of 3" in in_the_minute[2].json()["error"]["message"]
    assert 1 <= int(in_the_minute[2].headers["Retry-After"]) <= 60


async def test_a_pipeline_job_is_its_tenants_alone_and_waits_at_its_tenants_ceiling(
    gateway: Gateway,
) -> None:
    manager = ManagerClient(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE))
    inline = [{"id": "svc-team", "name": "Team service"}]
    async with (
        gateway.http(TEAM_KEY) as team,
        gateway.http() as operator,
        gateway.http(TEAM_B_KEY) as other,
    ):
        RELEASE.clear()
        try:
            holder = asyncio.create_task(
                operator.post(
                    "/v1/chat/completions", json={"model": "local", "messages": ask("hold")}
                )
            )
            await eventually(lambda: _is(gateway.active, 1), "the held call to take the slot")
            submitted = await team.post("/v1/pipelines", json={"services": inline, "priority": 9})
            assert submitted.status_code == 202
            job = submitted.json()["id"]

            async def the_jobs_call_waits() -> bool:
                view = await manager.view(first=50)
                return any(w.run == job for w in view.groups[gateway.group].waiting)

            await eventually(the_jobs_call_waits, "the job's first call to queue")
            view = await manager.view(first=50)
            waiting = [w for w in view.groups[gateway.group].waiting if w.run == job]
            seen_by_other = [
                await other.get(f"/v1/pipelines/{job}"),
                await other.get(f"/v1/pipelines/{job}/results"),
                await other.delete(f"/v1/pipelines/{job}"),
            ]
        finally:
            RELEASE.set()
        await holder

        async def ended() -> bool:
            state = (await team.get(f"/v1/pipelines/{job}")).json()["state"]
            return bool(state != "running")

        await eventually(ended, "the team's job to end")
        status = (await team.get(f"/v1/pipelines/{job}")).json()

    # The tenant's ceiling, not the 9 it asked for.
    assert {call.priority for call in waiting} == {3}
    assert [r.status_code for r in seen_by_other] == [404, 404, 404]
    assert all(r.json()["error"]["code"] == "job_not_found" for r in seen_by_other)
    assert status["state"] == "finished"  # the other tenant's DELETE cancelled nothing


async def test_a_pipeline_job_cancelled_over_http_starts_no_call_after_the_cancel(
    gateway: Gateway,
) -> None:
    """Each call of a "Slowpoke" service takes 2 s on the cap-1 group: one runs, the
    others wait. DELETE cancels the run: its waiters leave the queue, its running
    call is cancelled, and the backend sees no call start after the cancel."""
    services = [{"id": f"slow-{i}", "name": f"Slowpoke {i}"} for i in range(3)]
    async with gateway.http() as http:
        job = (await http.post("/v1/pipelines", json={"services": services})).json()["id"]

        async def one_runs_two_wait() -> bool:
            return gateway.local.in_flight == 1 and await gateway.pending() >= 2

        await eventually(one_runs_two_wait, "a call at the backend and two waiting")
        at_cancel = len(gateway.local.received)
        cancelled = (await http.delete(f"/v1/pipelines/{job}")).json()
        await eventually(lambda: _is(gateway.pending, 0), "the run's waiters to leave", 10)
        await eventually(lambda: _is(gateway.active, 0), "its running call to end", 10)
        later = (await http.get(f"/v1/pipelines/{job}")).json()

    assert cancelled["state"] == later["state"] == "cancelled"
    assert len(gateway.local.received) == at_cancel


async def test_a_pipeline_job_outlives_the_replica_that_started_it(gateway: Gateway) -> None:
    services = [{"id": "slow-x", "name": "Slowpoke x"}]  # three calls, 2 s each
    async with gateway.http() as http:
        job = (await http.post("/v1/pipelines", json={"services": services})).json()["id"]
        await eventually(lambda: _true(gateway.local.in_flight == 1), "the job's first call")
        ray.kill(ray.get_actor(the_replica(), namespace="serve"))

        async def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(f"/v1/pipelines/{job}")).status_code == 200
            return False

        await eventually(answers, "a new replica to answer for the job")

        async def finished() -> bool:
            return bool((await http.get(f"/v1/pipelines/{job}")).json()["state"] == "finished")

        await eventually(finished, "the job to finish")
        status = (await http.get(f"/v1/pipelines/{job}")).json()

    assert status["services"] == {"done": 1, "total": 1}
    assert status["failed_services"] == 0
