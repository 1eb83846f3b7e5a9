"""Stage chains, the results file and input parsing, without Ray."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from actors.options import CallOptions
from actors.settings import PipelineSettings
from pipelines.__main__ import main as cli_main
from pipelines.chain import Stage, StageChain, Upstream
from pipelines.errors import ResultsFileError
from pipelines.job import Progress
from pipelines.plateau import PlateauJob, Service, ServiceRecord, read_services
from pipelines.results import ResultsFile
from providers.models import ChatRequest, ChatResponse, Usage
from tests.unit.conftest import FakeClock


def recorder(log: list[str], name: str, delay: float = 0.0) -> Any:
    async def stage(item: int, upstream: Upstream) -> str:
        log.append(f"{name}({item}) start")
        await asyncio.sleep(delay)
        log.append(f"{name}({item}) end")
        return f"{name}({item})<-{upstream.previous}|{upstream.inputs}"

    return stage


async def test_chained_stage_waits_for_its_previous_item_but_not_for_the_next_stage() -> None:
    log: list[str] = []
    chain: StageChain[int] = StageChain(
        Stage("features", recorder(log, "features"), chained=True),
        Stage("mappings", recorder(log, "mappings", delay=0.05)),
    )

    results = await chain.run([1, 2])

    # features(2) started before the slow mappings(1) ended.
    assert log.index("features(2) start") < log.index("mappings(1) end")
    assert log.index("features(2) start") > log.index("features(1) end")
    assert results[1]["features"] == "features(2)<-features(1)<-None|None|None"
    assert results[1]["mappings"] == "mappings(2)<-None|features(2)<-features(1)<-None|None|None"


async def test_sequential_chain_runs_one_call_at_a_time_in_item_order() -> None:
    log: list[str] = []
    chain: StageChain[int] = StageChain(
        Stage("features", recorder(log, "features"), chained=True),
        Stage("mappings", recorder(log, "mappings", delay=0.01)),
    )

    results = await chain.run([1, 2], sequential=True)

    assert log == [
        "features(1) start", "features(1) end", "mappings(1) start", "mappings(1) end",
        "features(2) start", "features(2) end", "mappings(2) start", "mappings(2) end",
    ]  # fmt: skip
    concurrent = await StageChain(*chain.stages).run([1, 2])
    assert results == concurrent


def record(service_id: str, status: str = "ok") -> ServiceRecord:
    error = None if status == "ok" else "boom"
    return ServiceRecord(service_id=service_id, status=status, error=error)  # type: ignore[arg-type]


def test_a_torn_last_line_from_a_killed_run_is_cut_off(tmp_path: Path) -> None:
    out = ResultsFile(tmp_path / "out.jsonl")
    out.append(record("a"))
    with out.path.open("ab") as file:
        file.write(b'{"service_id": "b", "sta')  # the process died mid-line

    assert list(out.load()) == ["a"]
    out.append(record("b"))
    assert list(out.load()) == ["a", "b"]


def test_dropping_failed_records_lets_them_run_again(tmp_path: Path) -> None:
    out = ResultsFile(tmp_path / "out.jsonl")
    for rec in (record("a"), record("b", "failed"), record("c")):
        out.append(rec)

    assert out.drop_failed() == 1
    assert list(out.load()) == ["a", "c"]


def test_rewrite_puts_records_in_input_order(tmp_path: Path) -> None:
    out = ResultsFile(tmp_path / "out.jsonl")
    for service_id in ("c", "old", "a", "b"):
        out.append(record(service_id))

    out.rewrite_in_order(["a", "b", "c"])

    assert list(out.load()) == ["a", "b", "c", "old"]


def test_records_an_earlier_model_wrote_load_though_the_job_now_asks_for_plainer_ones(
    tmp_path: Path,
) -> None:
    # Gemma 3 270M's answers, before names had to be words and sentences one line.
    path = tmp_path / "out.jsonl"
    feature = {"name": "Customer support", "description": "The payment is made\n"}
    plateau = {"plateau": 1, "features": [feature], "mappings": {"data": ["1"]}}
    path.write_text(
        json.dumps({"service_id": "a", "status": "ok", "ambitions": ["1"], "plateaus": [plateau]})
        + "\n"
    )

    assert ResultsFile(path).load()["a"].plateaus[0].features[0].name == "Customer support"


def test_a_file_that_is_not_results_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"hello": "world"}\n')

    with pytest.raises(ResultsFileError, match=r"out.jsonl, line 1: not a raygate result"):
        ResultsFile(path).load()


def test_bad_input_lines_are_reported_by_number_and_the_rest_kept() -> None:
    lines = [
        '{"id": "a", "name": "A"}',
        "",
        "{broken",
        '{"id": "b"}',
        '{"id": "a", "name": "again"}',
        '{"id": "c", "name": "C", "description": "fine"}',
    ]

    services, problems = read_services(lines)

    assert [s.id for s in services] == ["a", "c"]
    assert problems[0].startswith("line 3: ")
    assert problems[1:] == ["line 4: name: Field required", "line 5: service id 'a' appears twice"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda tmp: [str(tmp / "missing.jsonl"), "--out", str(tmp / "out.jsonl")],
            "raygate: input {tmp}/missing.jsonl: no such file\n",
        ),
        (
            lambda tmp: [str(tmp / "in.jsonl"), "--out", str(tmp / "nowhere" / "out.jsonl")],
            "raygate: --out {tmp}/nowhere/out.jsonl: the folder {tmp}/nowhere does not exist\n",
        ),
        (
            lambda tmp: [str(tmp / "in.jsonl"), "--out", str(tmp)],
            "raygate: --out {tmp}: is a folder; name a file\n",
        ),
    ],
    ids=["missing-input", "out-folder-missing", "out-is-a-folder"],
)
def test_unusable_paths_are_one_line_errors_with_exit_2_before_ray_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make_args: Any,
    message: str,
) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "name": "A"}\n')
    ray_started: list[str | None] = []

    def ray_running(address: str | None) -> contextlib.AbstractContextManager[None]:
        ray_started.append(address)
        return contextlib.nullcontext()

    monkeypatch.setattr("pipelines.__main__.ray_running", ray_running)

    status = cli_main(["run", *make_args(tmp_path)])

    assert status == 2
    assert capsys.readouterr().err == message.format(tmp=tmp_path)
    assert ray_started == []


def test_progress_shows_the_time_left_at_the_pace_kept_so_far() -> None:
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(
        {"ambitions": 2, "features": 4, "mappings": 4, "services": 2}, out, clock=clock
    )
    assert progress.line().endswith("| time left: unknown yet")

    clock.advance(20.0)
    for stage in ["ambitions", "ambitions", "features", "features", "mappings"]:
        progress.call(stage)

    # 5 calls in 20 s: 4 s a call, and 5 calls left.
    assert progress.line() == (
        "ambitions 2/2 | features 2/4 | mappings 1/4 | services 0/2 | time left: ~20s"
    )
    clock.advance(300.0)
    assert progress.time_left() == "time left: ~5m20s"
    for stage in ["features", "features", "mappings", "mappings", "mappings"]:
        progress.call(stage)
    assert progress.time_left() == "done"


async def test_every_call_of_a_service_carries_its_stage_plateau_and_mapping_type_as_fields() -> (
    None
):
    asked: list[CallOptions] = []
    answers = {
        "ambitions": {"ambitions": ["grow"]},
        "featureset": {"features": [{"name": "f", "description": "d"}]},
        "mappingset": {"items": ["x"]},
    }

    async def ask(request: ChatRequest, options: CallOptions) -> ChatResponse:
        asked.append(options)
        assert request.response_format is not None
        return ChatResponse(
            text="{}",
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
            latency_seconds=0.0,
            provider="fake",
            group="g",
            model="m",
            data=answers[request.response_format.name],
        )

    settings = PipelineSettings(plateaus=2, mapping_types=("data", "apps"))
    record = await PlateauJob(ask, settings, "m").run(Service(id="svc", name="S"))

    assert record.status == "ok"
    labels = sorted(
        (o.labels.stage, o.labels.plateau or 0, o.labels.mapping_type or "", o.critical)
        for o in asked
    )
    assert labels == [
        ("ambitions", 0, "", False),
        ("features", 1, "", True),
        ("features", 2, "", True),
        ("mappings", 1, "apps", False),
        ("mappings", 1, "data", False),
        ("mappings", 2, "apps", False),
        ("mappings", 2, "data", False),
    ]
    assert all(o.labels.service_id == "svc" for o in asked)
    assert len({o.labels.call_id() for o in asked}) == len(asked)  # one id a call
