"""A task's own timeout, with real worker processes and real commands: the command is stopped at its time
limit and the attempt fails with a log that says so; a task within its limit, or running past its TTR, is
not affected; a bad timeout is refused before anything is written."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Beanstalkd, WorkerProcess, pheanq, process_gone, wait_for, write_config

from pheanq import InvalidInput, Status, TaskDescription
from pheanq.producer.service import TaskQueueService

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# Prints its pid, then sleeps SECONDS.
SLEEPER = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(float(sys.argv[1]))"  # the task's work


@pytest.fixture
def sleeper(tmp_path: Path) -> None:
    write_config(tmp_path, commands={"sleep": [sys.executable, "-c", SLEEPER]})


def test_a_command_past_its_timeout_is_stopped_and_its_attempt_fails_saying_so(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, sleeper: None,
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("sleep", ["60"]), timeout=1)
    assert service.find_task(task_id).timeout == 1
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.FAILED, 1, -15), row.log
    assert row.log is not None and "timed out: the task may run 1s; its command was stopped" in row.log
    assert row.finished is not None and row.started is not None
    assert 1.0 <= (row.finished - row.started).total_seconds() < 10
    child = int(row.log.splitlines()[1])  # the command printed its pid before it slept
    assert process_gone(child)


def test_a_command_within_its_timeout_and_past_its_ttr_ends_done(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, sleeper: None,
) -> None:
    service = make_service(sqlite_url)
    # TTR 1 s: the worker renews the job while the command runs 2.5 s, well within its timeout of 20 s.
    task_id = service.queue_task(TaskDescription("sleep", ["2.5"]), ttr=1, timeout=20)
    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.DONE, 1, 0), row.log


@pytest.mark.parametrize("timeout", [0, -1, True, 1.5, "10", 2**31])
def test_a_bad_timeout_is_refused_before_anything_is_written(
    sqlite_url: str, make_service: MakeService, timeout: object,
) -> None:
    service = make_service(sqlite_url)
    with pytest.raises(InvalidInput, match="timeout must be a whole number from 1 to 2147483647"):
        service.queue_task(TaskDescription("sleep", ["1"]), timeout=timeout)  # type: ignore[arg-type]
    assert service.store.tasks.count_tasks() == []


def test_add_example_task_takes_a_timeout_and_a_priority(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    env = make_env(sqlite_url)
    queued = pheanq(["add-example-task", "--wait", "30", "--timeout", "1"], env, tmp_path)
    assert queued.returncode == 0, queued.stderr
    task_id = int(queued.stdout.split("id ")[1])
    assert make_service(sqlite_url).find_task(task_id).timeout == 1
    worker = WorkerProcess(["--stop-when-empty"], env, tmp_path)
    assert worker.wait(30) == 0, worker.log
    wait_for(lambda: make_service(sqlite_url).status_of(task_id) is Status.FAILED, 5, "the task to fail")
    bad = pheanq(["add-example-task", "--timeout", "0"], env, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--timeout" in bad.stderr
    urgent = pheanq(["add-example-task", "--priority", "0"], env, tmp_path)
    assert make_service(sqlite_url).find_task(int(urgent.stdout.split("id ")[1])).priority == 0
    bad = pheanq(["add-example-task", "--priority", "-1"], env, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--priority" in bad.stderr
