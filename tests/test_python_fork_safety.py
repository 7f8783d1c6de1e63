"""Fork safety of a worker's Python children (docs/python-tasks.rst, "Fork safety"): a child never finalises the
database connections it inherited from its worker, so the worker's own sessions survive every child, on every
database. A PostgreSQL connection that a child let go would say goodbye to the server on the worker's socket,
and the worker's next statement would fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyforksafety
import sqlalchemy as sa
from support import WorkerProcess, drain, python_env, wait_for

from pheanq import Status
from pheanq.producer.service import TaskQueueService
from pheanq.storage.engine import create_engine


def test_children_that_collect_garbage_and_queue_tasks_leave_the_worker_s_connections_alone(
    db_url: str, make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    service = make_service(db_url)
    sessions_before = _sessions(db_url)
    ids = [pyforksafety.collect_garbage.options(service=service).queue() for _ in range(6)]
    ids += [pyforksafety.queue_from_the_child.options(service=service).queue(1) for _ in range(3)]
    # A fresh child per task: every one of them inherits the worker's connections, and ends.
    worker = drain(start_worker, python_env(make_env, db_url, PHEANQ_MAX_TASKS_PER_CHILD="1"), "pyforksafety")
    wait_for(lambda: all(service.status_of(task_id) is Status.DONE for task_id in ids), 10, "the tasks done")
    children = {service.result(task_id) for task_id in ids[:6]}
    assert len(children) == 6, "each task ran in a child of its own"
    queued = [service.result(task_id) for task_id in ids[6:]]
    assert all(service.status_of(task_id) is Status.DONE for task_id in queued), "the tasks queued by children ran"
    # The worker never lost its database session: not one statement failed and was retried.
    assert not [line for line in worker.errors if "WARNING" in line or "retrying" in line], worker.log
    if sessions_before is not None:
        # PostgreSQL counts every session opened: the worker's own (it never had to open another: its pool checks a
        # connection before using it, and would quietly replace one a child had ended), the test's, and the three
        # children's that queued a task. A child that closed what it inherited would cost the worker a session
        # per task.
        opened = (_sessions(db_url) or 0) - sessions_before
        print(f"sessions opened: {opened}")
        assert opened <= 7, f"{opened} sessions were opened: the worker lost its own to its children"


def _sessions(url: str) -> int | None:
    """PostgreSQL's count of the sessions ever opened to the database of `url` (None on another database)."""
    if not url.startswith("postgresql"):
        return None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")))
    finally:
        engine.dispose()


def test_the_next_task_of_a_child_finds_the_process_as_the_child_had_it_before_its_first_task(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    """A reused child puts back what a task changed of its process: the working directory, the environment, the
    signal handlers and mask, and an alarm left armed (which would kill the idle child, or the next task)."""
    service = make_service(sqlite_url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = pyforksafety.leave_a_mess.options(service=service).queue(str(elsewhere))
    second = pyforksafety.what_was_left.options(service=service).queue(1.5)
    worker = drain(start_worker, python_env(make_env, sqlite_url), "pyforksafety")
    assert service.status_of(first) is Status.DONE
    seen = service.result(second)
    assert seen == {"cwd": str(tmp_path), "left": None, "pid": seen["pid"], "sigterm": True, "blocked": []}, seen
    assert f"CHILD {seen['pid']}" in worker.stdout_lines, "both tasks ran in one child"
