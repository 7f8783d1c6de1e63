"""Fixtures: a real beanstalkd per test, real databases, real worker processes.

Databases: SQLite always; PostgreSQL and MariaDB/MySQL when PHEANQ_TEST_POSTGRES_URL /
PHEANQ_TEST_MYSQL_URL are set (scripts/test sets them when the servers answer).
A test that takes `db_url` runs once per database; `sqlite_url` runs on SQLite only.
Under pytest-xdist (scripts/test runs the suite with -n) each worker process uses a database of its own on
each server, named after the given one and the worker (`test` -> `test_gw0`), created when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from support import Beanstalkd, WorkerProcess, skip_here_fail_in_ci, write_config

from pheanq.config import load_settings
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.storage.engine import create_engine
from pheanq.storage.migrate import upgrade_database
from pheanq.storage.tables import count_change_table, count_table, metadata

SERVER_URLS = {
    "postgresql": os.environ.get("PHEANQ_TEST_POSTGRES_URL"),
    "mysql": os.environ.get("PHEANQ_TEST_MYSQL_URL"),
}
# The commands tests queue through `make_service` and reserve with the same service.
SERVICE_COMMANDS = {"invoice": ["/bin/true"], "work": ["/bin/true"]}
DATABASES = ["sqlite", *(name for name, url in SERVER_URLS.items() if url)]

@pytest.fixture
def beanstalkd() -> Iterator[Beanstalkd]:
    server = Beanstalkd().start()
    yield server
    server.stop()

def _clear(url: str) -> None:
    """Empty pheanq's tables on a shared server database between tests."""
    store = Store(url)
    with store.database.transaction() as conn:
        # The task counts last: deleting the tasks notes their -1s as count changes.
        counted = [count_change_table, count_table]
        for table in [*(table for table in reversed(metadata.sorted_tables) if table not in counted), *counted]:
            conn.execute(table.delete())
    store.close()


def _this_workers_database(url: str) -> str:
    """Under pytest-xdist, the database of this worker beside the one `url` names (created when missing), so
    that workers never clear or drop each other's tables; without xdist, `url` itself."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...: set by xdist in its worker processes
    if not worker:
        return url
    given = make_url(url)
    name = f"{given.database}_{worker}"
    engine = create_engine(url)  # connected to the named database; CREATE DATABASE needs no transaction around it
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if engine.dialect.name == "postgresql":
                exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
                if not exists:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            else:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    finally:
        engine.dispose()
    return given.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _upgraded_servers() -> dict[str, str]:
    """Each server database (this worker's own under xdist), dropped of pheanq's tables and upgraded once per
    session."""
    upgraded = {}
    for name, given in SERVER_URLS.items():
        if not given:
            continue
        url = _this_workers_database(given)
        engine = create_engine(url)
        with engine.begin() as conn:
            for table in [*metadata.tables, "pheanq_alembic_version"]:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
        store = Store(url)
        upgrade_database(store)
        store.close()
        upgraded[name] = url
    return upgraded

@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'pheanq.db'}"
    store = Store(url)
    upgrade_database(store)
    store.close()
    return url

@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _upgraded_servers: dict[str, str]) -> str:
    """An upgraded, empty database of each kind in turn."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return url
    if request.param not in _upgraded_servers:  # a test asked for this database alone (indirect parametrization)
        skip_here_fail_in_ci(f"{request.param} is not configured (PHEANQ_TEST_*_URL)")
    url = _upgraded_servers[request.param]
    _clear(url)
    return url

@pytest.fixture
def make_env(tmp_path: Path, beanstalkd: Beanstalkd) -> Callable[..., dict[str, str]]:
    """Environment for a pheanq process: this test's beanstalkd and config file, plus `extra`."""

    def make(database_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHEANQ_")}
        env.update(PHEANQ_DATABASE_URL=database_url, PHEANQ_BEANSTALKD=beanstalkd.address_text,
                   PHEANQ_CONFIG=str(tmp_path / "pheanq.toml"))
        if not (tmp_path / "pheanq.toml").exists():
            write_config(tmp_path)
        env.update(extra)
        return env

    return make

@pytest.fixture
def make_service(tmp_path: Path, beanstalkd: Beanstalkd) -> Iterator[Callable[..., TaskQueueService]]:
    """TaskQueueService factory on this test's beanstalkd; closed at the end of the test."""
    made: list[TaskQueueService] = []

    def make(database_url: str, **settings: Any) -> TaskQueueService:
        # A service that reserves tasks acts as a worker, which buries jobs of commands it does not know.
        settings.setdefault("commands", SERVICE_COMMANDS)
        config = load_settings({"database_url": database_url, "beanstalkd": beanstalkd.address_text, **settings},
                               environ={})
        service = TaskQueueService(config)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()

@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `pheanq task-worker ARGS` with `env` in the test's directory; killed at the end if still alive."""
    started: list[WorkerProcess] = []

    def start(args: Sequence[str], env: Mapping[str, str]) -> WorkerProcess:
        worker = WorkerProcess(args, env, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `long` first (a stable sort: the rest keep their order): with several workers, a minute-long test
    dealt out last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
