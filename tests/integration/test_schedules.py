"""Pipeline jobs on schedules, through the Serve endpoint on a real Ray: a slow schedule that
comes due while its last job runs (skipped, never two at once), a quick one that goes on
while the manager restarts, and the scheduler killed mid-way."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from pydantic import SecretStr

from actors.groups import ModelEntry
from actors.names import MANAGER_NAME, NAMESPACE
from actors.servesettings import ScheduleSettings
from actors.settings import PipelineSettings, ServeSettings, Settings, TenantSettings
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from serve.schedules import SCHEDULER_NAME
from tests.support.polling import eventually
from tests.support.serve_app import respond, serve_app

KEY = "sk-test-schedules"
TEAM_KEY = "sk-test-schedules-team"


@pytest.fixture
def endpoint(ray_session: None, tmp_path: Path) -> Iterator[str]:
    """The endpoint with two schedules: "slow" (the team's, every 2 s, a job of three
    2-second calls) and "quick" (the operator's, every 3 s)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "slow.jsonl").write_text(json.dumps({"id": "s", "name": "Slowpoke s"}) + "\n")
    (data / "quick.jsonl").write_text(json.dumps({"id": "q", "name": "Quick q"}) + "\n")
    with FakeLLMServer(OpenAIDialect(), responder=respond) as local:
        settings = Settings(
            models={"local": ModelEntry(provider="openai-compatible", base_url=local.url + "/v1")},
            pipeline=PipelineSettings(
                model="local", plateaus=1, mapping_types=("data",), cache=False
            ),
            serve=ServeSettings(
                api_keys=(SecretStr(KEY),),
                tenants={"team": TenantSettings(keys=(SecretStr(TEAM_KEY),))},
                data_dir=data,
                results_dir=tmp_path / "results",
                schedules={
                    "slow": ScheduleSettings(
                        cron="* * * * * */2", input="slow.jsonl", tenant="team"
                    ),
                    "quick": ScheduleSettings(cron="* * * * * */3", input="quick.jsonl"),
                },
            ),
        )
        try:
            with serve_app(settings, KEY) as url:
                yield url
        finally:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE))


async def schedule(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    listed = (await http.get("/v1/schedules")).raise_for_status().json()["data"]
    [found] = [s for s in listed if s["name"] == name]
    return dict(found)


async def state(http: httpx.AsyncClient, job: str | None) -> str | None:
    return None if job is None else str((await http.get(f"/v1/pipelines/{job}")).json()["state"])


async def test_schedules_run_their_jobs_one_at_a_time_through_a_manager_and_scheduler_restart(
    endpoint: str,
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    team_auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    async with (
        httpx.AsyncClient(base_url=endpoint, headers=auth, timeout=60) as http,
        httpx.AsyncClient(base_url=endpoint, headers=team_auth, timeout=60) as team,
    ):
        most_running = 0

        async def slow_skipped() -> bool:
            nonlocal most_running
            jobs = (await team.get("/v1/pipelines")).json()["data"]
            most_running = max(most_running, sum(j["state"] == "running" for j in jobs))
            return bool((await schedule(team, "slow"))["skipped"] >= 1)

        await eventually(slow_skipped, "the slow schedule due while its job runs", interval=0.2)
        # The team sees its own schedule only.
        seen = (await team.get("/v1/schedules")).json()["data"]
        assert [s["name"] for s in seen] == ["slow"]

        # The manager killed (Ray restarts it): the quick schedule's next job still ends.
        before = (await schedule(http, "quick"))["last_job"]
        ray.kill(ray.get_actor(MANAGER_NAME, namespace=NAMESPACE), no_restart=False)

        async def quick_ran_after() -> bool:
            job = (await schedule(http, "quick"))["last_job"]
            return job != before and await state(http, job) == "finished"

        await eventually(quick_ran_after, "a quick job after the manager's restart", interval=0.2)

        # The scheduler killed (Ray restarts it): it goes on from what it kept.
        kept = await schedule(http, "slow")
        ray.kill(ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE), no_restart=False)

        async def went_on() -> bool:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                now = await schedule(http, "slow")
                return bool(now["last_run_at"] > kept["last_run_at"])
            return False

        await eventually(went_on, "the restarted scheduler's next slow run or skip")
        after = await schedule(http, "slow")

    assert most_running == 1  # the slow schedule never ran two jobs at once
    assert after["skipped"] >= kept["skipped"]
    assert after["since"] == kept["since"]
