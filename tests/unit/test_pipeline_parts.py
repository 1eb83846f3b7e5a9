"""Stage chains, the results file and input parsing, without Ray."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipelines.chain import Stage, StageChain, Upstream
from pipelines.plateau import ServiceRecord, read_services
from pipelines.results import ResultsFile, ResultsFileError


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
