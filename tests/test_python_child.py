"""The child process of a real `pheanq task-worker --import pytasks` stopped, crashed, bloated or flooded.

What is checked each time: the task's row (status, exit code, log), that the child that ran it is gone
(psutil), and that the worker lives on and runs the next task in a new child. On SQLite: the database
plays no part in how a child ends.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytasks
import pytest
from support import WorkerProcess, drain, log_of, process_gone, python_env, wait_for, write_config

from pheanq import Status
from pheanq.producer.service import TaskQueueService

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]
CUT = re.compile(r"\n\[\.\.\. pheanq cut (\d+) bytes of output here \.\.\.\]\n")


def started_child(started: Path) -> int:
    """The pid of the child running `wait_for_file`, once the task has written it."""
    pid: int = wait_for(lambda: started.exists() and started.read_text() and int(started.read_text()), 15,
                        "the task to start in the worker's child")
    return pid


def assert_next_task_ran_in_a_new_child(service: TaskQueueService, task_id: int, old_child: int) -> None:
    assert service.status_of(task_id) is Status.DONE, log_of(service, task_id)
    new_child = service.result(task_id)
    assert isinstance(new_child, int) and new_child != old_child


# --- stopped by the worker --------------------------------------------------------------------------------------

def test_a_task_over_its_timeout_fails_as_timed_out_its_child_killed_and_the_worker_runs_the_next(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    started = tmp_path / "started"
    stuck = pytasks.wait_for_file.options(service=service, timeout=1).queue(str(tmp_path / "never"), str(started))
    after = pytasks.pid.options(service=service).queue()
    worker = start_worker(["--import", "pytasks", "--stop-when-drained"], python_env(make_env, sqlite_url))
    child = started_child(started)
    assert worker.wait(30) == 0, worker.log

    row = service.find_task(stuck)
    assert row.status is Status.FAILED and row.attempts == 1
    log = log_of(service, stuck)
    assert "timed out" in log and "its child process was stopped" in log, log
    assert process_gone(child)
    assert_next_task_ran_in_a_new_child(service, after, child)


def test_cancelling_a_running_python_task_kills_its_child_ends_it_cancelled_and_the_worker_runs_the_next(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    started = tmp_path / "started"
    stuck = pytasks.wait_for_file.options(service=service).queue(str(tmp_path / "never"), str(started))
    after = pytasks.pid.options(service=service).queue()
    worker = start_worker(["--import", "pytasks", "--stop-when-drained"], python_env(make_env, sqlite_url))
    child = started_child(started)

    service.cancel_task(stuck, by="the test")
    wait_for(lambda: process_gone(child), 10, "the cancelled task's child to be killed")
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(stuck)
    assert row.status is Status.CANCELLED, row.log
    assert_next_task_ran_in_a_new_child(service, after, child)


# --- ended by itself --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("how", "status", "exit_code", "said"), [
    ("segfault", Status.FAILED, -11, "its child process died (killed by signal 11) before the function returned"),
    ("exit", Status.FAILED, 7, "its child process died (exit code 7) before the function returned"),
    ("exit0", Status.DONE, 0, "its child process exited with code 0 before the function returned; no result"),
])
def test_a_child_that_ends_itself_mid_task_is_judged_by_its_exit_status_and_the_worker_runs_the_next(
    how: str, status: Status, exit_code: int, said: str, sqlite_url: str, make_service: MakeService,
    make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """A child that dies before its function returns gives no outcome: its own exit status is the verdict, as
    for a command, and as the tender would judge it had the worker died too (the child said ``EXITED <code>``
    only through its worker). So `os._exit(0)` in a task is `done` with no result; a signal or another exit
    code is `failed` with that code."""
    service = make_service(sqlite_url)
    crashed = pytasks.crash.options(service=service).queue(how)
    after = pytasks.add.options(service=service).queue(2, 3)
    worker = drain(start_worker, python_env(make_env, sqlite_url))

    row = service.find_task(crashed)
    assert (row.status, row.exit_code, row.attempts, row.result) == (status, exit_code, 1, None)
    log = log_of(service, crashed)
    assert said in log, log
    assert "before the crash" in log  # what it printed before it died
    assert service.result(after) == 5
    child = int(worker.stdout_lines[worker.stdout_lines.index(f"BUSY {crashed}") + 1].removeprefix("CHILD "))
    assert f"EXITED {exit_code}" in worker.stdout_lines
    assert process_gone(child)
    next_child = worker.stdout_lines[worker.stdout_lines.index(f"BUSY {after}") + 1]
    assert next_child.startswith("CHILD ") and next_child != f"CHILD {child}"


def test_a_child_over_max_child_memory_is_stopped_its_task_fails_naming_the_limit_and_the_worker_runs_the_next(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    bloated = pytasks.leak.options(service=service).queue(300)
    after = pytasks.pid.options(service=service).queue()
    worker = drain(start_worker, python_env(make_env, sqlite_url, PHEANQ_MAX_CHILD_MEMORY="100"))

    row = service.find_task(bloated)
    assert row.status is Status.FAILED and row.result is None
    log = log_of(service, bloated)
    assert re.search(r"failed after [0-9.]+s: its process used \d+ MB, more than max_child_memory \(100 MB\); it was "
                     r"stopped", log), log
    child = int(worker.stdout_lines[worker.stdout_lines.index(f"BUSY {bloated}") + 1].removeprefix("CHILD "))
    assert_next_task_ran_in_a_new_child(service, after, child)


def test_output_far_over_max_log_bytes_keeps_its_head_and_tail_with_stdout_stderr_and_logging(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    max_log = 4000
    write_config(tmp_path, max_log_bytes=max_log, log_worker_output_on_success=True)
    service = make_service(sqlite_url)
    lines = 3000
    task_id = pytasks.talk.options(service=service).queue(lines)
    drain(start_worker, python_env(make_env, sqlite_url))

    assert service.result(task_id) == "spoke"
    header, output = log_of(service, task_id).split("\n", 1)
    assert header.startswith("--- attempt 1 on ") and ": done after " in header
    cut = CUT.search(output)
    assert cut is not None, output[:500]
    printed = lines * len(f"{0:06d} {'x' * 100}\n")
    assert int(cut[1]) > printed - max_log
    assert len(output) == max_log + len(cut[0])
    assert output.startswith(f"000000 {'x' * 100}\n000001 ")            # the head
    tail = output[cut.end():]
    assert f"{lines - 1:06d} {'x' * 100}\nto stderr\n" in tail, tail    # stdout, then stderr
    assert "to logging" in tail.splitlines()[-1]                      # then the logging output


# --- signals to the worker --------------------------------------------------------------------------------------

def test_sigterm_while_a_python_task_runs_lets_it_finish_done_then_the_worker_exits_0_and_its_child_is_gone(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    started, go = tmp_path / "started", tmp_path / "go"
    running = pytasks.wait_for_file.options(service=service).queue(str(go), str(started))
    waiting = pytasks.add.options(service=service).queue(1, 1)
    worker = start_worker(["--import", "pytasks"], python_env(make_env, sqlite_url))
    child = started_child(started)

    worker.signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: finishing the current task" in worker.log, 10, "the worker to take SIGTERM")
    go.touch()
    assert worker.wait(30) == 0, worker.log
    assert service.result(running) == "went"
    assert service.status_of(waiting) is Status.NEW  # no other task was taken
    assert process_gone(child)
    assert worker.stdout_lines == ["READY", f"BUSY {running}", f"CHILD {child}", "EXITED 0", "READY"]


def test_sigint_while_a_python_task_runs_stops_its_child_hands_the_task_back_and_the_worker_exits_130(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    started = tmp_path / "started"
    running = pytasks.wait_for_file.options(service=service).queue(str(tmp_path / "never"), str(started))
    worker = start_worker(["--import", "pytasks"], python_env(make_env, sqlite_url))
    child = started_child(started)

    worker.signal(signal.SIGINT)
    wait_for(lambda: process_gone(child), 5, "the child to be stopped at once")
    assert worker.wait(30) == 130, worker.log
    row = service.find_task(running)
    assert (row.status, row.attempts, row.worker) == (Status.NEW, 1, None)
    assert row.log is not None and "interrupted" in row.log and "SIGINT" in row.log, row.log
    assert "EXITED 0" not in worker.stdout_lines
