"""Unique tasks, on every database: while a task queued with a key has not ended, queueing another with
that key returns the existing id; once it has ended the key is free again. The database's unique index
decides, so producers racing on one key from several connections get exactly one task."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import claims, pheanq

from pheanq import InvalidInput, Status, TaskDescription, WrongStatus
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]


def finish_next(service: TaskQueueService, done: bool = True) -> int:
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    if done:
        claims(service).mark_done(package, None)
    else:
        claims(service).mark_failed(package, None, 1)
    return package.task_id


def test_a_key_held_by_a_task_that_has_not_ended_returns_that_task(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    first = service.queue_task(TaskDescription("work", [1]), unique_key="invoice-42")
    again = service.queue_task(TaskDescription("work", [2]), unique_key="invoice-42")
    other = service.queue_task(TaskDescription("work", [3]), unique_key="invoice-43")
    assert again == first and other != first
    assert sum(n for _, _, n in service.store.tasks.count_tasks()) == 2
    package = claims(service).reserve_task("pheanq", timeout=5)       # working still holds the key
    assert package is not None and package.task_id == first
    assert service.queue_task(TaskDescription("work", [4]), unique_key="invoice-42") == first
    claims(service).mark_done(package, None)
    fresh = service.queue_task(TaskDescription("work", [5]), unique_key="invoice-42")   # done frees it
    assert fresh not in (first, other)
    assert service.find_task(fresh).unique_key == "invoice-42"


def test_a_waiting_task_holds_its_key_and_failed_or_cancelled_ones_free_it(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    parent = service.queue_task(TaskDescription("work", [1]))
    waiting = service.queue_task(TaskDescription("work", [2]), after=[parent], unique_key="k")
    assert service.queue_task(TaskDescription("work", [3]), unique_key="k") == waiting
    service.cancel_task(waiting)
    second = service.queue_task(TaskDescription("work", [4]), unique_key="k")
    assert second != waiting
    assert finish_next(service) == parent
    assert finish_next(service, done=False) == second
    assert service.status_of(second) is Status.FAILED
    third = service.queue_task(TaskDescription("work", [5]), unique_key="k")
    assert third != second
    with pytest.raises(WrongStatus, match=f"task {second}: another task holds its unique key now"):
        service.regenerate_task(second)
    assert service.status_of(second) is Status.FAILED


def test_producers_racing_on_one_key_get_exactly_one_task(db_url: str, make_service: MakeService) -> None:
    producers = [make_service(db_url) for _ in range(6)]
    keys = [f"race-{n}" for n in range(15)]
    start = threading.Barrier(len(producers))
    got: dict[str, set[int]] = {key: set() for key in keys}
    errors: list[BaseException] = []

    def produce(service: TaskQueueService) -> None:
        try:
            start.wait(10)
            for key in keys:
                got[key].add(service.queue_task(TaskDescription("work", [key]), unique_key=key))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(service,)) for service in producers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert all(len(ids) == 1 for ids in got.values()), got
    assert sum(n for _, _, n in producers[0].store.tasks.count_tasks()) == len(keys)


def test_a_bad_key_is_refused(sqlite_url: str, make_service: MakeService) -> None:
    service = make_service(sqlite_url)
    for bad in ("", "x" * 192, 7):
        with pytest.raises(InvalidInput, match="unique_key must be a text of 1 to 191 characters"):
            service.queue_task(TaskDescription("work"), unique_key=bad)  # type: ignore[arg-type]


def test_add_example_task_with_a_unique_key_queues_one_task(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    env = make_env(sqlite_url)
    first = pheanq(["add-example-task", "--unique-key", "nightly"], env, tmp_path)
    second = pheanq(["add-example-task", "--unique-key", "nightly"], env, tmp_path)
    assert first.returncode == second.returncode == 0
    assert first.stdout.split("id ")[1] == second.stdout.split("id ")[1]


def test_a_unique_key_holds_inside_an_application_transaction(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    engine = sa.create_engine(service.store.database.engine.url)
    try:
        with Session(engine) as session, session.begin():
            first = service.queue_task(TaskDescription("work", [1]), session=session, unique_key="in-tx")
            assert service.queue_task(TaskDescription("work", [2]), session=session, unique_key="in-tx") == first
        assert service.queue_task(TaskDescription("work", [3]), unique_key="in-tx") == first
        row = service.find_task(first)
        assert row.job_id is not None and service.beanstalkd.inspect(row.job_id) is not None
        assert sum(n for _, _, n in service.store.tasks.count_tasks()) == 1
    finally:
        engine.dispose()


def test_a_key_held_by_a_task_committed_after_the_application_transaction_began_returns_that_task(
    db_url: str, make_service: MakeService,
) -> None:
    """MariaDB reads inside a transaction from the snapshot of its first read: the holder is read with a
    locking read, which sees the latest committed row."""
    service, other = make_service(db_url), make_service(db_url)
    engine = sa.create_engine(service.store.database.engine.url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(sa.select(sa.func.count()).select_from(task_table)).scalar()  # the application read
            holder = other.queue_task(TaskDescription("work", [1]), unique_key="later")
            assert service.queue_task(TaskDescription("work", [2]), session=session, unique_key="later") == holder
    finally:
        engine.dispose()
