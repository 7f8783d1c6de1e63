"""The tenders' schedulers with real processes, a real beanstalkd and each database: three tenders (three process
trees, each with its own run directory, as on three hosts) queue every slot of a per-second schedule exactly once,
by the rows and by the commands' own records; a tender killed -9 at a slot's instant loses no slot; after every
tender was stopped for several slots, each catch-up policy does what it says; `no_overlap` skips slots while the
previous run works; a Python task knows its slot; `pheanq schedules` and the dashboard list them."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import TenderProcess, one_error_line, pheanq, wait_for
from web_support import READER_TOKEN, WebServer

from pheanq.clock import utc_now
from pheanq.status import Status
from pheanq.storage import Store
from pheanq.storage.schedules import QUEUED, SKIPPED, ScheduleRun
from pheanq.storage.tables import task_table
from pheanq.storage.tasks import NewTask

MakeEnv = Callable[..., dict[str, str]]
SECOND = dt.timedelta(seconds=1)
# The command of the schedules: appends its slot to the file it is given, one line a run.
RECORD = ["/bin/sh", "-c", 'echo "$PHEANQ_SCHEDULED_FOR" >> "$0"']
TENDER_ARGS = ["--min-workers", "1", "--spare-workers", "0", "--max-workers", "2"]


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_schedules(directory: Path, commands: dict[str, list[str]], schedules: dict[str, dict[str, Any]]) -> None:
    lines = ["[commands]", *(f"{name} = {toml_value(argv)}" for name, argv in commands.items())]
    for name, keys in schedules.items():
        lines.append(f"[schedules.{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    (directory / "pheanq.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture
def start_tender(tmp_path: Path, make_env: MakeEnv) -> Iterator[Callable[..., TenderProcess]]:
    """Start `pheanq worker-tender` number `n` with its own run directory: a process tree of its own, as on a host
    of its own, on the one database and beanstalkd."""
    started: list[TenderProcess] = []

    def start(database_url: str, n: int = 0, *args: str) -> TenderProcess:
        env = make_env(database_url, PHEANQ_RUN_DIR=str(tmp_path / f"run{n}"))
        tender = TenderProcess([*TENDER_ARGS, *args], env, tmp_path)
        started.append(tender)
        return tender

    yield start
    for tender in started:
        tender.stop()


def runs(url: str, name: str) -> list[ScheduleRun]:
    """The schedule's decided slots, oldest first."""
    store = Store(url)
    try:
        return sorted(store.schedules.runs(name, limit=100_000), key=lambda run: run.slot)
    finally:
        store.close()


def tasks_per_slot(url: str) -> collections.Counter[dt.datetime]:
    store = Store(url)
    try:
        with store.database.transaction() as conn:
            slots = conn.execute(sa.select(task_table.c.scheduled_for)).scalars().all()
    finally:
        store.close()
    return collections.Counter(slot for slot in slots if slot is not None)


def recorded(path: Path) -> list[dt.datetime]:
    """The slots the commands wrote, naive UTC as the rows keep them."""
    if not path.exists():
        return []
    return [dt.datetime.fromisoformat(line).replace(tzinfo=None) for line in path.read_text().split()]


def assert_every_slot_once(url: str, name: str, record: Path) -> list[dt.datetime]:
    """Every second from the first slot to the last queued exactly one task, and each command that ran wrote its
    slot once; the slots."""
    queued = [run for run in runs(url, name) if run.outcome == QUEUED]
    slots = [run.slot for run in queued]
    expected = [slots[0] + n * SECOND for n in range(int((slots[-1] - slots[0]) / SECOND) + 1)]
    assert slots == expected, f"gaps: {sorted(set(expected) - set(slots))}"
    per_slot = tasks_per_slot(url)
    assert set(per_slot) == set(slots) and set(per_slot.values()) == {1}
    written = recorded(record)
    twice = [slot for slot, n in collections.Counter(written).items() if n > 1]
    assert not twice, f"slots run twice: {twice}"
    assert set(written) <= set(slots)
    done = {run.slot for run in queued if run.task_status is Status.DONE}
    assert done <= set(written)
    return slots


def test_three_tenders_queue_every_slot_exactly_once(db_url: str, tmp_path: Path,
                                                     start_tender: Callable[..., TenderProcess]) -> None:
    record = tmp_path / "record.txt"
    write_schedules(tmp_path, {"record": [*RECORD, str(record)]},
                    {"tick": {"cron": "* * * * * *", "command": "record", "catch_up": "all", "grace": 2}})
    tenders = [start_tender(db_url, n) for n in range(3)]
    for tender in tenders:
        wait_for(lambda tender=tender: "scheduler: 1 schedule(s): tick" in tender.log, 15,  # type: ignore[misc]
                 f"the scheduler of tender {tender.pid}; log:\n{tender.log[-2000:]}")
    wait_for(lambda: len(recorded(record)) >= 10, 30, "ten slots run")
    for tender in tenders:
        tender.stop()
    assert len(assert_every_slot_once(db_url, "tick", record)) >= 10
    deciders = [tender for tender in tenders if "pheanq.scheduler" in tender.log and " queued task " in tender.log]
    assert deciders, "no tender queued a slot"


def at_instant(moment: float) -> None:
    """Return at wall-clock `moment` (time.time()): the instant is what the test is about, not a condition."""
    time.sleep(max(0.0, moment - time.time()))


def test_a_tender_killed_at_a_slots_instant_loses_no_slot(db_url: str, tmp_path: Path,
                                                          start_tender: Callable[..., TenderProcess]) -> None:
    record = tmp_path / "record.txt"
    write_schedules(tmp_path, {"record": [*RECORD, str(record)]},
                    {"tick": {"cron": "* * * * * *", "command": "record", "catch_up": "all"}})
    tender = start_tender(db_url)
    # Killed at a slot's instant and a few milliseconds past it (mid-decision), it is restarted 1.5 s later: the
    # slots it missed meanwhile are within their grace and run, none twice.
    for offset in (0.0, 0.006):
        wait_for(lambda: len(runs(db_url, "tick")) >= 2, 20, f"slots queued; log:\n{tender.log[-2000:]}")
        killed_at = int(time.time()) + 1 + offset
        at_instant(killed_at)
        tender.stop()  # SIGKILL to the tender and everything below it
        wait_for(lambda at=killed_at: time.time() > at + 1.5, 5, "slots without a tender")  # type: ignore[misc]
        tender = start_tender(db_url)
        later = dt.datetime.fromtimestamp(killed_at + 2, dt.timezone.utc).replace(tzinfo=None)
        wait_for(lambda at=later: any(run.slot > at for run in runs(db_url, "tick")), 20,  # type: ignore[misc]
                 f"slots after the restart; log:\n{tender.log[-2000:]}")
    tender.stop()
    slots = assert_every_slot_once(db_url, "tick", record)
    assert len(slots) >= 6


def test_each_catch_up_policy_after_every_tender_stopped(db_url: str, tmp_path: Path,
                                                         start_tender: Callable[..., TenderProcess]) -> None:
    every_second = {"cron": "* * * * * *", "command": "nothing", "grace": 1}
    policies = ("skip", "latest", "all")
    write_schedules(tmp_path, {"nothing": ["/bin/true"]}, {p: {**every_second, "catch_up": p} for p in policies})
    tender = start_tender(db_url)
    wait_for(lambda: all(len(runs(db_url, p)) >= 2 for p in policies), 20, f"slots run; log:\n{tender.log[-2000:]}")
    tender.signal(signal.SIGTERM)  # a decision under way is finished: the cursors say what is decided
    assert tender.wait(30) == 0
    store = Store(db_url)
    cursors = store.schedules.cursors()
    store.close()
    wait_for(lambda: utc_now() > max(cursors.values()) + 4 * SECOND, 10, "slots without a tender")
    restarted = utc_now()
    tender = start_tender(db_url)
    wait_for(lambda: all(any(run.slot > restarted + 2 * SECOND for run in runs(db_url, p)) for p in policies), 20,
             f"the decisions after the restart; log:\n{tender.log[-2000:]}")
    tender.stop()
    for policy in policies:
        after = [run for run in runs(db_url, policy) if run.slot > cursors[policy]]
        # A row's `created` is when its scheduler decided it: past the grace (1 s), the slot had been missed.
        missed = [run.slot for run in after if (run.created - run.slot).total_seconds() > 1]
        on_time = [run.slot for run in after if (run.created - run.slot).total_seconds() <= 1]
        assert on_time, policy
        first_after = cursors[policy].replace(microsecond=0) + SECOND
        gap = [first_after + n * SECOND for n in range(int((on_time[0] - first_after) / SECOND))]
        assert len(gap) >= 3, (policy, gap)   # the slots no tender was there for
        if policy == "skip":
            assert missed == []
        elif policy == "latest":
            assert missed == gap[-1:], (missed, on_time)  # the newest missed slot, once
        else:
            assert missed == gap  # each one
        # Whatever was missed, from the first slot on time on, every slot ran.
        assert on_time == [on_time[0] + n * SECOND for n in range(len(on_time))], policy


def test_no_overlap_skips_slots_while_the_previous_run_works(db_url: str, tmp_path: Path,
                                                             start_tender: Callable[..., TenderProcess]) -> None:
    write_schedules(tmp_path, {"slow": ["/bin/sh", "-c", "sleep 1.5"]},
                    {"slow": {"cron": "* * * * * *", "command": "slow", "no_overlap": True}})
    tender = start_tender(db_url, 0, "--min-workers", "2")  # two idle workers: an overlap could run
    # A second tender, without a scheduler: it runs tasks, and decides no slot.
    bystander = start_tender(db_url, 1, "--no-scheduler")
    wait_for(lambda: sum(run.outcome == QUEUED for run in runs(db_url, "slow")) >= 3, 20,
             f"three runs; log:\n{tender.log[-2000:]}")
    tender.stop()
    bystander.stop()
    assert "pheanq.scheduler" in tender.log and "pheanq.scheduler" not in bystander.log
    decided = runs(db_url, "slow")
    skipped = [run for run in decided if run.outcome == SKIPPED]
    assert len(skipped) >= 2
    assert all(run.reason and "of the slot before is still" in run.reason for run in skipped)
    assert "skipped: task" in tender.log and "(no_overlap)" in tender.log
    store = Store(db_url)
    started = [store.tasks.find_task(run.task_id) for run in decided if run.task_id is not None]
    store.close()
    spans = sorted((row.started, row.finished) for row in started if row is not None and row.started is not None)
    for (_, finished), (next_start, _) in itertools.pairwise(spans):
        assert finished is not None and finished <= next_start, spans  # never two at once


PYTHON_APP = '''
from pheanq import current_task, task

@task(name="sched_app.stamp", schedule={"cron": "* * * * * *", "args": [%r]})
def stamp(path: str, scheduled_for: str = "") -> None:
    with open(path, "a") as out:
        out.write(f"{scheduled_for} {current_task().scheduled_for.isoformat()}\\n")
'''


def test_a_python_task_knows_its_slot_and_pheanq_schedules_lists_it(sqlite_url: str, tmp_path: Path,
                                                                    make_env: MakeEnv,
                                                                    start_tender: Callable[..., TenderProcess]) -> None:
    out = tmp_path / "stamps.txt"
    (tmp_path / "sched_app.py").write_text(PYTHON_APP % str(out))
    write_schedules(tmp_path, {"nothing": ["/bin/true"]},
                    {"nightly": {"cron": "30 2 * * *", "command": "nothing", "timezone": "Europe/Berlin"}})
    env = make_env(sqlite_url)
    listed = pheanq(["schedules", "--json", "--import", "sched_app"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    before = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert set(before) == {"nightly", "sched_app.stamp"}
    assert before["nightly"]["status"] == "waiting" and before["nightly"]["last"] is None
    assert before["nightly"]["next"].endswith(("T00:30:00+00:00", "T01:30:00+00:00"))  # 02:30 in Berlin

    tender = start_tender(sqlite_url, 0, "--import", "sched_app")
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 20,
             f"two runs of the Python task; log:\n{tender.log[-3000:]}")
    for line in out.read_text().splitlines():
        argument, context = line.split()
        assert argument == context and argument.endswith("+00:00")  # the same slot, ISO 8601 UTC
        assert dt.datetime.fromisoformat(argument).replace(tzinfo=None) in {run.slot for run in
                                                                            runs(sqlite_url, "sched_app.stamp")}
    listed = pheanq(["schedules", "--import", "sched_app"], env, tmp_path)
    tender.stop()
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("sched_app.stamp"))
    assert " task " in row and row.rstrip().endswith("ok") and "latest" in row


def test_a_bad_schedule_is_one_line_and_exit_2(sqlite_url: str, tmp_path: Path, make_env: MakeEnv) -> None:
    write_schedules(tmp_path, {"nothing": ["/bin/true"]},
                    {"bad": {"cron": "* * * * *", "command": "nothing", "catch_up": "never"}})
    for command in (["schedules"], ["worker-tender", "--no-scheduler"]):
        result = pheanq(command, make_env(sqlite_url), tmp_path)
        assert result.returncode == 2
        assert one_error_line(result) == "pheanq: error: schedules.bad.catch_up: 'never' is not one of skip, " \
                                         "latest, all"
    # A module found but failing as it is imported: the scheduler's import says so in one line, at the start.
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no database here')\n")
    write_schedules(tmp_path, {}, {"t": {"cron": "* * * * *", "python": "broken_app.task"}})
    result = pheanq(["worker-tender", "--import", "broken_app"], make_env(sqlite_url), tmp_path, timeout=30)
    assert result.returncode == 2
    assert one_error_line(result) == "pheanq: error: importing 'broken_app' failed: RuntimeError: no database here"


def test_the_dashboard_shows_the_schedules(sqlite_url: str, tmp_path: Path, make_env: MakeEnv) -> None:
    write_schedules(tmp_path, {"nothing": ["/bin/true"]},
                    {"nightly": {"cron": "@daily", "command": "nothing", "no_overlap": True}})
    store = Store(sqlite_url)
    slot = dt.datetime(2026, 12, 1)
    store.schedules.cursor("nightly", slot)
    decided = store.schedules.queue_slot("nightly", slot, NewTask("nothing", "{}", "pheanq", 1024, 60))
    store.schedules.queue_slot("gone", slot, NewTask("nothing", "{}", "pheanq", 1024, 60))
    store.schedules.cursor("gone", slot)
    store.close()
    server = WebServer(make_env(sqlite_url), tmp_path)
    try:
        with server.client(READER_TOKEN) as client:
            listed = {entry["name"]: entry for entry in client.get("/api/schedules").json()["schedules"]}
            page = client.get("/schedules").text
    finally:
        server.stop()
    assert listed["nightly"]["last"] == {"slot": "2026-12-01T00:00:00+00:00", "outcome": "queued",
                                         "task_id": decided.task_id, "task_status": "new", "reason": None}
    assert listed["nightly"]["cron"] == "0 0 * * *" and listed["nightly"]["no_overlap"]
    assert listed["gone"]["status"] == "unknown here" and listed["gone"]["cron"] is None
    assert 'data-schedule="nightly"' in page and f"task {decided.task_id}" in page and "unknown here" in page
