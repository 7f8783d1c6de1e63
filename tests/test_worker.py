"""`pheanq task-worker` as a real process: what it records, how it treats bad jobs, its limits and signals.

Each test starts real worker processes against a real beanstalkd and database, queues tasks through the
service (or puts raw bodies straight into the tube), and checks the rows, the tube's stats, the child
processes (psutil) and the worker's stdout state lines, which must only ever be ``READY``, ``BUSY <id>``,
``CHILD <pid>`` and ``EXITED <code>``.
Success, failure, SIGTERM and unusual output bytes run on every configured database; the rest on SQLite.
"""

from __future__ import annotations

import re
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import Beanstalkd, WorkerProcess, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.beanstalkd import BeanstalkdConnection
from pheanq.body import encode_body
from pheanq.producer.service import TaskQueueService

TUBE = "pheanq"  # the default tube
STATE_LINE = re.compile(r"^(READY|BUSY [1-9][0-9]*|CHILD [1-9][0-9]*|EXITED -?[0-9]+|RAISED [A-Za-z_.0-9]+)$")

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def connection(beanstalkd: Beanstalkd) -> Iterator[BeanstalkdConnection]:
    """A connection to this test's beanstalkd, to look at stats and to put raw job bodies."""
    client = BeanstalkdConnection(beanstalkd.address)
    yield client
    client.close()


def _script(tmp_path: Path, name: str, code: str, *args: str) -> list[str]:
    """A tiny Python script in the test's directory; returns the argv prefix that runs it."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return [sys.executable, str(path), *args]


def _record_command(tmp_path: Path, runs: Path) -> list[str]:
    """A command that appends `<task id> <arguments>` to `runs` and exits 0."""
    return _script(tmp_path, "record", """
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(" ".join([os.environ["PHEANQ_TASK_ID"], *sys.argv[2:]]) + "\\n")
    """, str(runs))


def _stats(connection: BeanstalkdConnection) -> dict[str, Any]:
    return connection.tube_stats(TUBE) or {}


def _status_is(service: TaskQueueService, task_id: int, status: Status) -> Callable[[], bool]:
    return lambda: service.status_of(task_id) is status


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _assert_state_lines(worker: WorkerProcess) -> None:
    assert worker.lines, "the worker printed no state line"
    bad = [line for line in worker.stdout_lines if not STATE_LINE.match(line)]
    assert not bad, f"stdout carries more than state lines: {bad}"


# --- round trips on every database ------------------------------------------------------------------------------

def test_a_failing_command_is_failed_with_its_exit_code_and_output_in_the_log(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    write_config(tmp_path, commands={"fail": [sys.executable, "-c",
                                              "import sys; print('went wrong here'); sys.exit(3)"]})
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("fail"))

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.FAILED
    assert row.exit_code == 3
    assert row.attempts == 1
    assert row.log is not None
    assert "exit code 3" in row.log
    assert "went wrong here" in row.log  # log_worker_output_on_failure is on by default
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY"]


def test_a_successful_task_is_done_and_by_default_its_output_is_not_kept(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    write_config(tmp_path, commands={"succeed": [sys.executable, "-c", "print('quiet success')"]})
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("succeed"))

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.DONE
    assert row.exit_code == 0
    assert row.log is not None and "done" in row.log
    assert "quiet success" not in row.log
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY"]


def test_sigterm_on_a_busy_worker_finishes_the_task_takes_no_other_and_exits_0(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    started = tmp_path / "started"
    finished = tmp_path / "finished"
    slow = _script(tmp_path, "slow", """
        import os, sys, time
        open(sys.argv[1], "a").write(os.environ["PHEANQ_TASK_ID"] + "\\n")
        time.sleep(1.2)  # the task's work: long enough to signal the worker while it runs
        open(sys.argv[2], "a").write(os.environ["PHEANQ_TASK_ID"] + "\\n")
    """, str(started), str(finished))
    write_config(tmp_path, commands={"slow": slow})
    service = make_service(db_url)
    first, second, third = (service.queue_task(TaskDescription("slow")) for _ in range(3))

    worker = start_worker([], make_env(db_url))
    worker.wait_line(f"BUSY {first}")
    wait_for(started.exists, 10, "the first task's command to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.log

    assert finished.read_text() == f"{first}\n"  # the running task was let finish
    assert started.read_text() == f"{first}\n"   # and no other one was started
    row = service.find_task(first)
    assert row.status is Status.DONE and row.exit_code == 0
    assert service.status_of(second) is Status.NEW
    assert service.status_of(third) is Status.NEW
    assert _stats(connection)["current-jobs-ready"] == 2
    assert worker.lines == ["READY", f"BUSY {first}", "READY"]


# --- what gets logged -------------------------------------------------------------------------------------------

def test_output_logging_follows_the_on_success_and_on_failure_settings(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    write_config(tmp_path, commands={
        "succeed": [sys.executable, "-c", "print('kept on success')"],
        "fail": [sys.executable, "-c", "import sys; print('dropped on failure'); sys.exit(1)"],
    }, log_worker_output_on_success=True, log_worker_output_on_failure=False)
    service = make_service(sqlite_url)
    done_id = service.queue_task(TaskDescription("succeed"))
    failed_id = service.queue_task(TaskDescription("fail"))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log

    done = service.find_task(done_id)
    failed = service.find_task(failed_id)
    assert done.status is Status.DONE and done.log is not None
    assert "kept on success" in done.log
    assert failed.status is Status.FAILED and failed.log is not None
    assert "exit code 1" in failed.log
    assert "dropped on failure" not in failed.log


def test_a_child_printing_50_mb_gets_a_bounded_log_and_the_worker_runs_the_next_task(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    max_log = 10_000
    flood = _script(tmp_path, "flood", """
        import sys
        out = sys.stdout.buffer
        block = b"y" * 1048576
        out.write(b"FIRST\\n")
        for _ in range(50):
            out.write(block)
        out.write(b"\\nLAST\\n")
        out.flush()
        sys.exit(int(sys.argv[1]))
    """)
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"flood": flood, "record": _record_command(tmp_path, runs)},
                 max_log_bytes=max_log, log_worker_output_on_success=True)
    service = make_service(sqlite_url)
    failing = service.queue_task(TaskDescription("flood", [2]))
    passing = service.queue_task(TaskDescription("flood", [0]))
    after = service.queue_task(TaskDescription("record", ["after"]))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait(60) == 0, worker.log

    printed = 50 * 1048576 + len(b"FIRST\n") + len(b"\nLAST\n")
    marker = f"\n[... pheanq cut {printed - max_log} bytes of output here ...]\n"
    for task_id, status, exit_code in ((failing, Status.FAILED, 2), (passing, Status.DONE, 0)):
        row = service.find_task(task_id)
        assert row.status is status and row.exit_code == exit_code
        assert row.log is not None
        header, output = row.log.split("\n", 1)
        assert header.startswith("--- attempt 1 on ")
        assert output.startswith("FIRST\n") and output.endswith("\nLAST\n")
        assert marker in output
        assert len(output) == max_log + len(marker)
    assert service.status_of(after) is Status.DONE
    assert runs.read_text() == f"{after} after\n"
    assert worker.lines == ["READY", f"BUSY {failing}", "READY", f"BUSY {passing}", "READY", f"BUSY {after}",
                            "READY"]


def test_output_with_nul_bytes_invalid_utf8_and_emoji_is_logged_on_every_database(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    noisy = _script(tmp_path, "noisy", """
        import sys
        sys.stdout.buffer.write(b"nul:\\x00: bad:\\xff\\xfe: ")
        sys.stdout.buffer.write("text:héllo ✓ 🎉\\n".encode())
        sys.exit(5)
    """)
    write_config(tmp_path, commands={"noisy": noisy})
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("noisy"))

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.FAILED and row.exit_code == 5
    assert row.log is not None
    assert "text:héllo ✓ 🎉\n" in row.log
    assert "bad:\ufffd\ufffd:" in row.log
    assert "nul:\ufffd:" in row.log and "\x00" not in row.log


def test_an_unregistered_command_is_buried_unrun_and_runs_once_registered_and_kicked(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    write_config(tmp_path, commands={"known": [sys.executable, "-c", "pass"]})
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("nobody-registered-this"))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.NEW, 0)  # kept, never started
    assert "'nobody-registered-this' is not registered on this worker (known: example-task-worker, known)" \
        in worker.log
    assert worker.lines == ["READY", "READY"] or worker.lines == ["READY"]
    assert (connection.tube_stats(TUBE) or {})["current-jobs-buried"] == 1

    write_config(tmp_path, commands={"nobody-registered-this": [sys.executable, "-c", "pass"]})
    assert row.job_id is not None and connection.kick_job(row.job_id)
    again = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert again.wait() == 0, again.log
    assert (service.find_task(task_id).status, service.find_task(task_id).attempts) == (Status.DONE, 1)


def test_a_registered_program_that_does_not_exist_fails_with_127_and_a_log_naming_it(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    program = str(tmp_path / "no-such-program")
    write_config(tmp_path, commands={"ghost": [program, "--flag"]})
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("ghost"))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.FAILED and row.exit_code == 127
    assert row.log is not None and "exit code 127" in row.log and program in row.log

# --- leases, signals, duplicates and bad bodies -----------------------------------------------------------------

def test_a_task_longer_than_its_ttr_runs_exactly_once_with_two_workers(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    runs = tmp_path / "runs.txt"
    long = _script(tmp_path, "long", """
        import os, sys, time
        open(sys.argv[1], "a").write(f"{os.getpid()}\\n")
        time.sleep(4.5)  # the task's work: longer than its TTR, which is what the test is about
    """, str(runs))
    write_config(tmp_path, commands={"long": long})
    env = make_env(sqlite_url)
    workers = [start_worker([], env), start_worker([], env)]
    for worker in workers:
        worker.wait_line("READY")
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("long"), ttr=2)

    wait_for(_status_is(service, task_id, Status.DONE), 20, "the long task to be done", interval=0.1)

    assert len(runs.read_text().splitlines()) == 1
    row = service.find_task(task_id)
    assert row.attempts == 1 and row.exit_code == 0
    assert sum(worker.lines.count(f"BUSY {task_id}") for worker in workers) == 1
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(15) == 0, worker.log
        _assert_state_lines(worker)


def test_sigint_stops_the_child_at_once_and_hands_the_task_back_never_done(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    pidfile = tmp_path / "child.pid"
    second_run = tmp_path / "second-run"
    command = _script(tmp_path, "sleepy", """
        import os, sys, time
        pidfile, second_run = sys.argv[1], sys.argv[2]
        if os.path.exists(pidfile):
            open(second_run, "w").write("ran again\\n")
            sys.exit(0)
        open(pidfile + ".tmp", "w").write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        time.sleep(60)  # a task that runs until the test stops it
    """, str(pidfile), str(second_run))
    write_config(tmp_path, commands={"sleepy": command})
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("sleepy"))

    worker = start_worker([], make_env(sqlite_url))
    worker.wait_line(f"BUSY {task_id}")
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, "the child's pid file"))
    worker.signal(signal.SIGINT)
    wait_for(lambda: _gone(child), 2, "the child to be stopped at once")
    assert worker.wait(15) == 130, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.NEW
    assert row.attempts == 1 and row.worker is None
    assert row.log is not None and "interrupted" in row.log and "SIGINT" in row.log
    stats = _stats(connection)
    assert (stats["current-jobs-ready"], stats["current-jobs-reserved"]) == (1, 0)
    assert not second_run.exists()
    _assert_state_lines(worker)

    again = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert again.wait() == 0, again.log
    row = service.find_task(task_id)
    assert row.status is Status.DONE and row.attempts == 2
    assert second_run.read_text() == "ran again\n"


def test_sigterm_on_an_idle_worker_takes_no_task_queued_after_the_signal(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url)
    service.beanstalkd.tubes()  # connect now, so the put below follows the signal closely
    worker = start_worker([], make_env(sqlite_url))
    worker.wait_line("READY")
    wait_for(lambda: "watching" in worker.log, 10, "the worker to wait for jobs")
    worker.signal(signal.SIGTERM)
    task_id = service.queue_task(TaskDescription("record", ["too late"]))
    assert worker.wait(15) == 0, worker.log

    assert not runs.exists()
    row = service.find_task(task_id)
    assert row.status is Status.NEW
    assert row.log is None or "not started" in row.log  # None when the job came after the last reserve
    assert _stats(connection)["current-jobs-ready"] == 1
    assert worker.lines == ["READY"]


def test_a_duplicate_job_for_a_finished_task_is_deleted_without_running(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url)
    description = TaskDescription("record", ["once"])
    task_id = service.queue_task(description)
    worker = start_worker([], make_env(sqlite_url))
    wait_for(_status_is(service, task_id, Status.DONE), 10, "the task to be done", interval=0.05)
    deletes_before = _stats(connection)["cmd-delete"]

    duplicate = connection.put(TUBE, encode_body(task_id, description, nonce=service.find_task(task_id).nonce),
                               1024, 0, 60)
    wait_for(lambda: _stats(connection)["cmd-delete"] == deletes_before + 1, 10, "the duplicate to be deleted")
    stats = _stats(connection)
    assert (stats["current-jobs-ready"], stats["current-jobs-reserved"], stats["current-jobs-buried"]) == (0, 0, 0)
    wait_for(lambda: f"deleting job {duplicate} without running it" in worker.log, 5, "the deletion in the log")

    later = service.queue_task(TaskDescription("record", ["later"]))
    wait_for(_status_is(service, later, Status.DONE), 10, "the next task to be done", interval=0.05)
    assert runs.read_text() == f"{task_id} once\n{later} later\n"
    assert service.find_task(task_id).attempts == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.log
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY", f"BUSY {later}", "READY"]


def test_malformed_bodies_and_a_missing_row_are_buried_and_the_worker_goes_on(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    bad_bodies = [
        b"this is not JSON",
        b'{"some": "other", "shape": [1, 2]}',
        b"[1, 2, 3]",
        b"\x00\xff\xfe\x80binary garbage\x9c",
        encode_body(987654, TaskDescription("record", ["ghost"])),  # no such row
    ]
    bad_jobs = [connection.put(TUBE, body, 0, 0, 60) for body in bad_bodies]  # priority 0: reserved first
    service = make_service(sqlite_url)
    good = service.queue_task(TaskDescription("record", ["good"]))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log

    stats = _stats(connection)
    assert stats["current-jobs-buried"] == len(bad_bodies)
    assert (stats["current-jobs-ready"], stats["current-jobs-reserved"]) == (0, 0)
    for job_id in bad_jobs:
        assert f"burying job {job_id}" in worker.log
    assert service.status_of(good) is Status.DONE
    assert runs.read_text() == f"{good} good\n"
    assert worker.lines == ["READY", f"BUSY {good}", "READY"]


# --- limits and outages -----------------------------------------------------------------------------------------

def test_max_tasks_runs_exactly_n_tasks_then_exits_0(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    connection: BeanstalkdConnection,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url)
    ids = [service.queue_task(TaskDescription("record", [n])) for n in range(3)]

    worker = start_worker(["--max-tasks", "2"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log

    assert worker.lines == ["READY", f"BUSY {ids[0]}", "READY", f"BUSY {ids[1]}", "READY"]
    assert runs.read_text() == f"{ids[0]} 0\n{ids[1]} 1\n"
    assert service.status_of(ids[2]) is Status.NEW
    assert _stats(connection)["current-jobs-ready"] == 1


def test_stop_when_empty_exits_0_at_once_on_an_empty_tube_and_before_max_tasks(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    env = make_env(sqlite_url)
    empty = start_worker(["--stop-when-empty"], env)
    service = make_service(sqlite_url)
    assert empty.wait() == 0, empty.log
    assert empty.lines == ["READY"]

    ids = [service.queue_task(TaskDescription("record", [n])) for n in range(2)]
    both = start_worker(["--stop-when-empty", "--max-tasks", "5"], env)
    assert both.wait() == 0, both.log
    assert both.lines == ["READY", f"BUSY {ids[0]}", "READY", f"BUSY {ids[1]}", "READY"]
    assert all(service.status_of(task_id) is Status.DONE for task_id in ids)


def test_max_tasks_below_one_is_a_usage_error_with_exit_code_2(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    result = pheanq(["task-worker", "--max-tasks", "0"], make_env(sqlite_url), tmp_path, timeout=30)
    assert result.returncode == 2
    assert "--max-tasks" in result.stderr
    assert result.stdout == ""


def test_an_idle_worker_survives_beanstalkd_going_away_and_runs_tasks_once_it_is_back(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    worker = start_worker([], make_env(sqlite_url))
    worker.wait_line("READY")
    wait_for(lambda: "watching" in worker.log, 10, "the worker to start watching its tube")

    beanstalkd.stop()
    wait_for(lambda: "retrying in" in worker.log, 10, f"the worker to log a retry (log: {worker.log[-500:]})")
    assert worker.process.poll() is None
    beanstalkd.start()

    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("record", ["back"]))
    wait_for(_status_is(service, task_id, Status.DONE), 20, "the task queued after the restart", interval=0.1)
    assert runs.read_text() == f"{task_id} back\n"
    assert "unreachable" in worker.log
    assert worker.process.poll() is None
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.log
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY"]


def test_beanstalkd_going_away_while_a_task_runs_leaves_the_task_to_finish_under_its_lease(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    go = tmp_path / "go"
    runs = tmp_path / "runs.txt"
    waiter = _script(tmp_path, "waiter", """
        import os, sys, time
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.02)  # a task that runs until the test lets it finish
        open(sys.argv[2], "a").write("finished\\n")
    """, str(go), str(runs))
    write_config(tmp_path, commands={"waiter": waiter, "record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("waiter"), ttr=1)
    worker = start_worker([], make_env(sqlite_url))
    worker.wait_line(f"BUSY {task_id}")

    beanstalkd.stop()  # in-memory: the job is gone with it; the row, and the worker's lease on it, remain
    wait_for(lambda: "lost the reservation" in worker.log, 10, "the worker to notice")
    go.touch()
    wait_for(_status_is(service, task_id, Status.DONE), 10, "the task to finish", interval=0.05)
    assert runs.read_text() == "finished\n"
    assert service.find_task(task_id).attempts == 1
    wait_for(lambda: "retrying in" in worker.log, 10, "the worker to retry beanstalkd")
    assert worker.process.poll() is None, worker.log
    beanstalkd.start()

    later = make_service(sqlite_url).queue_task(TaskDescription("record", ["later"]))  # a fresh connection
    wait_for(_status_is(service, later, Status.DONE), 20, "a task queued after the restart", interval=0.1)
    assert runs.read_text() == f"finished\n{later} later\n"
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.log
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY", f"BUSY {later}", "READY"]
