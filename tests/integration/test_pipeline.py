"""The plateau pipeline on the cluster: overlap, shared limits, priority, parity, resume."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from actors.groups import ModelEntry, classify
from actors.settings import PipelineSettings, ProviderSettings, QueueSettings, Settings
from pipelines.plateau import Service
from pipelines.timeline import peak_overlap
from providers.testing.fake_llm import Fail, FakeLLMServer, OpenAIDialect, SayJson, Script
from providers.testing.plateau_backend import plateau_answer
from providers.testing.probe_server import Received
from tests.integration.conftest import (
    ManagerFactory,
    active_is,
    cli,
    pending_is,
    records,
    run,
    write_services,
)
from tests.support.polling import eventually

PAYMENTS = Service(id="svc-pay", name="Payments", description="Takes card payments.")


@pytest.fixture
def backend() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(OpenAIDialect(), hold=0.1, responder=plateau_answer) as server:
        yield server


def group_of(server: FakeLLMServer) -> str:
    return classify("openai-compatible", server.url + "/v1").id


def settings_for(server: FakeLLMServer, **pipeline: Any) -> Settings:
    return Settings(
        models={"fake": ModelEntry(provider="openai-compatible", base_url=server.url + "/v1")},
        pipeline=PipelineSettings(model="fake", **pipeline),
        providers=ProviderSettings(retry_attempts=2, retry_deadline_seconds=10),
    )


async def test_features_of_the_next_plateau_start_while_mappings_still_run(
    make_manager: ManagerFactory, backend: FakeLLMServer, tmp_path: Path
) -> None:
    client = make_manager(group_limits={group_of(backend): 8})

    outcome = await run([PAYMENTS], settings_for(backend), tmp_path / "out.jsonl", client)

    span = {(s.stage, s.item): s for _, s in outcome.spans}
    # features(2) waited for features(1), but not for mappings(1):
    assert span["features", 1].started >= span["features", 0].ended
    assert span["mappings", 0].ended > span["features", 1].started
    assert outcome.records[0].status == "ok"


async def test_with_one_slot_started_services_finish_before_new_ones_start(
    make_manager: ManagerFactory, backend: FakeLLMServer, tmp_path: Path
) -> None:
    client = make_manager(group_limits={group_of(backend): 1})
    services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(5)]
    outcome = await run(services, settings_for(backend), tmp_path / "out.jsonl", client)

    assert [r.status for r in outcome.records] == ["ok"] * 5

    svc0_ended = max(c.started_at + c.latency for c in outcome.calls if c.service_id == "svc-0")
    # The first service's calls all ended before the fourth's mappings began (timed where
    # the calls run: the record reaches the driver's file an event later, which on a busy
    # machine once took a second, while the next services' calls went on).
    svc3_mappings = min(
        c.started_at for c in outcome.calls if c.service_id == "svc-3" and c.stage == "mappings"
    )
    assert svc0_ended < svc3_mappings


async def test_a_failing_call_cancels_its_waiting_and_running_siblings_in_the_manager(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    mappings = itertools.count()

    def first_mapping_fails(request: Received) -> Script:
        answer = plateau_answer(request)
        if request.body["response_format"]["json_schema"]["name"] != "mappingset":
            return answer
        if next(mappings) == 0:
            return Fail(400, "mapping refused", delay=0.3)
        assert isinstance(answer, SayJson)
        return replace(answer, delay=10.0)  # would hold its slot 10 s if not cancelled

    with FakeLLMServer(OpenAIDialect(), responder=first_mapping_fails) as backend:
        group = group_of(backend)
        client = make_manager(group_limits={group: 2})
        settings = settings_for(backend, plateaus=1)

        # 3 mapping calls on 2 slots: the first fails while another runs and one waits.
        outcome = await run([PAYMENTS], settings, tmp_path / "out.jsonl", client)

        (record,) = outcome.records
        assert record.status == "failed"
        assert record.error == "openai-compatible: mapping refused (HTTP 400)"
        # The backend holds each sibling 10 s; the manager is empty long before: their
        # calls were cancelled (left the queue, or gave their slot back mid-call).
        await eventually(pending_is(client, group, 0), "the waiting sibling to leave", 2.0)
        await eventually(active_is(client, group, 0), "the running siblings to give back", 2.0)
        assert backend.max_in_flight == 2


async def test_a_cancelled_run_leaves_the_queue_and_gives_its_slots_back(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    def slow(request: Received) -> Script:
        answer = plateau_answer(request)
        assert isinstance(answer, SayJson)
        return replace(answer, delay=10.0)  # would hold its slot 10 s if not cancelled

    with FakeLLMServer(OpenAIDialect(), responder=slow) as backend:
        group = group_of(backend)
        client = make_manager(group_limits={group: 1})
        services = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(3)]
        out = tmp_path / "out.jsonl"
        job = asyncio.create_task(run(services, settings_for(backend), out, client))

        # One call runs, the other services' first calls wait: then the caller gives up.
        await eventually(pending_is(client, group, 5), "the run's first calls to queue")
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

        await eventually(pending_is(client, group, 0), "the waiting calls to leave", 2.0)
        await eventually(active_is(client, group, 0), "the running call to give back", 2.0)


async def test_with_the_queue_off_every_call_runs_alone_in_order(
    backend: FakeLLMServer, tmp_path: Path, ray_session: None
) -> None:
    settings = settings_for(backend).model_copy(update={"queue": QueueSettings(enabled=False)})

    outcome = await run([PAYMENTS], settings, tmp_path / "out.jsonl", manager=None)

    spans = sorted((s for _, s in outcome.spans), key=lambda s: s.started)
    assert all(a.ended <= b.started for a, b in itertools.pairwise(spans))
    assert [(s.stage, s.item) for s in spans] == [
        ("features", 0), ("mappings", 0), ("features", 1), ("mappings", 1),
        ("features", 2), ("mappings", 2),
    ]  # fmt: skip
    assert peak_overlap(c.held for c in outcome.calls) == 1
    assert backend.max_in_flight == 1


async def test_three_runs_share_a_cap_of_two_and_the_urgent_one_finishes_first(
    make_manager: ManagerFactory, backend: FakeLLMServer, tmp_path: Path
) -> None:
    spec = classify("openai-compatible", backend.url + "/v1")
    group = spec.id
    client = make_manager(spec, group_limits={group: 2})
    settings = settings_for(backend, plateaus=2, mapping_types=("data", "applications"))

    def services(run: str) -> list[Service]:
        return [Service(id=f"{run}-{i}", name=f"{run} service {i}") for i in range(2)]

    # Both slots are held while all three runs queue their first calls (each
    # run's 2 services ask for ambitions and features(1) at once), so every
    # run contends from the same instant, however long its actor took to start.
    async with client.slot(group), client.slot(group):
        low = [
            asyncio.create_task(run(services(name), settings, tmp_path / name, client, 1))
            for name in ("low-a", "low-b")
        ]
        await eventually(pending_is(client, group, 8), "the low-priority runs to queue")
        urgent_run = asyncio.create_task(
            run(services("urgent"), settings, tmp_path / "urgent", client, 9)
        )
        await eventually(pending_is(client, group, 12), "the urgent run to queue")
    urgent = await urgent_run
    lows = await asyncio.gather(*low)

    assert backend.max_in_flight == 2
    urgent_end = max(c.held[1] for c in urgent.calls)
    assert all(urgent_end < max(c.held[1] for c in o.calls) for o in lows)
    assert all(r.status == "ok" for o in (urgent, *lows) for r in o.records)


# -- the command line ------------------------------------------------------------------


def write_config(path: Path, server: FakeLLMServer, **queue: Any) -> Path:
    config = {
        "models": {"fake": {"provider": "openai-compatible", "base_url": server.url + "/v1"}},
        "pipeline": {"model": "fake", "plateaus": 2, "mapping_types": ["data", "applications"]},
        "providers": {"retry_attempts": 2, "retry_deadline_seconds": 10},
        "queue": {"group_limits": {group_of(server): 4}, **queue},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(
    input_file: Path, out: Path, config: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    address = ray.get_runtime_context().gcs_address
    return subprocess.run(
        cli(str(input_file), "--out", str(out), "--config", str(config), "--address", address),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


SERVICES = [
    Service(id=f"svc-{i}", name=f"Service {i}", description=f"Does thing {i}.") for i in range(3)
]
TRANSCRIPTS = {"RAYGATE_PIPELINE__TRANSCRIPTS": "true"}


def transcript(out: Path, *only: str) -> list[dict[str, Any]]:
    """The run's transcript as ``python -m pipelines transcript`` prints it."""
    printed = subprocess.run(
        [sys.executable, "-m", "pipelines", "transcript", str(out), *only],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in printed.stdout.splitlines()]


def test_queue_on_and_off_write_identical_files(backend: FakeLLMServer, tmp_path: Path) -> None:
    services = write_services(tmp_path / "in.jsonl", SERVICES)
    config = write_config(tmp_path / "raygate.yaml", backend)

    on = run_cli(services, tmp_path / "on.jsonl", config)
    off = run_cli(services, tmp_path / "off.jsonl", config, RAYGATE_QUEUE__ENABLED="false")

    assert (on.returncode, off.returncode) == (0, 0), on.stderr + off.stderr
    assert (tmp_path / "on.jsonl").read_bytes() == (tmp_path / "off.jsonl").read_bytes()
    assert [r["service_id"] for r in records(tmp_path / "on.jsonl")] == ["svc-0", "svc-1", "svc-2"]
    assert "sequential estimate" in on.stdout


def test_a_rerun_of_a_finished_job_is_answered_from_the_cache(
    backend: FakeLLMServer, tmp_path: Path
) -> None:
    """The job's calls use the response cache by default: run again, no call reaches the
    backend, and the output is the same."""
    services = write_services(tmp_path / "in.jsonl", SERVICES)
    config = write_config(tmp_path / "raygate.yaml", backend)
    cache = {
        "RAYGATE_CACHE__ENABLED": "true",
        "RAYGATE_CACHE__PATH": str(tmp_path / "answers.sqlite3"),
    }

    first = run_cli(services, tmp_path / "first.jsonl", config, **cache)
    calls = len(backend.received)
    again = run_cli(services, tmp_path / "again.jsonl", config, **cache)

    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert calls > 0
    assert len(backend.received) == calls
    assert f"{calls} answers from the response cache" in again.stdout
    assert (tmp_path / "first.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()


def test_killed_run_resumes_and_every_service_appears_once(
    backend: FakeLLMServer, tmp_path: Path
) -> None:
    backend.hold = 0.3
    many = [Service(id=f"svc-{i}", name=f"Service {i}") for i in range(6)]
    services = write_services(tmp_path / "in.jsonl", many)
    config = write_config(tmp_path / "raygate.yaml", backend)
    out = tmp_path / "out.jsonl"
    address = ray.get_runtime_context().gcs_address
    first = subprocess.Popen(
        cli(str(services), "--out", str(out), "--config", str(config), "--address", address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **TRANSCRIPTS},
    )
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline, "no service completed"
        assert first.poll() is None, "the run ended before a service completed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written_before = len(records(out))
    assert 1 <= written_before < len(many)

    second = run_cli(services, out, config, **TRANSCRIPTS)

    assert second.returncode == 0, second.stderr
    assert f"{written_before} already done" in second.stdout
    ids = [r["service_id"] for r in records(out)]
    assert ids == [s.id for s in many]
    assert all(r["status"] == "ok" for r in records(out))
    # The resumed run appended to the transcript the first one began (a line the kill
    # tore is left out): each service's calls answered there.
    answered = {line["service_id"] for line in transcript(out) if line["outcome"] == "ok"}
    assert answered == set(ids)


def test_bad_lines_are_reported_and_a_failing_service_is_recorded(
    backend: FakeLLMServer, tmp_path: Path
) -> None:
    good = Service(id="svc-good", name="Good")
    broken = Service(id="svc-broken", name="Broken")
    lines = [good.model_dump_json(), "{not json", '{"name": "no id"}', broken.model_dump_json()]
    services = tmp_path / "in.jsonl"
    services.write_text("\n".join(lines) + "\n")
    config = write_config(tmp_path / "raygate.yaml", backend)

    result = run_cli(services, tmp_path / "out.jsonl", config)

    assert result.returncode == 1
    assert f"skipping {services} line 2: " in result.stderr
    assert f"skipping {services} line 3: id: Field required" in result.stderr
    by_id = {r["service_id"]: r for r in records(tmp_path / "out.jsonl")}
    assert by_id["svc-good"]["status"] == "ok"
    assert by_id["svc-broken"]["status"] == "failed"
    assert "backend exploded (HTTP 500)" in by_id["svc-broken"]["error"]


def test_a_runs_transcript_has_a_line_for_each_call_with_its_messages_and_outcome(
    backend: FakeLLMServer, tmp_path: Path
) -> None:
    good, broken = Service(id="svc-good", name="Good"), Service(id="svc-broken", name="Broken")
    services = write_services(tmp_path / "in.jsonl", [good, broken])
    config = write_config(tmp_path / "raygate.yaml", backend)
    out = tmp_path / "out.jsonl"

    result = run_cli(services, out, config, **TRANSCRIPTS)

    assert result.returncode == 1  # the broken service failed
    lines = transcript(out)
    good_lines = [line for line in lines if line["service_id"] == "svc-good"]
    asked_of_good = [b for b in backend.bodies if "Service: Good" in json.dumps(b["messages"])]
    assert len(good_lines) == len(asked_of_good)  # one line a call, none of them retried
    assert {line["outcome"] for line in good_lines} == {"ok"}
    assert {line["group"] for line in good_lines} == {group_of(backend)}
    assert len({line["request_id"] for line in lines}) == len(lines)
    assert all(line["messages"] and line["answer"] for line in good_lines)
    assert all(line["input_tokens"] == 11 for line in good_lines)
    broken_lines = transcript(out, "--service", "svc-broken")
    assert broken_lines == [line for line in lines if line["service_id"] == "svc-broken"]
    assert all(line["outcome"] != "ok" for line in broken_lines)
    assert any("backend exploded" in (line["error"] or "") for line in broken_lines)


def test_the_custom_chain_example_runs_its_own_stages(
    backend: FakeLLMServer, tmp_path: Path
) -> None:
    backend.responder = None  # plain text answers: "ok"
    config = write_config(tmp_path / "raygate.yaml", backend)
    example = Path(__file__).parents[2] / "examples" / "custom_chain.py"

    result = subprocess.run(
        [sys.executable, str(example), "--chapters", "2", "--config", str(config),
         "--address", ray.get_runtime_context().gcs_address],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("outline: ok") == 2
    assert result.stdout.count("draft:   ok") == 2
    prompts = [json.dumps(body["messages"]) for body in backend.bodies]
    assert any("Outline chapter 2" in p and "Before it: ok" in p for p in prompts)
