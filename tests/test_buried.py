"""Buried jobs for real: what a worker refuses to run is buried with a reason, listed, kicked and deleted.

Bad bodies go straight into the tube with a plain greenstalk client, a real `pheanq task-worker` (or the
service's own reserve) buries them, and `pheanq buried` is run as a real process. Everything that reads or
writes `pheanq_buried` (recording every kind of bad body; kick and delete, which forget records) runs on every
configured database; the other cases, which add no SQL of their own, and the command line's errors on SQLite.

This module's `beanstalkd` takes jobs up to 1 MiB (`-z`), which `support.Beanstalkd` cannot pass: only then
can a body bigger than pheanq's 65,535 bytes reach a worker at all (a default beanstalkd refuses the put).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from support import Beanstalkd, WorkerProcess, claims, job_state, one_error_line, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.body import encode_body, encode_data
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tasks import NewTask

TUBE = "pheanq"  # the default tube
MAX_JOB_BYTES = 1 << 20
NO_REASON = "(no reason recorded: buried by another client)"

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


class RoomyBeanstalkd(Beanstalkd):
    """A real beanstalkd that takes jobs up to MAX_JOB_BYTES."""

    def start(self) -> RoomyBeanstalkd:
        argv = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-z", str(MAX_JOB_BYTES)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._accepts, 10, f"beanstalkd on port {self.port}")
        return self


@pytest.fixture
def beanstalkd() -> Iterator[Beanstalkd]:
    server = RoomyBeanstalkd().start()
    yield server
    server.stop()


@contextlib.contextmanager
def client_of(server: Beanstalkd, tube: str = TUBE) -> Iterator[greenstalk.Client[bytes]]:
    """A plain greenstalk client, as any other program would use beanstalkd."""
    with greenstalk.Client(server.address, encoding=None, use=tube, watch=tube) as client:
        yield client


def tube_stats(server: Beanstalkd, tube: str = TUBE) -> dict[str, Any]:
    with client_of(server, tube) as client:
        try:
            return dict(client.stats_tube(tube))
        except greenstalk.NotFoundError:
            return {}


def buried_count(server: Beanstalkd, tube: str = TUBE) -> int:
    return int(tube_stats(server, tube).get("current-jobs-buried", 0))


def bury_as_another_client(server: Beanstalkd, body: bytes, tube: str = TUBE) -> int:
    """Put a job and bury it the way a program other than pheanq would: no reason is recorded anywhere."""
    with client_of(server, tube) as client:
        job_id = client.put(body)
        reserved = client.reserve(timeout=5)
        assert reserved.id == job_id
        client.bury(reserved)
    return job_id


def bury_through_service(service: TaskQueueService, server: Beanstalkd, body: bytes, tube: str = TUBE) -> int:
    """Put a bad body and let the service's own reserve bury it, with its reason recorded."""
    with client_of(server, tube) as client:
        job_id = client.put(body)
    before = buried_count(server, tube)
    assert claims(service).reserve_task(tube, timeout=0) is None
    assert buried_count(server, tube) == before + 1
    assert job_state(server, job_id) == "buried"
    return job_id


def record_command(tmp_path: Path, runs: Path) -> list[str]:
    """A command that appends `<task id> <arguments>` to `runs`."""
    script = tmp_path / "record.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(" ".join([os.environ["PHEANQ_TASK_ID"], *sys.argv[2:]]) + "\\n")
    """))
    return [sys.executable, str(script), str(runs)]


def listing(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = pheanq(["buried", "--use-tube", TUBE, *args], env, cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def listing_json(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(listing(env, cwd, "--json"))
    return data


def line_of(text: str, job_id: int) -> str:
    """The listing's line for this job."""
    found = [line for line in text.splitlines() if line.startswith(f"  job {job_id}  ")]
    assert len(found) == 1, f"job {job_id} is not listed once in:\n{text}"
    return found[0]


def pheanq_body(task_id: int, command: str, arguments: list[Any]) -> bytes:
    """A body in pheanq's shape written by hand, so that it can break a rule encode_body enforces."""
    return json.dumps({"pheanq": 1, "task_id": task_id, "description": {
        "command": command, "arguments": arguments, "options": {}, "type": "pheanq.description.TaskDescription",
    }}, separators=(",", ":")).encode()


# --- a worker buries every bad body, says why, and goes on ------------------------------------------------------

def test_every_bad_body_is_buried_with_a_reason_that_names_it_and_the_worker_survives_them_all(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": record_command(tmp_path, runs)})
    service = make_service(db_url)
    env = make_env(db_url)
    unregistered = service.queue_task(TaskDescription("unregistered-command", [1]))
    unregistered_job = service.find_task(unregistered).job_id
    assert unregistered_job is not None
    bad: dict[str, tuple[bytes, str]] = {  # what it is: (body, what its reason must say)
        "random bytes": (random.Random(7).randbytes(300), "not JSON"),
        "not JSON": (b"hello, this is not JSON", "not JSON"),
        "JSON that is not ours": (json.dumps({"job": "resize", "id": 7, "note": "caf\u00e9 \U0001f600"},
                                             ensure_ascii=False).encode(), "not a pheanq job body"),
        "a JSON array": (b"[1, 2, 3]", "not a pheanq job body"),
        "a missing row": (encode_body(987_654, TaskDescription("record", ["ghost"])),
                          "task 987654 has no row"),
        "deeply nested JSON": (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        "too big, and not JSON": (b"x" * 70_000, "too big: 70000 bytes"),
        "NUL bytes": (b"\x00" * 64 + b"after the NULs", "not JSON"),
        "a NUL in an argument": (pheanq_body(987_655, "record", ["a\x00b"]), "NUL byte"),
    }
    assert len(bad["too big, and not JSON"][0]) > 65_535
    worker = start_worker([], env)
    worker.wait_line("READY")
    with client_of(beanstalkd) as client:
        jobs = {name: client.put(body) for name, (body, _) in bad.items()}
    jobs["an unregistered command"] = unregistered_job
    bad["an unregistered command"] = (b"", "command 'unregistered-command' is not registered")

    wait_for(lambda: buried_count(beanstalkd) == len(jobs) or worker.lines != ["READY"], 20,
             "the bad jobs to be dealt with")
    assert worker.lines == ["READY"], f"the worker ran a bad job:\n{worker.log[-3000:]}"
    assert buried_count(beanstalkd) == len(jobs), worker.log[-3000:]
    good = service.queue_task(TaskDescription("record", ["good"]))
    wait_for(lambda: service.status_of(good) is Status.DONE, 15, "the good task to be done", interval=0.05)
    assert worker.process.poll() is None, worker.log  # it survived every one of them
    assert runs.read_text() == f"{good} good\n"
    # The worker says READY again only after it recorded the task done.
    wait_for(lambda: len(worker.lines) >= 3, 10, f"the worker ready again (got {worker.lines})")
    assert worker.lines == ["READY", f"BUSY {good}", "READY"]
    for job_id in jobs.values():
        assert f"burying job {job_id}" in worker.log
        assert job_state(beanstalkd, job_id) == "buried"
    row = service.find_task(unregistered)
    assert (row.status, row.attempts) == (Status.NEW, 0)

    text = listing(env, tmp_path)
    assert text.splitlines()[0] == f"tube {TUBE}: {len(jobs)} buried job(s)"
    for name, job_id in jobs.items():
        assert bad[name][1] in line_of(text, job_id), f"{name}: {line_of(text, job_id)}"
    assert "more without a recorded reason" not in text

    data = listing_json(env, tmp_path)
    assert (data["tube"], data["total"], data["unlisted"]) == (TUBE, len(jobs), 0)
    by_id = {job["job_id"]: job for job in data["jobs"]}
    assert set(by_id) == set(jobs.values())
    for name, job_id in jobs.items():
        assert bad[name][1] in by_id[job_id]["reason"], name
        assert by_id[job_id]["buried"]
        assert len(by_id[job_id]["body"]) <= 2000
    assert by_id[jobs["JSON that is not ours"]]["body"] == bad["JSON that is not ours"][0].decode()
    assert by_id[jobs["NUL bytes"]]["body"].endswith("after the NULs")
    assert "\x00" not in by_id[jobs["NUL bytes"]]["body"]


def test_a_body_bigger_than_pheanqs_limit_is_buried_even_when_it_names_a_real_row(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    """The issue: "A body that is ... too big ... is buried with a reason". No pheanq producer writes one
    (encode_body refuses it), so it comes from someone else: it must not run, whatever row it names."""
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": record_command(tmp_path, runs)})
    service = make_service(sqlite_url)
    # A real row with a registered command and no job, so that the only thing wrong with the body is its size.
    tasks = service.store.tasks
    task_id = tasks.insert_task(NewTask("record", encode_data(TaskDescription("record", ["big"])), TUBE, 1024,
                                60)).task_id
    body = pheanq_body(task_id, "record", ["x" * 70_000])
    assert len(body) > 65_535
    with client_of(beanstalkd) as client:
        job_id = client.put(body)

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log
    assert worker.lines == ["READY"], f"the worker ran the task of a too big body:\n{worker.log[-3000:]}"
    assert not runs.exists()
    assert job_state(beanstalkd, job_id) == "buried"
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.NEW, 0)
    reason = line_of(listing(make_env(sqlite_url), tmp_path), job_id)
    assert "65535" in reason or "too big" in reason, reason


def test_a_job_buried_by_another_client_is_counted_and_the_next_one_is_shown_without_a_reason(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    first = bury_as_another_client(beanstalkd, b"buried by some other program")
    second = bury_as_another_client(beanstalkd, b"and another one")
    ours = bury_through_service(service, beanstalkd, b"not for pheanq")

    text = listing(env, tmp_path)
    lines = text.splitlines()
    assert lines[0] == f"tube {TUBE}: 3 buried job(s)"
    assert NO_REASON in line_of(text, first)
    assert "not JSON" in line_of(text, ours)
    assert f"  job {second}  " not in text  # beanstalkd shows only the next buried job
    assert "... and 1 more without a recorded reason" in text

    data = listing_json(env, tmp_path)
    assert (data["total"], data["unlisted"]) == (3, 1)
    assert {job["job_id"]: job["reason"] for job in data["jobs"]}[first] is None
    assert [job["body"] for job in data["jobs"] if job["job_id"] == first] == ["buried by some other program"]


def test_an_empty_or_unknown_tube_has_no_buried_job(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    env = make_env(sqlite_url)
    assert listing(env, tmp_path) == f"tube {TUBE}: no buried job\n"
    assert listing_json(env, tmp_path) == {"tube": TUBE, "total": 0, "unlisted": 0, "next_after": None, "jobs": []}


# --- kick and delete --------------------------------------------------------------------------------------------

def test_kick_and_delete_by_id_and_all_and_kick_all_never_kicks_a_delayed_job(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    env = make_env(db_url)
    recorded = [bury_through_service(service, beanstalkd, f"bad body {n}".encode()) for n in range(3)]
    foreign = bury_as_another_client(beanstalkd, b"someone else's")
    with client_of(beanstalkd) as client:
        delayed = client.put(b"a delayed job", delay=3600)

    def recorded_ids() -> set[int]:
        return {row.job_id for row in service.store.admin.list_buried(service.beanstalkd.server, TUBE)}

    assert recorded_ids() == set(recorded)
    result = pheanq(["buried", "kick", str(recorded[0])], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"kicked 1 buried job(s) of tube {TUBE}\n"), result.stderr
    assert job_state(beanstalkd, recorded[0]) == "ready"
    assert recorded_ids() == set(recorded[1:])

    result = pheanq(["buried", "--use-tube", TUBE, "delete", str(recorded[1])], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"deleted 1 buried job(s) of tube {TUBE}\n"), result.stderr
    assert job_state(beanstalkd, recorded[1]) is None
    assert recorded_ids() == {recorded[2]}

    result = pheanq(["buried", "kick", "--all", "--use-tube", TUBE], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"kicked 2 buried job(s) of tube {TUBE}\n"), result.stderr
    assert [job_state(beanstalkd, job) for job in (recorded[2], foreign, delayed)] == ["ready", "ready", "delayed"]
    assert recorded_ids() == set()

    # Nothing buried now: beanstalkd's kick would take the delayed job instead.
    result = pheanq(["buried", "kick", "--all"], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"kicked 0 buried job(s) of tube {TUBE}\n"), result.stderr
    assert job_state(beanstalkd, delayed) == "delayed"
    stats = tube_stats(beanstalkd)
    assert (stats["current-jobs-ready"], stats["current-jobs-delayed"], stats["current-jobs-buried"]) == (3, 1, 0)

    # The ready ones buried again by the service (one reserve takes every bad job in a row), then all deleted.
    assert claims(service).reserve_task(TUBE, timeout=0) is None
    assert buried_count(beanstalkd) == 3
    assert recorded_ids() == {recorded[0], recorded[2], foreign}  # the foreign body is not JSON: now it has a reason
    result = pheanq(["buried", "delete", "--all"], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"deleted 3 buried job(s) of tube {TUBE}\n"), result.stderr
    assert [job_state(beanstalkd, job) for job in (recorded[0], recorded[2], foreign)] == [None, None, None]
    assert job_state(beanstalkd, delayed) == "delayed"
    assert recorded_ids() == set()
    assert listing(env, tmp_path) == f"tube {TUBE}: no buried job\n"


def test_a_job_that_is_not_a_buried_job_of_the_tube_and_a_bad_choice_of_jobs_are_one_line_errors(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    buried = bury_through_service(service, beanstalkd, b"bad")
    elsewhere = bury_as_another_client(beanstalkd, b"buried in another tube", tube="other")
    with client_of(beanstalkd) as client:
        ready = client.put(b"a ready job", priority=2**31)  # reserve_task above is done: it stays ready

    errors = {
        f"job 999 is not a buried job of tube {TUBE} (no such job)": ["kick", "999"],
        f"job {ready} is not a buried job of tube {TUBE} (it is ready in tube {TUBE})": ["delete", str(ready)],
        f"job {elsewhere} is not a buried job of tube {TUBE} (it is buried in tube other)":
            ["kick", str(buried), str(elsewhere)],
    }
    for message, args in errors.items():
        result = pheanq(["buried", *args], env, tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert one_error_line(result) == f"pheanq: error: {message}"
    # A list with one wrong id changes nothing, not even for the right ones.
    assert [job_state(beanstalkd, job) for job in (buried, elsewhere, ready)] == ["buried", "buried", "ready"]

    for args in (["kick"], ["delete"], ["kick", "--all", str(buried)], ["delete", "--all", str(buried)],
                 ["kick", "0"], ["delete", "abc"], ["kick", "--use-tube", "bad tube!", "--all"]):
        result = pheanq(["buried", *args], env, tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = one_error_line(result)
        assert "error: " in line, line
    assert "give job ids or --all" in one_error_line(pheanq(["buried", "kick"], env, tmp_path))
    assert job_state(beanstalkd, buried) == "buried"

    beanstalkd.stop()
    result = pheanq(["buried"], env, tmp_path)
    assert result.returncode == 1
    assert beanstalkd.address_text in one_error_line(result)


# --- a command that was not registered: kept, then run once after it is ---------------------------------------

def test_an_unregistered_command_is_buried_with_its_row_kept_and_runs_once_when_kicked_after_registering_it(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    runs = tmp_path / "runs.txt"
    record = record_command(tmp_path, runs)
    write_config(tmp_path, commands={"record": record})
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    task_id = service.queue_task(TaskDescription("later", ["x"]))
    job_id = service.find_task(task_id).job_id
    assert job_id is not None

    unaware = start_worker([], env)
    wait_for(lambda: buried_count(beanstalkd) == 1, 15, f"the job to be buried (log:\n{unaware.log[-2000:]})")
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.job_id) == (Status.NEW, 0, job_id)
    assert "command 'later' is not registered" in line_of(listing(env, tmp_path), job_id)
    # The buried job is the task's live job: the reconciler must not send a second one.
    report = reconcile(service.dispatch, min_age=0)
    assert (report.checked, report.alive, report.sent_again) == (1, 1, 0)
    unaware.signal(signal.SIGTERM)
    assert unaware.wait(15) == 0, unaware.log
    assert unaware.lines == ["READY"]

    write_config(tmp_path, commands={"record": record, "later": record})
    aware = start_worker([], env)
    aware.wait_line("READY")
    result = pheanq(["buried", "kick", str(job_id)], env, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"kicked 1 buried job(s) of tube {TUBE}\n"), result.stderr

    wait_for(lambda: service.status_of(task_id) is Status.DONE, 15, "the kicked task to be done", interval=0.05)
    wait_for(lambda: job_state(beanstalkd, job_id) is None, 10, "its job to be deleted")
    stats = tube_stats(beanstalkd)
    assert sum(int(stats[f"current-jobs-{state}"]) for state in ("ready", "reserved", "delayed", "buried")) == 0
    assert runs.read_text() == f"{task_id} x\n"
    assert service.find_task(task_id).attempts == 1
    assert aware.lines == ["READY", f"BUSY {task_id}", "READY"]
    assert listing(env, tmp_path) == f"tube {TUBE}: no buried job\n"
    assert service.store.admin.list_buried(service.beanstalkd.server, TUBE) == []


# --- a reason recorded before a restart without binlog -----------------------------------------------------------

def test_after_a_restart_without_binlog_a_stale_reason_is_not_shown_for_the_job_that_now_has_its_id(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    old = bury_through_service(service, beanstalkd, b"first life: not JSON")
    assert "not JSON" in line_of(listing(env, tmp_path), old)

    beanstalkd.stop()
    beanstalkd.start()  # no binlog: every job is gone and ids start again from 1
    assert listing(env, tmp_path) == f"tube {TUBE}: no buried job\n"
    with client_of(beanstalkd) as client:
        new = client.put(b"second life, by another client")
        assert new == old
        assert listing(env, tmp_path) == f"tube {TUBE}: no buried job\n"  # the job with that id is ready
        client.bury(client.reserve(timeout=5))

    text = listing(env, tmp_path)
    assert text.splitlines()[0] == f"tube {TUBE}: 1 buried job(s)"
    assert NO_REASON in line_of(text, new)
    assert "not JSON" not in text
    data = listing_json(env, tmp_path)
    assert [(job["job_id"], job["reason"]) for job in data["jobs"]] == [(new, None)]
    assert data["total"] == 1
