"""The floors of pheanq's producer path: what the database drivers and greenstalk allow for the same durable work,
measured beside pheanq's `queue_task` and `queue_many` in one run, on SQLite, PostgreSQL and MariaDB.

- **Enqueue floor**: per task, INSERT the row and commit, then put its job (the minimum durable order: the row
  before the job). Against `TaskQueueService.queue_task`.
- **Bulk floor**: per chunk of 500, one multi-row INSERT ... RETURNING id and a commit, then one put per task.
  Against `TaskQueueService.queue_many` in chunks of 500.

The loops are written on the drivers themselves — `sqlite3`, `psycopg` (statements prepared by the server),
`pymysql` — and greenstalk; nothing of pheanq runs in them (pheanq's migrations only make the table). Each run
gets a fresh beanstalkd and an empty table; the sides alternate which goes first. Prints a table (or --json)
with the medians, min and max, the ratio pheanq / floor, and the machine and versions it ran on.

    ./scripts/bench-floor [--database sqlite,postgresql,mysql] [--tasks N] [--runs R] [--json]

The end-to-end and pickup floors, the workers' memory and the listings on 10 M rows (issue 13's other rows) are
not measured here yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import greenstalk
from bench import BenchError, beanstalkd, machine, pheanq_queue, stop_all

TUBE = "pheanq"
PRIORITY = 1024
TTR = 60
CHUNK = 500
COLUMNS = ("command", "data", "tube", "status", "priority", "ttr", "created", "modified", "nonce")
DESCRIPTION = {"command": "true", "arguments": [], "options": {}, "type": "pheanq.description.TaskDescription"}
DEFAULT_URLS = {
    "sqlite": "",   # a fresh file per run
    "postgresql": "postgresql://postgres@127.0.0.1:5432/pheanq_bench",
    "mysql": "mysql://root@127.0.0.1:3306/pheanq_bench",
}
Database = tuple[str, str]   # (kind, SQLAlchemy URL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-floor", description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite,postgresql,mysql",
                        help="comma-separated: sqlite, postgresql, mysql (default: all three)")
    parser.add_argument("--postgres-url", default=DEFAULT_URLS["postgresql"])
    parser.add_argument("--mysql-url", default=DEFAULT_URLS["mysql"])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per enqueue run (bulk: 10 times as many)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    kinds = [kind.strip() for kind in options.database.split(",") if kind.strip()]
    if unknown := [kind for kind in kinds if kind not in DEFAULT_URLS]:
        parser.error(f"unknown database {unknown[0]!r} (sqlite, postgresql, mysql)")
    if options.tasks <= 0 or options.runs <= 0:
        parser.error("--tasks and --runs must be positive")
    urls = {"postgresql": options.postgres_url, "mysql": options.mysql_url}
    info = machine()
    info.update(drivers())
    figures: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pheanq-bench-floor-") as root:
            for kind in kinds:
                figures[kind] = measure(kind, urls.get(kind, ""), Path(root), options.tasks, options.runs)
    except BenchError as error:
        print(f"bench-floor: error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    if options.json:
        print(json.dumps({"runs": options.runs, "tasks": options.tasks, "machine": info, "figures": figures},
                         indent=2))
    else:
        print(format_table(figures, info, options.runs))
    return 0


def measure(kind: str, url: str, root: Path, tasks: int, runs: int) -> dict[str, dict[str, list[float]]]:
    """tasks/s per (row, side), every run."""
    found: dict[str, dict[str, list[float]]] = {"enqueue": {"pheanq": [], "floor": []},
                                                "bulk": {"pheanq": [], "floor": []}}
    plans: list[tuple[str, str, int, Callable[[str, tuple[str, int], int], float]]] = [
        ("enqueue", "pheanq", tasks, pheanq_queue), ("enqueue", "floor", tasks, floor_enqueue),
        ("bulk", "pheanq", tasks * 10, pheanq_bulk), ("bulk", "floor", tasks * 10, floor_bulk)]
    for run in range(runs):
        for pair in (plans[:2], plans[2:]):
            for row, side, count, take in pair if run % 2 == 0 else pair[::-1]:
                database = fresh_table(kind, url, root / f"{kind}-{row}-{side}-{run}.db")
                with beanstalkd() as address:
                    seconds = take(database, address, count)
                found[row][side].append(count / seconds)
                print(f"bench-floor: {kind} {row} run {run + 1}/{runs} {side}: {count / seconds:.0f} tasks/s",
                      file=sys.stderr, flush=True)
    return found


def fresh_table(kind: str, url: str, sqlite_file: Path) -> str:
    """An empty, upgraded pheanq_task table: a new SQLite file, or the server database emptied."""
    import sqlalchemy as sa

    from pheanq.storage import Store
    from pheanq.storage.migrate import upgrade_database

    if kind == "sqlite":
        url = f"sqlite:///{sqlite_file}"
    else:
        _create_database(url)
    store = Store(url)
    try:
        upgrade_database(store)
        with store.database.transaction() as conn:
            conn.execute(sa.text("DELETE FROM pheanq_task"))
    finally:
        store.close()
    return url


def _create_database(url: str) -> None:
    import sqlalchemy as sa

    given = sa.engine.make_url(url)
    server = given.set(database="postgres" if given.get_backend_name() == "postgresql" else "")
    from pheanq.storage.engine import create_engine

    engine = create_engine(server.render_as_string(hide_password=False))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if given.get_backend_name() == "postgresql":
                if not conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": given.database}):
                    conn.exec_driver_sql(f'CREATE DATABASE "{given.database}"')
            else:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{given.database}`")
    except sa.exc.OperationalError as error:
        raise BenchError(f"{given.render_as_string()}: {str(error).splitlines()[0]}") from None
    finally:
        engine.dispose()


# --- pheanq (its queue_task side is scripts/bench.py's pheanq_queue) ----------------------------------------------


def pheanq_bulk(url: str, address: tuple[str, int], tasks: int) -> float:
    from pheanq.config import Settings
    from pheanq.description import TaskDescription
    from pheanq.producer.service import TaskQueueService

    service = TaskQueueService(Settings(database_url=url, beanstalkd=address))
    try:
        started = time.perf_counter()
        for start in range(0, tasks, CHUNK):
            service.queue_many(TaskDescription("true") for _ in range(min(CHUNK, tasks - start)))
        return time.perf_counter() - started
    finally:
        service.close()


# --- the floors: the drivers and greenstalk, nothing of pheanq ---------------------------------------------------


class Driver:
    """One DBAPI connection with the statements of the floors, in the driver's own parameter style."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        given = sa.engine.make_url(url)
        self.kind = given.get_backend_name()
        self.prepare: dict[str, Any] = {}
        if self.kind == "sqlite":
            import sqlite3

            self.conn: Any = sqlite3.connect(given.database or "", timeout=30, isolation_level="DEFERRED")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")   # pheanq's own settings for SQLite
            self.mark = "?"
        elif self.kind == "postgresql":
            import psycopg

            self.conn = psycopg.connect(host=given.host, port=given.port or 5432, user=given.username,
                                        password=given.password, dbname=given.database)
            self.mark = "%s"
            self.prepare = {"prepare": True}
        else:
            import pymysql

            self.conn = pymysql.connect(host=given.host or "127.0.0.1", port=given.port or 3306,
                                        user=given.username or "root", password=given.password or "",
                                        database=given.database, autocommit=False)
            self.mark = "%s"
        row = "(" + ", ".join([self.mark] * len(COLUMNS)) + ")"
        self.row = row
        self.insert = f"INSERT INTO pheanq_task ({', '.join(COLUMNS)}) VALUES {row} RETURNING id"

    def insert_one(self, values: tuple[Any, ...]) -> int:
        cursor = self.conn.cursor()
        cursor.execute(self.insert, values, **self.prepare)
        task_id = int(cursor.fetchone()[0])
        self.conn.commit()
        return task_id

    def insert_many(self, rows: list[tuple[Any, ...]]) -> list[int]:
        cursor = self.conn.cursor()
        statement = f"INSERT INTO pheanq_task ({', '.join(COLUMNS)}) VALUES " + ", ".join([self.row] * len(rows)) \
            + " RETURNING id"
        cursor.execute(statement, [value for row in rows for value in row])
        ids = sorted(int(found[0]) for found in cursor.fetchall())  # one statement: ids ascend with the rows
        self.conn.commit()
        return ids

    def close(self) -> None:
        self.conn.close()


def floor_enqueue(url: str, address: tuple[str, int], tasks: int) -> float:
    driver = Driver(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE)
    data = json.dumps(DESCRIPTION, separators=(",", ":"))
    try:
        started = time.perf_counter()
        for _ in range(tasks):
            nonce = secrets.token_hex(8)
            task_id = driver.insert_one(_values(data, nonce))
            client.put(_body(task_id, nonce), priority=PRIORITY, ttr=TTR)
        return time.perf_counter() - started
    finally:
        client.close()
        driver.close()


def floor_bulk(url: str, address: tuple[str, int], tasks: int) -> float:
    driver = Driver(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE)
    data = json.dumps(DESCRIPTION, separators=(",", ":"))
    try:
        started = time.perf_counter()
        for start in range(0, tasks, CHUNK):
            nonces = [secrets.token_hex(8) for _ in range(min(CHUNK, tasks - start))]
            ids = driver.insert_many([_values(data, nonce) for nonce in nonces])
            for task_id, nonce in zip(ids, nonces, strict=True):
                client.put(_body(task_id, nonce), priority=PRIORITY, ttr=TTR)
        return time.perf_counter() - started
    finally:
        client.close()
        driver.close()


def _values(data: str, nonce: str) -> tuple[Any, ...]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return ("true", data, TUBE, "new", PRIORITY, TTR, now, now, nonce)


def _body(task_id: int, nonce: str) -> bytes:
    return json.dumps({"pheanq": 1, "task_id": task_id, "nonce": nonce, "description": DESCRIPTION},
                      separators=(",", ":")).encode()


# --- the report --------------------------------------------------------------------------------------------------


def drivers() -> dict[str, str]:
    found = {}
    for name in ("psycopg", "PyMySQL"):
        try:
            found[name.lower()] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name.lower()] = "not installed"
    return found


def format_table(figures: dict[str, dict[str, dict[str, list[float]]]], info: dict[str, Any], runs: int) -> str:
    lines = [f"bench-floor: tasks/s, medians of {runs} run(s) (min .. max); ratio = pheanq / floor", "",
             f"{'database':11} {'row':8} {'pheanq':>24} {'floor':>24} {'ratio':>6}"]

    def side(rates: list[float]) -> str:
        return f"{statistics.median(rates):7.0f} ({min(rates):.0f} .. {max(rates):.0f})"

    for kind, rows in figures.items():
        for row, sides in rows.items():
            ratio = statistics.median(sides["pheanq"]) / statistics.median(sides["floor"])
            lines.append(f"{kind:11} {row:8} {side(sides['pheanq']):>24} {side(sides['floor']):>24} {ratio:6.2f}")
    load = " ".join(f"{value:.2f}" for value in info["load_average"])
    lines.append("")
    lines.append(f"machine: {info['cores']} cores ({info['cpu']}), load {load} at start; Python {info['python']}, "
                 f"SQLite {info['sqlite']}, beanstalkd {info['beanstalkd']}, SQLAlchemy {info['sqlalchemy']}, "
                 f"greenstalk {info['greenstalk']}, psycopg {info['psycopg']}, PyMySQL {info['pymysql']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
