"""Recurring schedules without processes: cron and its aliases, the checks of a [schedules.NAME] table and of
schedules declared in code, the slots due by each catch-up policy, and time zones at both changes of the clock
(Europe/Berlin, fixed dates). The tender's scheduler and the exactly-once guarantee: tests/test_scheduler.py."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pheanq import periodic, task
from pheanq import schedules as schedules_module
from pheanq.config import Settings, load_settings
from pheanq.description import TaskDescription
from pheanq.errors import ConfigError
from pheanq.python_call import PythonCall
from pheanq.schedules import (
    ALIASES,
    Schedule,
    all_schedules,
    check_cron,
    declared,
    due_slots,
    first_cursor,
    last_slot,
    next_slot,
    parse_schedule,
    slot_text,
)
from pheanq.worker.task_env import TaskEnvironment

UTC = dt.timezone.utc
COMMANDS = {"backup", "report"}


def at(text: str) -> dt.datetime:
    """A UTC time from `2025-03-30 01:00:00`."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule(cron: str, **keys: Any) -> Schedule:
    return parse_schedule("s", {"cron": cron, "command": "backup", **keys}, COMMANDS)


@pytest.fixture(autouse=True)
def _no_declared_schedules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Schedules declared in code are process-wide: each test starts without any and leaves none."""
    monkeypatch.setattr(schedules_module, "_declared", {})
    yield


# --- cron ---------------------------------------------------------------------------------------------------


def test_aliases_stand_for_their_five_fields() -> None:
    assert check_cron("@hourly") == "0 * * * *"
    assert check_cron("@DAILY") == check_cron("@midnight") == "0 0 * * *"
    assert {alias: check_cron(alias) for alias in ALIASES} == ALIASES
    assert next_slot(schedule("@weekly"), at("2026-12-01 12:00:00")) == at("2026-12-06 00:00:00")  # a Sunday


def test_six_fields_put_the_seconds_first() -> None:
    every_five = schedule("*/5 * * * * *")
    assert next_slot(every_five, at("2026-12-01 12:00:01")) == at("2026-12-01 12:00:05")
    assert next_slot(schedule("30 0 3 * * *"), at("2026-12-01 00:00:00")) == at("2026-12-01 03:00:30")
    assert last_slot(every_five, at("2026-12-01 12:00:05")) == at("2026-12-01 12:00:05")


@pytest.mark.parametrize(("cron", "message"), [
    ("* * * *", "has 4 fields"),
    ("61 * * * *", "is not a cron expression"),
    ("@fortnightly", "unknown alias"),
    ("", "expected a cron expression"),
    ("0 0 30 2 *", "is not a cron expression"),
])
def test_a_bad_cron_is_one_line_naming_schedule_and_key(cron: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule("nightly", {"cron": cron, "command": "backup"}, COMMANDS)
    assert str(caught.value).startswith("schedules.nightly.cron: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("keys", "message"), [
    ({"timezone": "Mars/Olympus"}, "schedules.n.timezone: unknown time zone 'Mars/Olympus'"),
    ({"timezone": "../etc/passwd"}, "schedules.n.timezone: '../etc/passwd' is not a time zone name"),
    ({"catch_up": "some"}, "schedules.n.catch_up: 'some' is not one of skip, latest, all"),
    ({"colour": "red"}, "schedules.n: unknown key 'colour'"),
    ({"command": "rm-rf"}, "schedules.n.command: 'rm-rf' is not in [commands]"),
    ({"python": "app.tasks.x"}, "schedules.n: give either command"),
    ({"grace": 0}, "schedules.n.grace: expected a whole number from 1"),
    ({"max_catch_up": True}, "schedules.n.max_catch_up: expected a whole number"),
    ({"no_overlap": "yes"}, "schedules.n.no_overlap: expected true or false"),
    ({"kwargs": {"a": 1}}, "schedules.n.kwargs: a command takes args only"),
])
def test_a_bad_key_is_one_line_naming_schedule_and_key(keys: dict[str, Any], message: str) -> None:
    table = {"cron": "* * * * *", "command": "backup", **keys}
    with pytest.raises(ConfigError, match=f"^{message.replace('[', '.').replace(']', '.')}"):
        parse_schedule("n", table, COMMANDS)


def test_pheanq_toml_declares_schedules(tmp_path: Path) -> None:
    config = tmp_path / "pheanq.toml"
    config.write_text('[commands]\nbackup = ["/bin/true"]\n'
                      '[schedules.nightly]\ncron = "30 2 * * *"\ncommand = "backup"\nargs = ["--full", 3]\n'
                      'timezone = "Europe/Berlin"\ncatch_up = "all"\nmax_catch_up = 5\nno_overlap = true\n'
                      'tube = "nightly"\npriority = 10\n'
                      '[schedules.report]\ncron = "@hourly"\npython = "app.report"\nkwargs = {day = "today"}\n')
    settings = load_settings({"config_file": str(config)}, environ={})
    nightly, report = settings.schedules
    assert nightly == Schedule("nightly", "30 2 * * *", TaskDescription("backup", ["--full", 3]), "Europe/Berlin",
                               tube="nightly", priority=10, catch_up="all", max_catch_up=5, no_overlap=True)
    assert report.description == PythonCall("app.report", [], {"day": "today"})
    assert (report.cron, report.catch_up, report.grace, report.timezone) == ("0 * * * *", "latest", 60, "UTC")
    config.write_text('[schedules.nightly]\ncron = "30 2 * * *"\ncommand = "backup"\n')
    with pytest.raises(ConfigError, match=r"^schedules.nightly.command: 'backup' is not in \[commands\]$"):
        load_settings({"config_file": str(config)}, environ={})
    config.write_text('[schedules.x]\ncron = "* * * * *"\ncommand = "example-task-worker"\ntube = "-bad"\n')
    with pytest.raises(ConfigError, match=r"^schedules.x.tube: '-bad' is not a beanstalkd tube name"):
        load_settings({"config_file": str(config)}, environ={})


# --- schedules in code ----------------------------------------------------------------------------------------


def test_task_and_periodic_declare_schedules_in_code() -> None:
    @task(name="tests.nightly", schedule={"cron": "0 3 * * *", "timezone": "Europe/Berlin", "args": [7],
                                          "catch_up": "skip"})
    def nightly(days: int, scheduled_for: str) -> str:
        return f"{days} {scheduled_for}"

    @task(name="tests.hourly", schedule="@hourly")
    def hourly() -> None: ...

    every = periodic("every-five", "*/5 * * * * *", TaskDescription("backup", ["x"]), no_overlap=True)
    found = {found.name: found for found in declared()}
    assert set(found) == {"tests.nightly", "tests.hourly", "every-five"}
    # The slot's parameter has a stand-in; each run gets its slot there (pheanq.tender.scheduler).
    assert found["tests.nightly"].description == PythonCall("tests.nightly", [7, ""])
    assert (found["tests.nightly"].timezone, found["tests.nightly"].catch_up) == ("Europe/Berlin", "skip")
    assert found["tests.hourly"].cron == "0 * * * *" and found["tests.hourly"].source == "code"
    assert every.no_overlap and every.description == TaskDescription("backup", ["x"])
    assert periodic("every-five", "*/5 * * * * *", TaskDescription("backup", ["x"]), no_overlap=True) == every
    with pytest.raises(ConfigError, match=r"^schedules.every-five: declared twice in code, differently$"):
        periodic("every-five", "* * * * *", TaskDescription("backup", ["x"]))
    with pytest.raises(ConfigError, match=r"^schedules.tests.hourly: declared both in pheanq.toml and in code$"):
        all_schedules((parse_schedule("tests.hourly", {"cron": "@daily", "command": "backup"}, COMMANDS),))
    with pytest.raises(ConfigError, match=r"^schedules.bad: .*missing a required argument: 'days'"):
        periodic("bad", "@daily", nightly)
    with pytest.raises(ConfigError, match=r"^schedules.tests.late.timezone: unknown time zone"):
        task(name="tests.late", schedule={"cron": "@daily", "timezone": "Nowhere/Land"})(hourly.function)


# --- slots due, by policy -----------------------------------------------------------------------------------

EVERY_MINUTE_MISSED = [at(f"2026-12-01 10:0{minute}:00") for minute in range(1, 10)]
ON_TIME = at("2026-12-01 10:10:00")


@pytest.mark.parametrize(("policy", "runs", "dropped"), [
    ("skip", [ON_TIME], 9),
    ("latest", [EVERY_MINUTE_MISSED[-1], ON_TIME], 8),
    ("all", [*EVERY_MINUTE_MISSED, ON_TIME], 0),
])
def test_missed_slots_follow_the_policy_and_on_time_slots_always_run(policy: str, runs: list[dt.datetime],
                                                                     dropped: int) -> None:
    # Decided up to 10:00, now 10:10:30: 10:10 is on time (30 s <= grace 60), 10:01 to 10:09 were missed.
    due = due_slots(schedule("* * * * *", catch_up=policy), at("2026-12-01 10:00:00"), at("2026-12-01 10:10:30"))
    assert due.run == runs
    # A policy that drops counts the first one it drops and says that there are more.
    assert (due.dropped, due.more_dropped) == ((1, True) if dropped else (0, False))


def test_all_keeps_the_newest_max_catch_up_slots() -> None:
    due = due_slots(schedule("* * * * *", catch_up="all", max_catch_up=3), at("2026-12-01 10:00:00"),
                    at("2026-12-01 10:10:30"))
    assert due.run == [*EVERY_MINUTE_MISSED[-3:], ON_TIME]
    assert due.dropped == 1 and due.more_dropped and due.oldest_dropped == EVERY_MINUTE_MISSED[-4]


def test_the_window_holds_now_but_not_the_cursor() -> None:
    every_second = schedule("* * * * * *", catch_up="all")
    due = due_slots(every_second, at("2026-12-01 10:00:00"), at("2026-12-01 10:00:03"))
    assert due.run == [at("2026-12-01 10:00:01"), at("2026-12-01 10:00:02"), at("2026-12-01 10:00:03")]
    assert due_slots(every_second, at("2026-12-01 10:00:03"), at("2026-12-01 10:00:03.9")).run == []


def test_a_schedule_seen_first_runs_its_newest_slot_within_the_grace_only() -> None:
    every_second = schedule("* * * * * *", catch_up="all")
    now = at("2026-12-01 03:00:00.5")
    assert due_slots(every_second, first_cursor(every_second, now), now).run == [at("2026-12-01 03:00:00")]
    daily = schedule("0 3 * * *", catch_up="all")
    assert due_slots(daily, first_cursor(daily, now), now).run == [at("2026-12-01 03:00:00")]
    later = at("2026-12-01 03:01:00.5")  # past the grace of 60 s: the slot is not run, nor caught up
    assert first_cursor(daily, later) == later and due_slots(daily, first_cursor(daily, later), later).run == []


def test_a_cursor_years_back_costs_only_the_slots_kept() -> None:
    started = time.monotonic()
    due = due_slots(schedule("* * * * * *", catch_up="all", grace=5), at("2016-01-01 00:00:00"),
                    at("2026-12-01 10:00:00"))
    assert len(due.run) == 100 + 6 and due.more_dropped  # 100 missed (max_catch_up), 10:00:00 and 5 s before it
    assert time.monotonic() - started < 2


# --- time zones at the changes of the clock (Europe/Berlin, 2026: 29 March and 25 October) --------------------


def slots_between(cron: str, start: str, end: str) -> list[dt.datetime]:
    """The slots in (start, end] as the scheduler finds them (backwards, catching everything up) and as the
    listing's next run finds them (forwards): both walks must agree."""
    one = schedule(cron, timezone="Europe/Berlin", catch_up="all")
    backwards = due_slots(one, at(start), at(end)).run
    forwards, moment = [], at(start)
    while (moment := next_slot(one, moment)) <= at(end):
        forwards.append(moment)
    assert backwards == forwards
    return backwards


def test_a_fixed_time_in_the_skipped_hour_runs_when_the_clock_jumps() -> None:
    # 02:30 does not exist on 29 March 2026 in Berlin: the clock goes from 02:00 CET to 03:00 CEST (01:00 UTC).
    assert slots_between("30 2 * * *", "2026-03-28 00:00:00", "2026-03-31 00:00:00") == [
        at("2026-03-28 01:30:00"),   # 02:30 CET
        at("2026-03-29 01:00:00"),   # 03:00 CEST, the moment the clock jumped
        at("2026-03-30 00:30:00"),   # 02:30 CEST
    ]
    # Every hour at :30: the skipped hour's 02:30 does not run at all (01:30 CET, then 03:30 CEST).
    assert slots_between("30 * * * *", "2026-03-29 00:00:00", "2026-03-29 02:00:00") == [
        at("2026-03-29 00:30:00"), at("2026-03-29 01:30:00")]


def test_a_fixed_time_in_the_repeated_hour_runs_once_and_a_wildcard_hour_twice() -> None:
    # On 25 October 2026 02:00-03:00 Berlin time passes twice: first in CEST (00:00-01:00 UTC), then in CET.
    assert slots_between("30 2 * * *", "2026-10-24 00:00:00", "2026-10-26 12:00:00") == [
        at("2026-10-24 00:30:00"),   # 02:30 CEST
        at("2026-10-25 00:30:00"),   # 02:30 CEST, the first pass only
        at("2026-10-26 01:30:00"),   # 02:30 CET
    ]
    assert slots_between("30 * * * *", "2026-10-24 23:00:00", "2026-10-25 02:00:00") == [
        at("2026-10-24 23:30:00"),   # 01:30 CEST
        at("2026-10-25 00:30:00"),   # 02:30 CEST
        at("2026-10-25 01:30:00"),   # 02:30 CET, the repeated hour
    ]


def test_a_slot_reaches_a_command_as_iso_utc_text() -> None:
    assert slot_text(at("2026-12-01 03:00:00")) == "2026-12-01T03:00:00+00:00"
    assert slot_text(dt.datetime(2026, 12, 1, 3)) == "2026-12-01T03:00:00+00:00"  # naive, as a column holds it
    env = TaskEnvironment(dict(os.environ), Settings()).of_task(7, dt.datetime(2026, 12, 1, 3))
    assert env["PHEANQ_SCHEDULED_FOR"] == "2026-12-01T03:00:00+00:00" and env["PHEANQ_TASK_ID"] == "7"
    assert "PHEANQ_SCHEDULED_FOR" not in TaskEnvironment(dict(os.environ), Settings()).of_task(7)
