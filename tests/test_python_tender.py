"""Python tasks under a real `pheanq worker-tender --import pytasks`: run, taken over, never run twice.

The task `pytasks.held` appends ``start <id> <pid>`` to a file, waits for a go-file, then appends
``done <id>``: the file says how often a task started and how often it ran to its end. Workers are killed
with a real SIGKILL while their child runs the task, or in the window after the child said ``EXITED 0`` and
before the worker recorded it (SQLite held locked, as for commands in tests/test_leases.py).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import greenstalk
import psutil
import pytasks
import pytest
from support import (
    Beanstalkd,
    TenderProcess,
    kill_worker_once_its_command_exited,
    one_error_line,
    pheanq,
    process_gone,
    python_env,
    wait_for,
)

from pheanq import Retry, Status
from pheanq.producer.service import TaskQueueService

TUBE = "pheanq"  # the default tube
MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartTender = Callable[..., TenderProcess]


@pytest.fixture
def start_tender(tmp_path: Path, make_env: MakeEnv) -> Iterator[StartTender]:
    """Start `pheanq worker-tender --import pytasks ARGS`, its lock files in the test's own run directory."""
    started: list[TenderProcess] = []

    def start(database_url: str, *args: str) -> TenderProcess:
        env = python_env(make_env, database_url, PHEANQ_RUN_DIR=str(tmp_path / "run"))
        tender = TenderProcess(["--import", "pytasks", *args], env, tmp_path)
        started.append(tender)
        return tender

    yield start
    for tender in started:
        tender.stop()


def runs_of(runs: Path, word: str, task_id: int) -> list[list[str]]:
    """The lines of `runs` that say `word` (start, done) for `task_id`, split into words."""
    if not runs.exists():
        return []
    return [words for words in (line.split() for line in runs.read_text().splitlines())
            if words[:2] == [word, str(task_id)]]


def worker_of(tender: TenderProcess, task_id: int, nth: int = 0) -> int:
    """The pid of the worker that said ``BUSY <task_id>`` the `nth` time (from 0); waits for it."""
    def find() -> int | None:
        owners = [int(match[1]) for line in list(tender.lines)
                  if (match := re.match(rf"worker (\d+): BUSY {task_id}$", line))]
        return owners[nth] if len(owners) > nth else None
    pid: int = wait_for(find, 15, f"BUSY {task_id} #{nth + 1}; log:\n{tender.log[-2000:]}")
    return pid


def jobs_in(server: Beanstalkd, tube: str = TUBE) -> int:
    with greenstalk.Client(server.address, encoding=None) as client:
        stats = client.stats_tube(tube)
    return sum(int(str(dict(stats)[f"current-jobs-{state}"])) for state in ("ready", "reserved", "delayed", "buried"))


def stop(tender: TenderProcess) -> None:
    """SIGTERM: the tender exits 0 and leaves no worker and no child behind."""
    below = [process.pid for process in psutil.Process(tender.pid).children(recursive=True)]
    tender.signal(signal.SIGTERM)
    assert tender.wait() == 0, tender.log[-2000:]
    assert [pid for pid in below if not process_gone(pid)] == []


def test_a_worker_tender_with_import_runs_python_tasks_to_their_results(
    sqlite_url: str, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = [pytasks.add.options(service=service).queue(n, 100) for n in range(4)]
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "2")

    wait_for(lambda: all(service.status_of(task_id) is Status.DONE for task_id in ids), 30,
             f"every task done; log:\n{tender.log[-2000:]}")
    assert [service.result(task_id) for task_id in ids] == [100, 101, 102, 103]
    # Run in a worker's child; the lines reach the tender's log moments after the rows say done.
    wait_for(lambda: any(re.match(r"worker \d+: CHILD \d+$", line) for line in tender.lines), 10, "a CHILD line")
    wait_for(lambda: any(re.match(r"worker \d+: EXITED 0$", line) for line in tender.lines), 10, "an EXITED line")
    stop(tender)


def test_a_worker_tender_whose_import_is_not_found_exits_2_with_one_line_naming_the_module(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    """The tender finds the module without importing the application; one it cannot find is a set-up mistake
    reported at once, not a pool of workers that each fail to start."""
    env = python_env(make_env, sqlite_url, PHEANQ_RUN_DIR=str(tmp_path / "run"))
    result = pheanq(["worker-tender", "--import", "pytasks", "--import", "no_such_module"], env, tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == "pheanq: error: cannot import 'no_such_module': no module named 'no_such_module'"
    assert result.stdout == ""


def test_kill_9_of_a_worker_kills_its_python_child_and_the_task_is_taken_over_and_done_once(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    runs, go = tmp_path / "runs", tmp_path / "go"
    task_id = pytasks.held.options(service=service, ttr=30).queue(str(runs), str(go))
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "2")
    victim = worker_of(tender, task_id)
    child = int(wait_for(lambda: runs_of(runs, "start", task_id), 15, "the task to start")[0][2])
    assert child in [process.pid for process in psutil.Process(victim).children()]

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: process_gone(child), 5, f"the killed worker's child {child} to die with it (PDEATHSIG)")
    died = wait_for(lambda: [line for line in tender.tender_lines(f"worker {victim} ")
                             if re.search(rf"worker {victim} (ended|died) \(signal 9\)", line)], 10,
                    f"the tender to notice worker {victim} died")[0]
    assert f"while running task {task_id}; the tender settles the task" in died, died
    assert worker_of(tender, task_id, nth=1) != victim  # another worker takes it over
    wait_for(lambda: len(runs_of(runs, "start", task_id)) == 2, 15, "the task to start again")
    go.touch()
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, f"the task done; log:\n{tender.log[-2000:]}")

    assert len(runs_of(runs, "done", task_id)) == 1
    row = service.find_task(task_id)
    assert row.attempts == 2 and service.result(task_id) == "held"
    assert "died (signal 9); the task goes back to its tube" in (row.log or ""), row.log
    stop(tender)


def test_a_python_task_that_completed_before_its_worker_was_killed_is_recorded_by_the_tender_not_run_again(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, start_tender: StartTender, beanstalkd: Beanstalkd,
) -> None:
    """The child says ``EXITED 0`` on its worker's output before it hands the worker the outcome; the worker
    is killed after that line and before it can record the end (the database is held locked meanwhile). The
    tender heard the line: it records the task `done`, and no worker runs it again."""
    service = make_service(sqlite_url)
    runs, go = tmp_path / "runs", tmp_path / "go"
    task_id = pytasks.held.options(service=service, ttr=60).queue(str(runs), str(go))
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1")
    wait_for(lambda: runs_of(runs, "start", task_id), 20, f"the task to start; log:\n{tender.log[-2000:]}")
    worker_pid = worker_of(tender, task_id)

    kill_worker_once_its_command_exited(sqlite_url, tender, worker_pid, 0, go)
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, f"the task done; log:\n{tender.log[-3000:]}")
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (1, 0)
    assert "its tender recorded the result" in (row.log or ""), row.log
    wait_for(lambda: jobs_in(beanstalkd) == 0, 20, "the job to be gone")
    assert (len(runs_of(runs, "start", task_id)), len(runs_of(runs, "done", task_id))) == (1, 1), runs.read_text()
    stop(tender)


def test_kill_9_of_the_tender_lets_a_worker_s_python_child_finish_its_task_done_once(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    """A worker whose tender died finishes its task (as for commands, tests/test_tender.py), although nobody
    reads its state lines any more: its child, which says ``EXITED`` on the same output, must not die of the
    broken pipe when its function returns, or a completed task would be recorded as failed."""
    service = make_service(sqlite_url)
    runs, go = tmp_path / "runs", tmp_path / "go"
    task_id = pytasks.held.options(service=service).queue(str(runs), str(go))
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1")
    busy = worker_of(tender, task_id)
    wait_for(lambda: runs_of(runs, "start", task_id), 15, "the task to start")

    tender.process.kill()
    tender.wait(10)
    go.touch()
    wait_for(lambda: process_gone(busy), 15, "the orphaned worker gone after its task")
    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.attempts) == (Status.DONE, 0, 1), row.log
    assert service.result(task_id) == "held"
    assert (len(runs_of(runs, "start", task_id)), len(runs_of(runs, "done", task_id))) == (1, 1)


def test_a_non_retryable_exception_whose_worker_died_before_recording_it_is_not_retried_by_the_tender(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    """The retry policy names `pytasks.Permanent` as not retried. The task raises it; its worker is killed
    after the child said ``EXITED 1`` and before the worker recorded the failure. The tender records the
    failed attempt: it must follow the same policy as the worker would have (no second attempt)."""
    service = make_service(sqlite_url)
    runs, go = tmp_path / "runs", tmp_path / "go"
    policy = Retry(max_attempts=3, delay=0, jitter=False, non_retryable_errors={pytasks.Permanent})
    task_id = pytasks.held.options(service=service, retry=policy, ttr=60).queue(str(runs), str(go), fail=True)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1")
    wait_for(lambda: runs_of(runs, "start", task_id), 20, f"the task to start; log:\n{tender.log[-2000:]}")
    worker_pid = worker_of(tender, task_id)

    kill_worker_once_its_command_exited(sqlite_url, tender, worker_pid, 1, go)
    wait_for(lambda: service.status_of(task_id) in (Status.FAILED, Status.RETRYING, Status.DONE), 20,
             f"the failure recorded; log:\n{tender.log[-3000:]}")
    tender.wait_log(f"task {task_id}: ", timeout=10)  # the tender's word on what it recorded
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.FAILED, 1), row.log
    assert len(runs_of(runs, "start", task_id)) == 1, runs.read_text()
    stop(tender)
