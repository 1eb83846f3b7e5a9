"""The demo job: the seed's mixed scenario, read from recorded start and end times."""

from __future__ import annotations

from pipelines.demo import CLAUDE, LOCAL, peak_overlap_by_group, report, run_scenario
from tests.integration.conftest import ManagerFactory, settled


async def test_demo_runs_remote_calls_at_once_and_local_ones_by_priority(
    make_manager: ManagerFactory,
) -> None:
    client = make_manager()

    runs = await run_scenario(client, hold=0.05)

    local = [run for run in runs if run.group == LOCAL.id]
    # A found the slot free; E (priority 9) arrived after C (3) but goes first.
    assert [run.request for run in local] == ["A", "E", "C"]
    first_local_end = local[0].ended
    assert all(run.started < first_local_end for run in runs if run.group != LOCAL.id)
    peaks = peak_overlap_by_group(runs)
    assert (peaks[LOCAL.id], peaks[CLAUDE.id]) == (1, 2)
    assert report(runs).splitlines()[1].startswith("A ")
    await settled(client)  # nothing held, nobody waiting
