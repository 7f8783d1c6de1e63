"""Cancel, with real workers, commands and signals: a queued task leaves its tube; a running task's command
is stopped by its worker within seconds; the log says who cancelled and when; a task that has ended is
left alone; `pheanq cancel` reports each id and exits 1 when one could not be cancelled."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import WorkerProcess, claims, pheanq, process_gone, wait_for, write_config

from pheanq import InvalidInput, Status, TaskDescription
from pheanq.producer.service import TaskQueueService
from pheanq.worker.child import STOP_GRACE_SECONDS
from pheanq.worker.holds import CANCEL_CHECK_SECONDS

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# Prints its pid, then sleeps SECONDS.
SLEEPER = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(float(sys.argv[1]))"  # the task's work
# Ignores SIGTERM, says so by creating the file it is given, then sleeps a minute.
STUBBORN = "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"  # the task's work: it outlives the stop
WORKFLOWS_PAGE = Path(__file__).parent.parent / "docs" / "workflows.rst"


def test_a_queued_task_is_cancelled_and_its_job_leaves_the_tube(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("work", [1]))
    job_id = service.find_task(task_id).job_id
    assert job_id is not None and service.beanstalkd.inspect(job_id) is not None
    result = service.cancel_task(task_id, by="alice")
    assert (result.cancelled, result.was) == (True, Status.NEW)
    row = service.find_task(task_id)
    assert row.status is Status.CANCELLED and row.finished is not None
    assert row.log is not None and row.log.startswith("--- cancelled by alice at 20")
    assert service.beanstalkd.inspect(job_id) is None
    assert claims(service).reserve_task("pheanq", timeout=1) is None


def test_a_task_that_has_ended_is_not_cancelled(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("work", [1]))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    claims(service).mark_done(package, None)
    result = service.cancel_task(task_id)
    assert (result.cancelled, result.was) == (False, Status.DONE)
    assert result.message == f"task {task_id} is done: it has ended, nothing to cancel"
    assert service.status_of(task_id) is Status.DONE


def test_a_running_task_is_stopped_by_its_worker_within_seconds(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    write_config(tmp_path, commands={"sleep": [sys.executable, "-c", SLEEPER]})
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("sleep", ["60"]))
    follower = service.queue_task(TaskDescription("sleep", ["0"]))
    worker = start_worker([], make_env(db_url))
    wait_for(lambda: any(line.startswith("CHILD ") for line in worker.stdout_lines), 20, "the command to start")
    pid = int(next(line for line in worker.stdout_lines if line.startswith("CHILD ")).split()[1])
    asked = time.monotonic()
    result = service.cancel_task(task_id, by="bob")
    assert (result.cancelled, result.was) == (True, Status.WORKING)
    assert "its worker" in result.message
    wait_for(lambda: process_gone(pid), 10, "the cancelled command to be stopped")
    assert time.monotonic() - asked < 5
    wait_for(lambda: service.status_of(task_id) is Status.CANCELLED, 10, "the worker to end the task cancelled")
    row = service.find_task(task_id)
    assert row.log is not None and "--- cancel requested by bob while " in row.log
    assert "--- attempt 1 on" in row.log and ": stopped after" in row.log and "goes back to its tube" not in row.log
    assert row.exit_code == -15  # the command's own end: SIGTERM
    # The end is committed first, then the job deleted.
    wait_for(lambda: service.beanstalkd.inspect(row.job_id or 0) is None, 5, "the cancelled task's job deleted")
    # The worker goes on with the next task.
    wait_for(lambda: service.status_of(follower) is Status.DONE, 20, "the next task")
    worker.stop()


def test_a_cancelled_command_that_ignores_sigterm_is_killed_when_the_docs_say(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    stated = re.search(r"one that ignores SIGTERM is killed ([0-9.]+) s later: it is gone within about ([0-9.]+) s",
                       " ".join(WORKFLOWS_PAGE.read_text().split()))
    assert stated is not None, "docs/workflows.rst says how long a cancelled command that ignores SIGTERM lives"
    grace, bound = float(stated[1]), float(stated[2])
    assert grace == STOP_GRACE_SECONDS and bound >= CANCEL_CHECK_SECONDS + STOP_GRACE_SECONDS
    write_config(tmp_path, commands={"stubborn": [sys.executable, "-c", STUBBORN]})
    service = make_service(sqlite_url)
    ignoring = tmp_path / "ignoring-sigterm"
    task_id = service.queue_task(TaskDescription("stubborn", [str(ignoring)]))
    worker = start_worker([], make_env(sqlite_url))
    wait_for(ignoring.exists, 20, "the command to start and ignore SIGTERM")
    pid = int(next(line for line in worker.stdout_lines if line.startswith("CHILD ")).split()[1])
    asked = time.monotonic()
    assert service.cancel_task(task_id, by="bob").cancelled
    wait_for(lambda: process_gone(pid), bound + 5, "the cancelled command to be killed")
    took = time.monotonic() - asked
    assert grace <= took <= bound + 1.0, f"the command lived {took:.1f}s after the cancel"
    wait_for(lambda: "the task was cancelled" in (service.find_task(task_id).log or ""), 10, "the stopped attempt")
    worker.stop()


def test_the_docs_give_one_grace_between_sigterm_and_sigkill() -> None:
    docs = " ".join(" ".join(page.read_text().split()) for page in WORKFLOWS_PAGE.parent.glob("*.rst"))
    graces = {float(found[0] or found[1]) for found in re.findall(r"SIGKILL (?:([0-9.]+) s later|after ([0-9.]+) s)",
                                                                  docs)}
    assert graces == {STOP_GRACE_SECONDS}


def test_pheanq_cancel_reports_each_id_and_exits_1_when_one_was_not_cancelled(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
) -> None:
    env = make_env(sqlite_url)
    service = make_service(sqlite_url)
    first = service.queue_task(TaskDescription("work", [1]))
    second = service.queue_task(TaskDescription("work", [2]))
    done = pheanq(["cancel", str(first), str(second), "--by", "ops"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"task {first} cancelled (it was new)", f"task {second} cancelled (it was new)"]
    assert "--- cancelled by ops at" in (service.find_task(first).log or "")
    again = pheanq(["cancel", str(first), "999"], env, tmp_path)
    assert again.returncode == 1
    assert again.stderr.splitlines() == [f"task {first} is cancelled: it has ended, nothing to cancel",
                                         "task 999: not cancelled: task 999 does not exist"]
    bad = pheanq(["cancel", "x"], env, tmp_path)
    assert bad.returncode == 2 and "'x' is not a valid integer" in bad.stderr


def test_who_cancels_is_a_name_the_table_can_hold(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: Callable[..., dict[str, str]],
) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("work", ["1"]))
    for by in ("", "x" * 256):
        with pytest.raises(InvalidInput, match="who cancels"):
            service.cancel_task(task_id, by)
        with pytest.raises(InvalidInput, match="who cancels"):
            service.create_batch("b").cancel(by)
    assert service.status_of(task_id) is Status.NEW
    result = pheanq(["cancel", str(task_id), "--by", "y" * 256], make_env(sqlite_url), tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "who cancels" in result.stderr, result
    assert service.status_of(task_id) is Status.NEW


def test_who_cancels_cannot_write_a_line_into_the_log(sqlite_url: str, make_service: MakeService) -> None:
    """A name with a newline used to write lines starting with `---` into the task's log."""
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("work", [1]))
    for name in ("alice\n--- attempt 1 on vm:1: done after 0.10s", "bob\x1b[2J", "carol\r"):
        with pytest.raises(InvalidInput, match=r"who cancels \(--by\) must be printable text"):
            service.cancel_task(task_id, by=name)
    assert service.status_of(task_id) is Status.NEW
    assert service.find_task(task_id).log is None
