"""A cancel that lands while a task's command runs, for real: the worker ends the task, every attempt that
started keeps its log entry and exit code, and a command that completed before it could be stopped did the
work — the task is `done` and what waits on it runs. No attempt follows a cancel: not a retry, not a stalled
task run again.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import WorkerProcess, pheanq, wait_for, write_config

from pheanq import Retry, Status, TaskDescription
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# Appends its task id to the file it is given, then sleeps SECONDS.
RECORDING_SLEEPER = ("import os, sys, time; open(sys.argv[1], 'a').write(os.environ['PHEANQ_TASK_ID'] + '\\n'); "
                     "time.sleep(float(sys.argv[2]))")  # the task's work


def setup(tmp_path: Path) -> Path:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"sleep": [sys.executable, "-c", RECORDING_SLEEPER, str(runs)]})
    return runs


def runs_of(runs: Path) -> list[int]:
    return [int(line) for line in runs.read_text().split()] if runs.exists() else []


def child_started(worker: WorkerProcess) -> bool:
    return any(line.startswith("CHILD ") for line in worker.stdout_lines)


def test_a_cancel_that_comes_as_the_command_completes_leaves_the_task_done_and_its_dependant_runs(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """The issue: the command ran to its end with exit 0, but the row said `cancelled`, exit code NULL, its log
    held no `--- attempt 1` entry, the worker said the attempt was "taken over", and the chain's next step
    ended `upstream_failed` although the work was done."""
    runs = setup(tmp_path)
    service = make_service(db_url)
    first, second = service.queue_chain(TaskDescription("sleep", ["0.3"]).then(TaskDescription("sleep", ["0"])))
    worker = start_worker([], make_env(db_url))
    wait_for(lambda: child_started(worker), 20, "the first step's command to start", interval=0.01)
    result = service.cancel_task(first, by="carol")
    assert (result.cancelled, result.was) == (True, Status.WORKING)
    assert "cancel requested" in result.message

    wait_for(lambda: service.status_of(second) in (Status.DONE, Status.UPSTREAM_FAILED), 20, "the chain to end")
    row = service.find_task(first)
    assert (row.status, row.exit_code, row.attempts) == (Status.DONE, 0, 1)
    assert row.log is not None
    assert "--- cancel requested by carol while " in row.log
    assert "--- attempt 1 on " in row.log and ": done after " in row.log
    assert "the cancel came after the command had completed: the work was done" in row.log
    assert service.status_of(second) is Status.DONE
    assert runs_of(runs) == [first, second]
    assert "no longer" not in worker.log and "taken over" not in worker.log
    worker.stop()


def test_a_cancel_stops_a_running_command_keeps_its_attempt_and_exit_code_and_no_retry_follows(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    runs = setup(tmp_path)
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("sleep", ["60"]), retry=Retry(max_attempts=3, delay=0))
    dependant = service.queue_task(TaskDescription("sleep", ["0"]), after=[task_id])
    worker = start_worker([], make_env(db_url))
    wait_for(lambda: child_started(worker), 20, "the command to start", interval=0.01)
    assert service.cancel_task(task_id, by="dave").cancelled

    wait_for(lambda: service.status_of(task_id) is Status.CANCELLED, 15, "the worker to end the task cancelled")
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (1, -15)
    assert row.log is not None and row.log.count("--- attempt ") == 1
    assert "stopped after" in row.log and "the task was cancelled" in row.log
    assert "retrying" not in row.log
    wait_for(lambda: service.status_of(dependant) is Status.UPSTREAM_FAILED, 10, "the dependant to be failed")
    assert runs_of(runs) == [task_id]
    # A second cancel finds the task ended.
    assert not service.cancel_task(task_id).cancelled
    worker.stop()


@pytest.mark.parametrize("job", ["comes back", "was lost"])
def test_a_task_whose_worker_died_after_its_cancel_was_requested_ends_cancelled_and_never_runs_again(
    job: str, db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """Its worker is killed with SIGKILL between the cancel and the stop. Once its lease is stale, the job
    that comes back would be claimed again, and the reconciler would send a task whose job was lost again as
    a stalled one: a task whose cancel was requested ends instead."""
    runs = setup(tmp_path)
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("sleep", ["60"]))
    env = make_env(db_url)
    worker = start_worker([], env)
    wait_for(lambda: runs_of(runs) == [task_id], 20, "the command to start", interval=0.01)
    worker.process.kill()
    worker.process.wait(10)
    assert service.cancel_task(task_id, by="erin").cancelled
    assert service.status_of(task_id) is Status.WORKING  # requested: only its worker, or recovery, ends it
    long_ago = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=1)
    with service.store.database.transaction() as conn:  # the lease goes stale (as it would in ~32 s)
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(heartbeat=long_ago))
    if job == "was lost":
        job_id = service.find_task(task_id).job_id
        assert job_id is not None
        service.beanstalkd.delete(job_id)
        reconcile = pheanq(["reconcile", "--min-age", "0"], env, tmp_path)
        assert reconcile.returncode == 0, reconcile.stderr
    later = start_worker(["--stop-when-empty"], env)
    assert later.wait() == 0, later.log

    row = service.find_task(task_id)
    assert row.status is Status.CANCELLED
    assert row.log is not None and "a cancel was requested while attempt 1 ran; no other attempt follows" in row.log
    assert row.attempts == 1
    assert runs_of(runs) == [task_id]  # once, by the killed worker
