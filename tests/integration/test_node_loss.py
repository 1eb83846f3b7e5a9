"""Losing a GPU host's node mid-run: its calls fail with an error that says so, nothing hangs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import ray

from actors.groups import GPU_HOST_LABEL, ModelEntry, ServerEntry, classify
from actors.names import NAMESPACE
from actors.settings import PipelineSettings, ProviderSettings, Settings
from pipelines.plateau import Service
from providers.testing.fake_llm import FakeLLMServer, OpenAIDialect
from providers.testing.plateau_backend import plateau_answer
from tests.integration.conftest import (
    GPU_HOST,
    ManagerFactory,
    Nodes,
    active_is,
    pending_is,
    run,
)
from tests.support.polling import eventually

pytestmark = pytest.mark.slow

LOST_HOST = "b"


async def test_a_lost_gpu_host_fails_its_calls_clearly_and_the_run_still_ends(
    cluster: Nodes, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    node = cluster.cluster.add_node(num_cpus=1, labels={GPU_HOST_LABEL: LOST_HOST})
    cluster.cluster.wait_for_nodes()
    with FakeLLMServer(OpenAIDialect(), hold=2.0, responder=plateau_answer) as server:
        url = server.url + "/v1"
        group = classify("openai-compatible", url, host=LOST_HOST).id
        settings = Settings(
            models={"fake": ModelEntry(provider="openai-compatible", base_url=url, host="b")},
            pipeline=PipelineSettings(model="fake", plateaus=1, mapping_types=("data",)),
            providers=ProviderSettings(retry_attempts=2, retry_deadline_seconds=10),
        )
        client = make_manager()
        services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(3)]
        job = asyncio.create_task(run(services, settings, tmp_path / "out.jsonl", client))

        async def one_runs_and_others_wait() -> bool:
            stats = await client.stats()
            return stats.active_by_group.get(group) == 1 and stats.total_pending >= 1

        await eventually(one_runs_and_others_wait, "the run's calls on host b")
        cluster.cluster.remove_node(node)
        async with asyncio.timeout(60):  # nothing hangs: every service ends
            outcome = await job

    try:
        assert [r.service_id for r in sorted(outcome.records, key=lambda r: r.service_id)] == [
            s.id for s in services
        ]
        for record in outcome.records:
            assert record.status == "failed"
            assert record.error is not None
            assert f"provider:{group}: the provider actor is unavailable" in record.error
        # The manager learns of the provider actor's death from Ray, well before any ttl.
        await eventually(active_is(client, group, 0), "the lost actor's slot to be freed", 10)
        await eventually(pending_is(client, group, 0), "its waiters to be dropped", 10)
        assert (await client.stats()).groups[group].expired == 0
    finally:
        with contextlib.suppress(ValueError):  # dead with its node, as it should be
            ray.kill(ray.get_actor(f"provider:{group}", namespace=NAMESPACE))


async def test_a_pools_server_on_a_lost_gpu_host_hands_its_calls_to_the_other(
    cluster: Nodes, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    """Model "pooled" on two GPU hosts' servers, a (the cluster's) and b (removed mid-run):
    the call running on b fails over to a, b leaves the rotation naming its lost actor,
    and every service is written."""
    node = cluster.cluster.add_node(num_cpus=1, labels={GPU_HOST_LABEL: LOST_HOST})
    cluster.cluster.wait_for_nodes()
    with (
        FakeLLMServer(OpenAIDialect(), hold=0.5, responder=plateau_answer) as on_a,
        FakeLLMServer(OpenAIDialect(), hold=0.5, responder=plateau_answer) as on_b,
    ):
        servers = (
            ServerEntry(provider="openai-compatible", base_url=on_a.url + "/v1", host=GPU_HOST),
            ServerEntry(provider="openai-compatible", base_url=on_b.url + "/v1", host=LOST_HOST),
        )
        settings = Settings(
            models={"pooled": ModelEntry(servers=servers)},
            pipeline=PipelineSettings(model="pooled", plateaus=1, mapping_types=("data",)),
            providers=ProviderSettings(retry_attempts=2, retry_deadline_seconds=30),
        )
        a, b = (spec.id for spec in settings.models["pooled"].specs())
        client = make_manager()
        services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(3)]
        job = asyncio.create_task(run(services, settings, tmp_path / "out.jsonl", client))
        await eventually(lambda: on_b.in_flight == 1, "a call running on host b")
        cluster.cluster.remove_node(node)
        async with asyncio.timeout(60):  # nothing hangs: every service ends
            outcome = await job

    try:
        assert sorted(r.status for r in outcome.records) == ["ok"] * len(services)
        assert all(call.ok for call in outcome.calls)
        stats = (await client.stats()).groups
        assert "the provider actor is unavailable" in (stats[b].out_reason or "")
        assert stats[a].out_reason is None
        assert (stats[a].active, stats[b].active) == (0, 0)
    finally:
        with contextlib.suppress(ValueError):  # dead with its node, as it should be
            ray.kill(ray.get_actor(f"provider:{b}", namespace=NAMESPACE))
