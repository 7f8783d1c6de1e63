"""Review of Python tasks: each test proves one bug found in the worker's Python children (or a guarantee that was
checked), against real `pheanq task-worker` processes, a real beanstalkd and real databases."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pyreview
import pytest
from support import WorkerProcess, drain, python_env, wait_for

from pheanq import Status
from pheanq.dispatch import WorkPackage
from pheanq.errors import InvalidInput
from pheanq.producer.service import TaskQueueService
from pheanq.worker.python_pool import END_ORDER, PythonPool

FINAL = (Status.DONE, Status.FAILED, Status.CANCELLED)


def _run_all(service: TaskQueueService, make_env: Callable[..., dict[str, str]],
             start_worker: Callable[..., WorkerProcess], url: str, ids: list[int], **env: str) -> WorkerProcess:
    worker = drain(start_worker, python_env(make_env, url, **env), "pyreview", timeout=120)
    wait_for(lambda: all(service.status_of(task_id) in FINAL for task_id in ids), 10, "the tasks ended")
    return worker


def test_a_task_that_raised_is_never_recorded_done_when_its_child_exits_right_after_its_outcome(
    sqlite_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """With max_tasks_per_child=1 a child exits 0 right after its outcome. A worker that saw the exit before it had
    read the outcome (it was busy with the task's progress) judged the task by the exit code alone: `done`, no
    result, for a task that raised; and it said `EXITED 0` after the child's own `EXITED 1`."""
    service = make_service(sqlite_url)
    ids = [pyreview.progress_then_raise.options(service=service).queue(300) for _ in range(60)]
    worker = _run_all(service, make_env, start_worker, sqlite_url, ids, PHEANQ_MAX_TASKS_PER_CHILD="1")
    statuses = [service.status_of(task_id) for task_id in ids]
    assert statuses == [Status.FAILED] * len(ids), [service.find_task(t).log for t in ids
                                                    if service.status_of(t) is not Status.FAILED][:1]
    assert "EXITED 0" not in worker.stdout_lines


def test_a_task_that_forks_a_process_ending_in_sys_exit_gets_its_own_outcome_and_the_next_task_its_own(
    sqlite_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A task's own fork returned into pheanq's child code (sys.exit(0) in it): that process reported an outcome
    (and `EXITED 0`) of its own. The worker took it for the task's, and the task's real outcome for the next
    task's: each task after it got the outcome of the one before."""
    service = make_service(sqlite_url)
    forked = pyreview.fork_and_exit.options(service=service).queue()
    ids = [pyreview.whoami.options(service=service).queue() for _ in range(4)]
    worker = _run_all(service, make_env, start_worker, sqlite_url, [forked, *ids])
    assert str(service.result(forked)).startswith("parent"), service.find_task(forked).log
    assert [service.result(task_id) for task_id in ids] == ids
    assert worker.stdout_lines.count("EXITED 0") == 5, worker.stdout_lines


@pytest.mark.parametrize("kind", ["control", "huge", "surrogate"])
def test_a_task_s_progress_that_its_row_cannot_hold_never_takes_its_worker_down(
    db_url: str, kind: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """progress() accepted values whose JSON the row's progress column (600 characters) or its database cannot take
    (a 200-character message of control characters is 1,200 characters of JSON; a whole number of 700 digits; a
    lone surrogate, as a file name read with surrogateescape has): the worker's write failed with an error it did
    not expect, and the worker died holding the task. Now the message is cut to fit (a surrogate shown as its
    escape), and a number larger than a row can hold is refused in the task, as a negative one is."""
    service = make_service(db_url)
    task_id = pyreview.odd_progress.options(service=service).queue(kind)
    _run_all(service, make_env, start_worker, db_url, [task_id])
    if kind == "huge":
        row = service.find_task(task_id)
        assert row.status is Status.FAILED and "progress: done must be a whole number" in (row.log or ""), row.log
    else:
        assert service.result(task_id) == kind, service.find_task(task_id).log


def test_a_task_returning_a_surrogateescaped_name_is_done_without_its_child_dying(
    db_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A return value holding a lone surrogate (a non-UTF-8 file name from os.listdir) made the child's result check
    fail outside its try: the child died (exit code 1) after the function completed, and the task was `failed`
    (and retried) instead of `done` with a note."""
    service = make_service(db_url)
    task_id = pyreview.surrogate_result.options(service=service).queue()
    _run_all(service, make_env, start_worker, db_url, [task_id])
    row = service.find_task(task_id)
    assert row.status is Status.DONE, row.log
    assert "not stored" in (row.log or ""), row.log


def test_a_task_raising_with_a_surrogateescaped_name_fails_and_its_worker_lives(
    db_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """An exception whose message holds a lone surrogate (a non-UTF-8 file name put in an f-string) reached the
    worker's log text as is: no database can store it, and the worker died recording the failure."""
    service = make_service(db_url)
    task_id = pyreview.surrogate_error.options(service=service).queue()
    _run_all(service, make_env, start_worker, db_url, [task_id])
    row = service.find_task(task_id)
    assert row.status is Status.FAILED, row.log
    assert "ValueError: cannot process caf" in (row.log or ""), row.log


def test_a_task_whose_decorator_returns_a_coroutine_runs_it(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    """An async function under a sync decorator (functools.wraps) returns a coroutine: the child never ran it, and
    recorded the task `done` (its value "not JSON") though none of its body ran."""
    service = make_service(sqlite_url)
    marker = tmp_path / "ran"
    task_id = pyreview.wrapped_coroutine.options(service=service).queue(str(marker))
    _run_all(service, make_env, start_worker, sqlite_url, [task_id])
    assert service.result(task_id) == "ran", service.find_task(task_id).log
    assert marker.read_text() == "ran"


def test_a_child_that_died_between_tasks_is_replaced_before_the_next_task_is_judged_by_its_death(
    sqlite_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A child that died while it waited for its next task (an alarm a task left armed, the OOM killer) was handed
    that task all the same: the task never started, yet was recorded `failed` ("its child process died (killed by
    signal 14) before the function returned"); had the child exited 0, `done` without running."""
    service = make_service(sqlite_url)
    worker = start_worker(["--import", "pyreview"], python_env(make_env, sqlite_url))
    first = pyreview.leave_an_alarm.options(service=service).queue(1)
    assert service.result(first, wait=30) == "armed"
    # The pause is what is tested: longer than the 1 s alarm the first task left, so it fires in the idle child.
    time.sleep(2)
    second = pyreview.whoami.options(service=service).queue()
    wait_for(lambda: service.status_of(second) in FINAL, 30, "the second task ended")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log
    assert service.result(second) == second, service.find_task(second).log


def test_a_task_that_closes_its_stdout_and_stderr_leaves_the_next_task_of_its_child_both(
    sqlite_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A task that closed fds 1 and 2 (or left sys.stdout on a StringIO) took them from every later task of its child:
    their print() raised OSError (a task that only printed failed) or vanished, and their output was lost."""
    service = make_service(sqlite_url)
    closer = pyreview.close_streams.options(service=service).queue()
    printer = pyreview.print_and_fail.options(service=service).queue("printed by the next task")
    _run_all(service, make_env, start_worker, sqlite_url, [closer, printer])
    assert service.result(closer) == "closed"
    log = service.find_task(printer).log or ""
    assert "RuntimeError: failed after printing" in log and "printed by the next task" in log, log


def test_an_outcome_that_came_while_the_worker_decided_to_stop_the_child_is_the_task_s(tmp_path: Path) -> None:
    """A stop (SIGINT, a lost lease, the time limit) decided at a poll while the child's outcome was already in the
    pipe, unread, killed a child whose function had completed (it had said `EXITED 0`) and handed the task back:
    it ran again. Here a real child runs a real task while the first poll takes long enough for it to finish."""
    state_read, state_write = os.pipe()
    pool = PythonPool(10, None, 65536, lambda: None, state_output=state_write)
    os.close(state_write)
    polls: list[float] = []

    def keep_running() -> str | None:
        polls.append(time.monotonic())
        time.sleep(1.0)  # the function returns meanwhile, and its outcome waits in the pipe
        return "the worker was interrupted (SIGINT)"

    row = SimpleNamespace(batch_id=None, retry=None, scheduled_for=None)
    package = cast(WorkPackage, SimpleNamespace(task_id=7, attempt=1, row=row))
    call = pyreview.whoami.describe()
    try:
        run = pool.run(package, call, keep_running, lambda pid: None, lambda code: None, lambda text: None,
                       poll_seconds=0.0)
    finally:
        pool.close()
        said = os.read(state_read, 4096)
        os.close(state_read)
    assert said == b"EXITED 0\n"
    assert run.stopped is None and run.outcome is not None and run.outcome["result"] == "7", run


def test_a_child_whose_task_pipe_closes_without_an_end_order_dies_by_sigkill_never_with_exit_code_0() -> None:
    """A child waiting for its next task saw its worker's pipe close (the worker was killed -9, and its PDEATHSIG had
    not come yet) and ended with exit code 0; the tender, reaping it, recorded the task the worker had just claimed
    as done: a task that never ran (scripts/chaos, python-kill-workers). Now only the worker's end order ends a
    child with 0; a bare end of the pipe kills it. Here the pipe is closed as the worker's death would close it."""
    state_read, state_write = os.pipe()
    pool = PythonPool(10, None, 65536, lambda: None, state_output=state_write)
    os.close(state_write)
    try:
        pool.prepare()
        orphan = pool.child
        assert orphan is not None and orphan.tasks is not None
        os.close(orphan.tasks)  # what the worker's death does to the pipe, the worker itself staying alive
        orphan.tasks = None
        wait_for(lambda: orphan.exit_seen() is not None, 10, "the child to end")
        assert orphan.reap() == -signal.SIGKILL
        pool.child = None
        pool.prepare()
        retired = pool.child
        assert retired is not None and retired.tasks is not None
        os.write(retired.tasks, END_ORDER)  # as PythonPool's retire() says it: a child retired by its worker
        os.close(retired.tasks)
        retired.tasks = None
        wait_for(lambda: retired.exit_seen() is not None, 10, "the retired child to end")
        assert retired.reap() == 0
        pool.child = None
    finally:
        pool.close()
        os.close(state_read)


def test_a_keyword_argument_name_that_is_not_text_any_database_stores_is_refused_naming_it(
    sqlite_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    """Keyword names were not checked as text, as every other string of a Python task's call is: a name with a lone
    surrogate (from a dict of file names read with surrogateescape) passed, and queue() failed later with a bare
    UnicodeEncodeError rather than InvalidInput naming the argument."""
    service = make_service(sqlite_url)
    with pytest.raises(InvalidInput, match="not valid Unicode text"):
        pyreview.keywords.options(service=service).queue(**{"caf\udce9": 1})
    assert pyreview.keywords.describe(**{"café": 1}).kwargs == {"café": 1}
