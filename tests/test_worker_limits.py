"""The limits of a worker started from cron, with real worker processes: cycles, cycle delay, time, memory,
and one worker per --single-id, however the previous one ended."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import WorkerProcess, one_error_line, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService
from pheanq.worker.cron import WorkerLimits

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]
SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"  # the task's work: a sleep of its argument


@pytest.fixture
def sleeper(tmp_path: Path) -> None:
    write_config(tmp_path, commands={"sleep": [sys.executable, "-c", SLEEPER]})


def test_the_limits_rule() -> None:
    assert WorkerLimits().reason_to_stop(10**6, 10**6) is None
    assert WorkerLimits(cycles_limit=3).reason_to_stop(3, 0) == "--cycles-limit 3 reached"
    assert WorkerLimits(cycles_limit=3).reason_to_stop(2, 0) is None
    assert WorkerLimits(time_limit=1.5).reason_to_stop(0, 1.5) == "--time-limit 1.5s reached"
    reason = WorkerLimits(memory_limit_mb=1).reason_to_stop(0, 0)
    assert reason is not None and reason.startswith("--memory-limit 1 MB exceeded (")
    assert WorkerLimits(memory_limit_mb=10**6).reason_to_stop(0, 0) is None


def test_cycles_limit_counts_every_check_and_cycle_delay_pauses_after_an_empty_one(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, sleeper: None,
) -> None:
    service = make_service(sqlite_url)
    ids = [service.queue_task(TaskDescription("sleep", ["0"])) for _ in range(2)]
    started = time.monotonic()
    worker = start_worker(["--cycles-limit", "3", "--cycle-delay", "1.5"], make_env(sqlite_url))
    assert worker.wait(30) == 0, worker.log
    # Two checks found a task each; the third waited its 1 s for a job, then the 1.5 s delay.
    assert time.monotonic() - started >= 2.5
    assert [service.status_of(task_id) for task_id in ids] == [Status.DONE, Status.DONE]
    assert worker.lines == ["READY", f"BUSY {ids[0]}", "READY", f"BUSY {ids[1]}", "READY"]
    assert "stopping: --cycles-limit 3 reached" in worker.log


def test_time_limit_lets_the_task_in_hand_finish_then_takes_no_other(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, sleeper: None,
) -> None:
    service = make_service(sqlite_url)
    first, second = (service.queue_task(TaskDescription("sleep", ["2"])) for _ in range(2))
    worker = start_worker(["--time-limit", "1"], make_env(sqlite_url))
    assert worker.wait(30) == 0, worker.log
    assert (service.status_of(first), service.status_of(second)) == (Status.DONE, Status.NEW)
    assert "stopping: --time-limit 1s reached" in worker.log


def test_memory_limit_stops_a_worker_grown_past_it_before_it_takes_a_task(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, sleeper: None,
) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("sleep", ["0"]))
    worker = start_worker(["--memory-limit", "1"], make_env(sqlite_url))  # any Python process is past 1 MB
    assert worker.wait(30) == 0, worker.log
    assert service.status_of(task_id) is Status.NEW
    assert "stopping: --memory-limit 1 MB exceeded" in worker.log


def test_one_worker_per_single_id_even_after_the_previous_one_was_killed(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    sleeper: None,
) -> None:
    env = make_env(sqlite_url)
    pids = tmp_path / "pids"
    first = start_worker(["--single-id", "nightly", "--pid-dir", str(pids)], env)
    first.wait_line("READY")
    assert (pids / "task-worker-nightly.pid").read_text() == f"{first.pid}\n"

    second = start_worker(["--single-id", "nightly", "--pid-dir", str(pids)], env)
    assert second.wait(15) == 0
    assert second.lines == []
    assert second.errors == [f"pheanq task-worker: a worker with --single-id nightly already runs (pid {first.pid}); "
                             "exiting"]
    other = start_worker(["--single-id", "hourly", "--pid-dir", str(pids)], env)
    other.wait_line("READY")

    first.signal(signal.SIGKILL)
    first.wait()
    again = start_worker(["--single-id", "nightly", "--pid-dir", str(pids)], env)
    again.wait_line("READY")
    wait_for(lambda: (pids / "task-worker-nightly.pid").read_text() == f"{again.pid}\n", 5, "the new pid")


@pytest.mark.parametrize(("args", "names"), [
    (["--single-id", "a/b"], "--single-id 'a/b' is not valid"),
    (["--pid-dir", "/tmp"], "--pid-dir needs --single-id"),
    (["--stop-when-empty", "--stop-when-drained"], "--stop-when-empty and --stop-when-drained exclude each other"),
    (["--cycles-limit", "0"], "--cycles-limit"),
    (["--cycle-delay", "-1"], "--cycle-delay"),
    (["--time-limit", "0"], "--time-limit"),
    (["--memory-limit", "x"], "--memory-limit"),
])
def test_a_bad_limit_is_one_line_and_exit_code_2(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, args: list[str], names: str,
) -> None:
    result = pheanq(["task-worker", *args], make_env(sqlite_url), tmp_path)
    assert result.returncode == 2, result.stderr
    assert names in one_error_line(result)
