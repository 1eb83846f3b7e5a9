"""What lasts of a pipeline job over HTTP: its record and input, written whole, read back
after its actor is gone, and no file named by anything but a job id."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.jobrecords import JobFiles, JobRecord, JobStatus, StageProgress, job_ids
from pipelines.plateau import Service

JOB = "0123456789ab"


def record(state: str = "running") -> JobRecord:
    status = JobStatus(
        id=JOB,
        state=state,  # type: ignore[arg-type]
        services=StageProgress(done=1, total=3),
        failed_services=0,
        stages={},
        submitted_at=1.0,
        ended_at=None,
        estimated_completion_at=99.0,
    )
    return JobRecord(owner="team-a", priority=3, flow="tenant:team-a", weight=2.0, status=status)


def test_a_record_and_input_written_are_read_back_whole(tmp_path: Path) -> None:
    files = JobFiles(tmp_path / "results", JOB)
    services = [Service(id="a", name="A"), Service(id="b", name="B")]

    files.write(record())
    files.write_input(services)

    assert files.read() == record()
    assert files.read_input() == services
    assert job_ids(tmp_path / "results") == [JOB]
    # Each write replaced the file whole: no temporary file is left beside them.
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        f"{JOB}.input.jsonl",
        f"{JOB}.job.json",
    ]
    asking = files.read().asking()  # type: ignore[union-attr]
    assert (asking.priority, asking.flow, asking.weight) == (3, "tenant:team-a", 2.0)


def test_a_record_left_running_with_no_actor_is_a_failed_job_naming_why() -> None:
    orphan = record("running").orphaned()

    assert (orphan.state, orphan.estimated_completion_at) == ("failed", None)
    assert orphan.error is not None
    assert "actor is gone" in orphan.error
    assert f"/v1/pipelines/{JOB}/retry" in orphan.error
    # One that ended says how, as it did.
    assert record("finished").orphaned() == record("finished").status


def test_nothing_but_a_job_id_names_a_file(tmp_path: Path) -> None:
    for name in ("../secrets", "0123456789AB", "abc", f"{JOB}/../x"):
        with pytest.raises(ValueError, match="is not a job id"):
            JobFiles(tmp_path, name)
    (tmp_path / "notes.job.json").write_text("{}")
    assert job_ids(tmp_path) == []


def test_a_record_that_does_not_parse_is_no_record(tmp_path: Path) -> None:
    files = JobFiles(tmp_path, JOB)
    files.record.write_text('{"owner": "team-a", "prio')

    assert files.read() is None
