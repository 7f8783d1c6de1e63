"""Python tasks run by a real `pheanq task-worker --import pytasks`: results, exceptions, retries, stops.

Each test starts real worker processes (they import tests/pytasks.py, found on PYTHONPATH) against a real
beanstalkd and database, queues `@task` calls through the service, and checks the rows, the logs, the
worker's state lines and its child processes. Results, exceptions and retries run on every configured
database; the rest on SQLite. Signals, crashes and limits of the child: tests/test_python_child.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytasks
import pytest
from support import WorkerProcess, drain, log_of, one_error_line, pheanq, python_env, wait_for

from pheanq import Status
from pheanq.limits import MAX_RESULT_BYTES
from pheanq.ops.buried import list_buried
from pheanq.producer.service import TaskQueueService

TUBE = "pheanq"  # the default tube
MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def test_a_returned_json_value_is_the_task_s_result_in_the_service_and_in_pheanq_show(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(db_url)
    task_id = pytasks.echo.options(service=service).queue(1, "two", [3.5, None], flag=True, name="ünï")
    env = python_env(make_env, db_url)
    drain(start_worker, env)

    expected = {"args": [1, "two", [3.5, None]], "kwargs": {"flag": True, "name": "ünï"}, "task": task_id}
    result = service.result(task_id)
    assert isinstance(result, dict)
    assert {key: result[key] for key in expected} == expected
    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.attempts) == (Status.DONE, 0, 1)

    shown = pheanq(["show", str(task_id), "--json"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == result
    text = pheanq(["show", str(task_id)], env, tmp_path)
    assert text.returncode == 0, text.stderr
    result_lines = [line for line in text.stdout.splitlines() if line.startswith("  result ")]
    assert len(result_lines) == 1
    assert json.loads(result_lines[0].removeprefix("  result").strip()) == result


def test_a_return_value_that_is_not_json_is_not_stored_and_the_task_is_done_with_a_log_saying_so(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    task_id = pytasks.not_json.options(service=service).queue()
    drain(start_worker, python_env(make_env, sqlite_url))

    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.result) == (Status.DONE, 0, None)
    assert service.result(task_id) is None
    assert "the return value is not JSON (set: " in log_of(service, task_id)
    assert "it is not stored" in log_of(service, task_id)


def test_a_return_value_over_max_result_bytes_is_not_stored_and_the_log_says_so(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    too_big = pytasks.big_result.options(service=service).queue(MAX_RESULT_BYTES)  # + 2 quotes as JSON
    just_fits = pytasks.big_result.options(service=service).queue(MAX_RESULT_BYTES - 2)
    drain(start_worker, python_env(make_env, sqlite_url))

    row = service.find_task(too_big)
    assert (row.status, row.result) == (Status.DONE, None)
    assert f"the return value is {MAX_RESULT_BYTES + 2} bytes of JSON, more than {MAX_RESULT_BYTES}; it is not " \
           "stored" in log_of(service, too_big)
    assert service.result(just_fits) == "x" * (MAX_RESULT_BYTES - 2)


def test_an_async_task_is_run_to_its_result(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    task_id = pytasks.async_add.options(service=service).queue(20, 22)
    drain(start_worker, python_env(make_env, sqlite_url))
    assert service.result(task_id) == 42


def test_a_task_that_queues_another_task_sees_both_done(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """The child queues through the default service of its environment (the worker's database and beanstalkd),
    never through the worker's own connections, which it forgot at the fork."""
    service = make_service(sqlite_url)
    first = pytasks.queue_another.options(service=service).queue(5)
    drain(start_worker, python_env(make_env, sqlite_url))

    second = service.result(first)
    assert isinstance(second, int) and second != first
    assert service.find_task(second).command == "py:pytasks.add"
    assert service.result(second) == 6
    assert service.status_of(first) is Status.DONE


# --- exceptions and retries, on every database -------------------------------------------------------------------

def test_a_raising_task_fails_with_exit_code_1_its_exception_traceback_output_and_logging_in_its_log(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(db_url)
    # A queue call's retry overrides the decorator's three attempts: one attempt, one log entry.
    task_id = pytasks.fail.options(service=service, retry=None).queue("boom")
    drain(start_worker, python_env(make_env, db_url))

    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.attempts, row.result) == (Status.FAILED, 1, 1, None)
    log = log_of(service, task_id)
    assert re.search(r"^--- attempt 1 on \S+: failed after [0-9.]+s: ValueError: bad value boom$", log, re.M), log
    assert "about to fail\n" in log           # what it printed
    assert "logged before failing" in log     # what it logged
    traceback = log[log.index("Traceback (most recent call last):"):]
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', traceback, re.M)
    assert frames and frames[0] == (pytasks.__file__, "fail"), traceback  # the task's own frame first
    assert "python_child.py" not in traceback
    assert traceback.rstrip("\n").endswith("ValueError: bad value boom")


def test_the_traceback_of_a_raising_async_task_starts_at_the_task_s_own_frame(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """As for a plain function: what the log shows first is the task's code, not how pheanq (and asyncio) got
    there."""
    service = make_service(sqlite_url)
    task_id = pytasks.async_fail.options(service=service).queue("async boom")
    drain(start_worker, python_env(make_env, sqlite_url))

    row = service.find_task(task_id)
    assert (row.status, row.exit_code) == (Status.FAILED, 1)
    log = log_of(service, task_id)
    traceback = log[log.index("Traceback (most recent call last):"):]
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', traceback, re.M)
    assert frames and frames[0] == (pytasks.__file__, "async_fail"), traceback
    assert "python_child.py" not in traceback and "asyncio" not in traceback, traceback


def test_the_decorator_s_retry_policy_runs_a_failing_task_three_times(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(db_url)
    marker = tmp_path / "attempts"
    task_id = pytasks.fail.options(service=service).queue("x", str(marker))
    drain(start_worker, python_env(make_env, db_url))

    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.attempts) == (Status.FAILED, 1, 3)
    assert marker.read_text() == "1\n2\n3\n"
    log = log_of(service, task_id)
    assert "--- retrying in 0s (attempt 2 of 3)" in log and "--- retrying in 0s (attempt 3 of 3)" in log, log
    assert log.count("ValueError: bad value x") >= 3


def test_an_exception_named_in_non_retryable_errors_ends_the_task_after_one_attempt(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(db_url)
    marker = tmp_path / "attempts"
    task_id = pytasks.fail.options(service=service).queue("permanent", str(marker))
    drain(start_worker, python_env(make_env, db_url))

    row = service.find_task(task_id)
    assert (row.status, row.exit_code, row.attempts) == (Status.FAILED, 1, 1)
    assert marker.read_text() == "1\n"
    log = log_of(service, task_id)
    assert "--- not retried: pytasks.Permanent is not retried (attempt 1 of 3)" in log, log
    assert "Permanent: this cannot work" in log


# --- what the worker imports ------------------------------------------------------------------------------------

def test_a_job_for_a_python_task_the_worker_did_not_import_is_buried_naming_it_and_the_task_stays_new(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    (tmp_path / "othertasks.py").write_text("from pheanq import task\n\n\n@task\ndef noop() -> None:\n    pass\n")
    service = make_service(sqlite_url)
    task_id = pytasks.add.options(service=service).queue(1, 2)
    worker = drain(start_worker, python_env(make_env, sqlite_url), "othertasks")

    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.NEW, 0)
    buried = list_buried(service.dispatch, TUBE)
    assert [job.job_id for job in buried.jobs] == [row.job_id]
    reason = buried.jobs[0].reason or ""
    assert "Python task 'pytasks.add' is not registered on this worker" in reason, reason
    assert "othertasks.noop" in reason
    assert worker.lines in (["READY"], ["READY", "READY"])  # it never said BUSY


def test_a_module_that_cannot_be_imported_stops_the_worker_with_exit_2_and_one_line_naming_it(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    env = python_env(make_env, sqlite_url)
    missing = pheanq(["task-worker", "--import", "no_such_module"], env, tmp_path)
    assert missing.returncode == 2
    assert "'no_such_module'" in one_error_line(missing)
    assert missing.stdout == ""

    (tmp_path / "broken_app.py").write_text("raise RuntimeError('the application is broken')\n")
    broken = pheanq(["task-worker", "--import", "broken_app"], env, tmp_path)
    assert broken.returncode == 2
    line = one_error_line(broken)
    assert "'broken_app'" in line and "RuntimeError: the application is broken" in line, line
    assert broken.stdout == ""


# --- the child: reuse, hooks, state lines -----------------------------------------------------------------------

def test_one_child_runs_the_tasks_of_a_worker_says_child_and_exited_and_ran_the_hooks(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    hooks = tmp_path / "hooks"
    service = make_service(sqlite_url)
    first, second = (pytasks.pid.options(service=service).queue() for _ in range(2))
    worker = drain(start_worker, python_env(make_env, sqlite_url, PYTASKS_HOOKS=str(hooks)))

    child = service.result(first)
    assert isinstance(child, int) and child != worker.pid
    assert service.result(second) == child
    assert worker.stdout_lines == ["READY", f"BUSY {first}", f"CHILD {child}", "EXITED 0",
                                   "READY", f"BUSY {second}", f"CHILD {child}", "EXITED 0", "READY"]
    assert hooks.read_text().splitlines() == [f"worker {worker.pid}", f"child {child}"]


def test_max_tasks_per_child_1_runs_each_task_in_a_fresh_child(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    hooks = tmp_path / "hooks"
    service = make_service(sqlite_url)
    first, second = (pytasks.pid.options(service=service).queue() for _ in range(2))
    worker = drain(start_worker, python_env(make_env, sqlite_url, PYTASKS_HOOKS=str(hooks),
                                            PHEANQ_MAX_TASKS_PER_CHILD="1"))

    children = [service.result(first), service.result(second)]
    assert children[0] != children[1]
    assert [line for line in worker.stdout_lines if line.startswith("CHILD ")] == [f"CHILD {pid}" for pid in children]
    started = hooks.read_text().splitlines()
    assert started[0] == f"worker {worker.pid}"
    assert {f"child {pid}" for pid in children} <= set(started[1:])  # each child ran on_child_start


def test_progress_moves_on_the_row_while_the_task_runs_and_ends_at_its_last_value(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    task_id = pytasks.progress.options(service=service).queue(5, 0.3)
    env = python_env(make_env, sqlite_url)
    worker = start_worker(["--import", "pytasks", "--stop-when-drained"], env)

    seen_running: list[dict[str, object]] = []

    def ended() -> bool:
        row = service.find_task(task_id)
        if row.status is Status.WORKING and row.progress is not None:
            value = json.loads(row.progress)
            if value not in seen_running:
                seen_running.append(value)
        return row.status is Status.DONE

    wait_for(ended, 20, "the progress task to end", interval=0.05)
    assert worker.wait(30) == 0, worker.log
    assert seen_running, "no progress was seen on the row while the task ran"
    assert any(isinstance(value["done"], int) and value["done"] < 5 for value in seen_running), seen_running
    row = service.find_task(task_id)
    assert row.progress is not None
    assert json.loads(row.progress) == {"done": 5, "total": 5, "message": "step 5"}
    assert service.result(task_id) == 5
    shown = pheanq(["show", str(task_id)], env, tmp_path)
    assert "  progress     5 of 5 (100%): step 5" in shown.stdout.splitlines(), shown.stdout


def test_status_and_batch_show_list_the_progress_of_running_tasks(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    service = make_service(sqlite_url)
    with service.create_batch("progressing") as batch:
        task_id = batch.add(pytasks.progress_held.describe(40, str(tmp_path / "gate")))
    env = python_env(make_env, sqlite_url)
    worker = start_worker(["--import", "pytasks", "--stop-when-drained"], env)
    wait_for(lambda: service.find_task(task_id).progress is not None, 20, "the task's first progress on its row")
    status = pheanq(["status"], env, tmp_path).stdout
    assert re.search(rf"^task {task_id} pytasks\.progress_held \(pheanq\): \d+ of 40 \(\d+%\): step \d+$", status,
                     re.MULTILINE), status
    shown = pheanq(["batch", "show", str(batch.id)], env, tmp_path).stdout
    assert re.search(rf"^  task {task_id}: \d+ of 40 \(\d+%\): step \d+$", shown, re.MULTILINE), shown
    running = json.loads(pheanq(["batch", "show", str(batch.id), "--json"], env, tmp_path).stdout)["running"]
    assert running[str(task_id)]["total"] == 40, running
    (tmp_path / "gate").touch()
    assert worker.wait(30) == 0, worker.log
    assert service.batch(batch.id).progress().running == {}, "a finished batch runs nothing"


@pytest.mark.parametrize("setting", ["env", "toml"])
def test_max_tasks_per_child_is_read_from_the_environment_and_from_the_python_table(
    setting: str, sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
    start_worker: StartWorker,
) -> None:
    if setting == "toml":
        (tmp_path / "pheanq.toml").write_text("[python]\nmax_tasks_per_child = 2\n")
        env = python_env(make_env, sqlite_url)
    else:
        env = python_env(make_env, sqlite_url, PHEANQ_MAX_TASKS_PER_CHILD="2")
    service = make_service(sqlite_url)
    ids = [pytasks.pid.options(service=service).queue() for _ in range(3)]
    drain(start_worker, env)
    children = [service.result(task_id) for task_id in ids]
    assert children[0] == children[1] != children[2]
