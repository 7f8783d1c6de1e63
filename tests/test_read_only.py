"""A database that refuses writes because it is read-only (a replica, or a primary a failover demoted) is an
outage: a worker keeps its job and waits, and goes on once the database takes writes again. Real PostgreSQL made
read-only with default_transaction_read_only, a real worker process."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import WorkerProcess, wait_for

from pheanq import TaskDescription
from pheanq.errors import ConfigError, StoreUnavailable
from pheanq.producer.service import TaskQueueService
from pheanq.status import Status
from pheanq.storage import Store
from pheanq.storage.engine import create_engine


def set_read_only(url: str, on: bool) -> None:
    """New sessions of the database start read-only (or not), as on a hot standby."""
    engine = create_engine(url)
    name = engine.url.database
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("SET default_transaction_read_only = off")  # this session may change it back
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_read_only_database_is_waited_out_by_a_worker(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("example-task-worker", ["0"]))
    set_read_only(db_url, True)
    try:
        store = Store(db_url)
        with pytest.raises(StoreUnavailable, match="is read-only"):
            store.tasks.stall_task(task_id, 0, "a write")
        store.close()
        worker = start_worker([], make_env(db_url))
        wait_for(lambda: "is read-only" in worker.log, 30, f"the worker to meet the read-only database: {worker.log}")
        assert worker.process.poll() is None, worker.log  # waiting, not exited
    finally:
        set_read_only(db_url, False)
    wait_for(lambda: (found := service.store.tasks.find_task(task_id)) is not None and found.status is Status.DONE,
             60, "the task to be done once the database takes writes")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log
    assert "Traceback" not in worker.log
    with create_engine(db_url).connect() as conn:
        assert conn.scalar(sa.text("SHOW default_transaction_read_only")) == "off"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_prepare_threshold_in_the_url_is_a_number_or_none(db_url: str) -> None:
    """For pgbouncer in transaction mode before 1.21: `?prepare_threshold=none` turns psycopg's preparing off."""
    for given, expected in (("none", None), ("3", 3)):
        engine = create_engine(f"{db_url}?prepare_threshold={given}")
        try:
            with engine.connect() as conn:
                for _ in range(6):  # past psycopg's default threshold of 5, at which it would prepare
                    assert conn.scalar(sa.text("SELECT 1")) == 1
                assert conn.connection.dbapi_connection.prepare_threshold == expected  # type: ignore[union-attr]
        finally:
            engine.dispose()
    with pytest.raises(ConfigError, match="prepare_threshold='soon' is not a whole number or none"):
        create_engine(f"{db_url}?prepare_threshold=soon")
