"""Schedules: when each is due (in UTC), one run for the times missed while nothing ran
them, what each did kept across a restart, and settings that name what they need."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from actors.servesettings import ScheduleSettings, ServeSettings
from serve.schedules import Schedules

NIGHTLY = ScheduleSettings(cron="0 2 * * *", input="services.jsonl")


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


def test_a_new_schedule_first_runs_at_its_next_time_not_for_times_before_it(
    tmp_path: Path,
) -> None:
    schedules = Schedules({"nightly": NIGHTLY}, tmp_path / "s.json", clock=lambda: at(7, 12))

    assert schedules.due(at(7, 23)) == []
    assert schedules.next_at("nightly", at(7, 12)) == at(8, 2)
    assert schedules.due(at(8, 2)) == ["nightly"]


def test_times_missed_while_nothing_ran_them_make_one_run_and_state_survives_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.json"
    first = Schedules({"nightly": NIGHTLY}, path, clock=lambda: at(1, 12))
    first.ran("nightly", at(2, 2), "0123456789ab")

    # Down from the 2nd, 03:00 to the 6th, noon: four nights passed.
    again = Schedules({"nightly": NIGHTLY}, path, clock=lambda: at(6, 12))
    assert again.states["nightly"].last_job == "0123456789ab"
    assert again.due(at(6, 12)) == ["nightly"]
    again.ran("nightly", at(6, 12), "ba9876543210")
    assert again.due(at(6, 13)) == []  # once, not four times
    assert again.due(at(7, 2)) == ["nightly"]


def test_a_skipped_run_is_counted_and_waits_for_the_next_time(tmp_path: Path) -> None:
    schedules = Schedules({"nightly": NIGHTLY}, tmp_path / "s.json", clock=lambda: at(1, 12))

    schedules.skipped("nightly", at(2, 2))

    assert schedules.states["nightly"].skipped == 1
    assert schedules.due(at(2, 3)) == []
    [view] = schedules.view(at(2, 3))
    assert (view.name, view.skipped, view.next_run_at) == ("nightly", 1, at(3, 2))


def test_a_schedule_of_seconds_and_the_soonest_wake(tmp_path: Path) -> None:
    every_5s = ScheduleSettings(cron="* * * * * */5", input="x.jsonl")
    schedules = Schedules(
        {"nightly": NIGHTLY, "often": every_5s}, tmp_path / "s.json", clock=lambda: at(1, 12)
    )

    assert schedules.wake_at(at(1, 12)) == at(1, 12) + 5
    assert schedules.due(at(1, 12) + 5) == ["often"]


def test_the_settings_refuse_a_bad_cron_an_unknown_tenant_and_no_data_folder(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="'0 25 \\* \\* \\*' is not a cron expression"):
        ScheduleSettings(cron="0 25 * * *", input="x.jsonl")
    keys = (SecretStr("sk-operator"),)
    with pytest.raises(ValidationError, match=r"serve\.schedules\.n: its input needs"):
        ServeSettings(api_keys=keys, schedules={"n": NIGHTLY})
    unknown = NIGHTLY.model_copy(update={"tenant": "team-z"})
    with pytest.raises(ValidationError, match=r"serve\.schedules\.n\.tenant: no tenant 'team-z'"):
        ServeSettings(api_keys=keys, data_dir=tmp_path, schedules={"n": unknown})
