"""queue_task when beanstalkd is down or mute, and transactional enqueue with an application's own Session.

A real beanstalkd (stopped and started again on the same port), a plain socket that accepts connections and
never answers, real databases (every configured one) and a real child process that dies between its commit
and its put. Jobs are counted with a plain greenstalk client, independently of pheanq.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import greenstalk
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import Beanstalkd, WorkerProcess, jobs_per_task, write_config

from pheanq import InvalidInput, Status, TaskDescription, TaskPendingWarning
from pheanq.beanstalkd.connection import DEFAULT_IO_TIMEOUT
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.engine import create_engine
from pheanq.storage.tables import task_table

TUBE = "pheanq"  # the default tube
TASK = TaskDescription("work", [1])

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def task_ids(service: TaskQueueService) -> list[int]:
    """Every task id in pheanq's table, in order."""
    with service.store.database.transaction() as conn:
        return [int(task_id) for task_id in conn.execute(sa.select(task_table.c.id).order_by(task_table.c.id))
                .scalars()]


def pending(caught: list[warnings.WarningMessage]) -> list[TaskPendingWarning]:
    return [w.message for w in caught if isinstance(w.message, TaskPendingWarning)]


def queue_noting_warnings(service: TaskQueueService, description: TaskDescription = TASK,
                          **kwargs: object) -> tuple[int, list[TaskPendingWarning]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task_id = service.queue_task(description, **kwargs)  # type: ignore[arg-type]
    return task_id, pending(caught)


@pytest.fixture
def mute_server() -> Iterator[tuple[str, int]]:
    """A loopback address whose kernel completes the TCP handshake but where nobody ever reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # bound at once: a port from free_port() could go to a parallel test first
    listener.listen(8)
    yield listener.getsockname()
    listener.close()


# --- beanstalkd down or mute ------------------------------------------------------------------------------------

def test_while_beanstalkd_is_down_tasks_are_pending_not_lost_and_the_next_put_that_works_sends_them(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    beanstalkd.stop()
    started = time.monotonic()
    first, caught = queue_noting_warnings(service)
    second, caught_again = queue_noting_warnings(service)
    assert time.monotonic() - started < 5  # a refused connection answers at once, and is tried each time
    assert [w.task_id for w in [*caught, *caught_again]] == [first, second]
    assert str(first) in str(caught[0]) and "not retried" not in str(caught[0])
    for task_id in (first, second):
        row = service.find_task(task_id)
        assert (row.status, row.job_id) == (Status.NEW, None)

    beanstalkd.start()
    third, caught = queue_noting_warnings(service)
    assert caught == []
    # The put that worked also sent the two tasks this service had left pending.
    assert jobs_per_task(beanstalkd) == {first: 1, second: 1, third: 1}
    report = reconcile(service.dispatch, min_age=0)
    assert (report.sent_again, report.alive) == (0, 3)


def test_a_beanstalkd_that_accepts_but_never_answers_costs_at_most_the_io_timeout_then_nothing(
    sqlite_url: str, make_service: MakeService, mute_server: tuple[str, int],
) -> None:
    host, port = mute_server
    service = make_service(sqlite_url, beanstalkd=f"{host}:{port}")
    started = time.monotonic()
    first, caught = queue_noting_warnings(service)
    took = time.monotonic() - started
    assert took < 15, f"queue_task took {took:.1f}s against a mute beanstalkd"
    assert took >= DEFAULT_IO_TIMEOUT - 1  # it did wait for an answer, as long as the io timeout
    assert [w.task_id for w in caught] == [first]
    assert "no answer in time" in str(caught[0])
    assert (service.status_of(first), service.find_task(first).job_id) == (Status.NEW, None)

    started = time.monotonic()
    second, caught = queue_noting_warnings(service)
    assert time.monotonic() - started < 2  # within the pause: not tried again
    assert [w.task_id for w in caught] == [second]


# --- transactional enqueue: queue_task(..., session=...) ------------------------------------------------------

@pytest.fixture
def app_session(db_url: str) -> Iterator[Session]:
    """The application's own Session on pheanq's database, on an engine of its own."""
    engine = create_engine(db_url)
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_tasks_queued_in_a_session_are_invisible_and_unsent_until_it_commits_then_each_has_its_job(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd, app_session: Session,
) -> None:
    service = make_service(db_url)
    with app_session.begin():
        first = service.queue_task(TaskDescription("work", [1]), session=app_session)
        second = service.queue_task(TaskDescription("work", [2]), session=app_session, priority=5)
        assert first != second
        # Another connection does not see the rows yet.
        assert (service.status_of(first), service.status_of(second)) == (None, None)
        assert jobs_per_task(beanstalkd) == {}
    assert jobs_per_task(beanstalkd) == {first: 1, second: 1}
    for task_id, priority in ((first, 1024), (second, 5)):
        row = service.find_task(task_id)
        assert (row.status, row.priority) == (Status.NEW, priority)
        assert row.job_id is not None
        with greenstalk.Client(beanstalkd.address, encoding=None) as client:
            assert json.loads(client.peek(row.job_id).body)["task_id"] == task_id
            assert client.stats_job(row.job_id)["pri"] == priority

    # The same session, a second transaction: its task is sent at its own commit.
    with app_session.begin():
        third = service.queue_task(TASK, session=app_session)
    assert jobs_per_task(beanstalkd) == {first: 1, second: 1, third: 1}


def test_a_rollback_leaves_no_row_and_no_job_and_the_next_commit_sends_only_its_own_task(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd, app_session: Session,
) -> None:
    service = make_service(db_url)
    app_session.begin()
    dropped = service.queue_task(TASK, session=app_session)
    app_session.rollback()
    assert service.status_of(dropped) is None
    assert jobs_per_task(beanstalkd) == {}

    with pytest.raises(RuntimeError, match="the application gives up"), app_session.begin():
        service.queue_task(TASK, session=app_session)
        raise RuntimeError("the application gives up")
    # A session closed without a commit rolls back too.
    app_session.begin()
    service.queue_task(TASK, session=app_session)
    app_session.close()
    assert task_ids(service) == []
    assert jobs_per_task(beanstalkd) == {}

    with app_session.begin():
        kept = service.queue_task(TASK, session=app_session)
    assert jobs_per_task(beanstalkd) == {kept: 1}
    assert task_ids(service) == [kept]


def test_a_task_queued_in_a_savepoint_that_is_rolled_back_is_not_sent_and_the_others_are(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd, app_session: Session,
) -> None:
    service = make_service(db_url)
    with app_session.begin():
        outer = service.queue_task(TaskDescription("work", ["outer"]), session=app_session)
        savepoint = app_session.begin_nested()
        service.queue_task(TaskDescription("work", ["undone"]), session=app_session)
        savepoint.rollback()
        with app_session.begin_nested():
            inner = service.queue_task(TaskDescription("work", ["inner"]), session=app_session)
    # By content, not by id: SQLite hands the rolled-back row's id out again, here to `inner`; its job must still
    # be the only one, with inner's body.
    assert [json.loads(service.find_task(task_id).data)["arguments"] for task_id in task_ids(service)] == \
        [["outer"], ["inner"]]
    assert jobs_per_task(beanstalkd) == {outer: 1, inner: 1}
    for task_id, argument in ((outer, "outer"), (inner, "inner")):
        job_id = service.find_task(task_id).job_id
        assert job_id is not None
        with greenstalk.Client(beanstalkd.address, encoding=None) as client:
            assert json.loads(client.peek(job_id).body)["description"]["arguments"] == [argument]


def test_a_session_on_another_database_is_refused_with_one_line_and_nothing_is_written(
    db_url: str, tmp_path: Path, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    other_url = f"sqlite:///{tmp_path / 'application.db'}"
    engine = create_engine(other_url)
    with Session(engine) as session, session.begin(), pytest.raises(InvalidInput) as refused:
        service.queue_task(TASK, session=session)
    engine.dispose()
    message = str(refused.value)
    assert "\n" not in message
    assert "same database" in message and "application.db" in message
    assert task_ids(service) == []
    assert jobs_per_task(beanstalkd) == {}


def test_beanstalkd_down_at_commit_time_the_commit_stands_and_the_task_is_pending_until_reconciled(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd, app_session: Session,
) -> None:
    service = make_service(db_url)
    beanstalkd.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with app_session.begin():
            task_id = service.queue_task(TASK, session=app_session)
    assert [w.task_id for w in pending(caught)] == [task_id]
    row = service.find_task(task_id)
    assert (row.status, row.job_id) == (Status.NEW, None)

    beanstalkd.start()
    report = reconcile(service.dispatch, min_age=0)
    assert report.sent_again == 1
    assert jobs_per_task(beanstalkd) == {task_id: 1}
    assert service.find_task(task_id).job_id is not None


DIES_AFTER_COMMIT = """
    import os, sys
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    from pheanq import TaskDescription, TaskQueueService, load_settings
    from pheanq.storage.engine import create_engine

    database_url, beanstalkd = sys.argv[1:]
    service = TaskQueueService(load_settings({"database_url": database_url, "beanstalkd": beanstalkd}, environ={}))
    session = Session(create_engine(database_url))
    # Listening before queue_task does, this runs first: the process dies between the commit and the put.
    sa.event.listen(session, "after_commit", lambda _session: os._exit(9))
    session.begin()
    print(service.queue_task(TaskDescription("record", ["survivor"]), session=session), flush=True)
    session.commit()
    print("still alive after the commit", flush=True)
"""


def test_a_process_that_dies_between_its_commit_and_the_put_loses_nothing_the_task_runs_once(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    script = tmp_path / "dies_after_commit.py"
    script.write_text(textwrap.dedent(DIES_AFTER_COMMIT))
    child = subprocess.run([sys.executable, str(script), db_url, beanstalkd.address_text], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    task_id = int(child.stdout)
    service = make_service(db_url)
    row = service.find_task(task_id)
    assert (row.status, row.job_id) == (Status.NEW, None)
    assert jobs_per_task(beanstalkd) == {}

    assert reconcile(service.dispatch, min_age=0).sent_again == 1
    assert jobs_per_task(beanstalkd) == {task_id: 1}
    runs = tmp_path / "runs.txt"
    record = tmp_path / "record.py"
    record.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(" ".join([os.environ["PHEANQ_TASK_ID"], *sys.argv[2:]]) + "\\n")
    """))
    write_config(tmp_path, commands={"record": [sys.executable, str(record), str(runs)]})
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    assert runs.read_text() == f"{task_id} survivor\n"
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.DONE, 1)
    assert jobs_per_task(beanstalkd) == {}
