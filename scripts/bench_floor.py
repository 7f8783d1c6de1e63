"""The floors of pheanq's hot path: what the database drivers and greenstalk allow for the same durable work,
measured beside pheanq in one run, on SQLite, PostgreSQL and MariaDB.

- **Enqueue floor**: per task, INSERT the row and commit, then put its job (the minimum durable order: the row
  before the job). Against `TaskQueueService.queue_task`.
- **Bulk floor**: per chunk of 500, one multi-row INSERT ... RETURNING id and a commit, then one put per task.
  Against `TaskQueueService.queue_many` in chunks of 500.

The loops are written on the drivers themselves — `sqlite3`, `psycopg` (statements prepared by the server),
`pymysql` — and greenstalk; nothing of pheanq runs in them (pheanq's migrations only make the table). Each run
gets a fresh beanstalkd and an empty table; the sides alternate which goes first. Prints a table (or --json)
with the medians, min and max, the ratio pheanq / floor, and the machine and versions it ran on.

    ./scripts/bench-floor [--database sqlite,postgresql,mysql] [--tasks N] [--tasks-e2e N] [--pickups N]
                          [--runs R] [--json]

- **End-to-end floor**: 2 worker processes on the drivers, each: reserve, compare-and-set claim and commit, spawn
  `/bin/true` (`posix_spawn`, its output read through a pipe) and wait, record the end and commit, delete the
  job. Against a `pheanq worker-tender` keeping 2 task-workers (as pheanq is deployed), on the same rows and jobs
  (queued beforehand, not timed).
- **Pickup floor**: one job at a time on an idle queue, 50 ms apart: put → reserve → claim → the command's start
  (the command, for both sides, appends its start time to a file). Against pheanq's workers. p50 and p99, ms.

With SQLite among the databases it also reads the resident memory of an idle `task-worker` and of a
`worker-tender`. The listings on 10 M rows (issue 13's last row) are not measured here yet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import greenstalk
from bench import (
    BenchError,
    beanstalkd,
    machine,
    machine_line,
    parse_address,
    percentile,
    pheanq_queue,
    spawn,
    stop,
    stop_all,
)

TUBE = "pheanq"
PRIORITY = 1024
TTR = 60
CHUNK = 500
WORKERS = 2
TRUE = "/bin/true"
# Jobs put one at a time this far apart when pickup is measured: each finds the workers idle.
PICKUP_SPACING = 0.05
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
    parser.add_argument("--tasks-e2e", type=int, default=500, help="tasks per end-to-end run")
    parser.add_argument("--pickups", type=int, default=40, help="jobs per pickup run")
    parser.add_argument("--json", action="store_true")
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--floor-worker"]:  # a floor worker process: URL HOST:PORT COMMAND...
        url, address, *command = arguments[1:]
        return floor_worker(url, parse_address(address), command)
    options = parser.parse_args(arguments)
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
                figures[kind] = measure(kind, urls.get(kind, ""), Path(root), options)
    except BenchError as error:
        print(f"bench-floor: error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    memory = resident_memory() if "sqlite" in kinds else {}
    if options.json:
        print(json.dumps({"runs": options.runs, "tasks": options.tasks, "machine": info, "figures": figures,
                          "resident_mb": memory}, indent=2))
    else:
        print(format_table(figures, info, options.runs))
        if memory:
            print(f"resident memory, idle, SQLite: task-worker {memory['worker']:.1f} MB (goal 45), worker-tender "
                  f"{memory['tender']:.1f} MB (goal 35)")
    return 0


def resident_memory() -> dict[str, float]:
    """MB of resident memory of an idle `pheanq task-worker`, and of a `pheanq worker-tender` (with one worker,
    not counted), on SQLite."""
    import psutil

    directory = Path(tempfile.mkdtemp(prefix="pheanq-floor-memory-"))
    url = fresh_table("sqlite", "", directory / "pheanq.db")
    found: dict[str, float] = {}
    with beanstalkd() as address:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
        env.update(PHEANQ_DATABASE_URL=url, PHEANQ_BEANSTALKD=f"{address[0]}:{address[1]}",
                   PHEANQ_CONFIG=os.devnull, PHEANQ_RUN_DIR=str(directory / "run"))
        for name, argv in (("worker", ["task-worker"]),
                           ("tender", ["worker-tender", "--min-workers", "1", "--spare-workers", "0",
                                       "--max-workers", "1", "--reconcile-interval", "0"])):
            process = spawn([sys.executable, "-m", "pheanq", *argv], env=env, cwd=directory,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(3.0)  # started, connected, idle: what it holds while it waits
                found[name] = psutil.Process(process.pid).memory_info().rss / 2**20
            finally:
                stop(process)
    return found


def measure(kind: str, url: str, root: Path, options: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per (row, side), every run: tasks/s (enqueue, bulk, e2e) or milliseconds (pickup p50, p99)."""
    tasks, runs = options.tasks, options.runs
    found: dict[str, dict[str, list[float]]] = {row: {"pheanq": [], "floor": []}
                                                for row in ("enqueue", "bulk", "e2e", "pickup_p50", "pickup_p99")}
    plans: list[tuple[str, str, int, Callable[[str, tuple[str, int], int], float]]] = [
        ("enqueue", "pheanq", tasks, pheanq_queue), ("enqueue", "floor", tasks, floor_enqueue),
        ("bulk", "pheanq", tasks * 10, pheanq_bulk), ("bulk", "floor", tasks * 10, floor_bulk),
        ("e2e", "pheanq", options.tasks_e2e, pheanq_e2e), ("e2e", "floor", options.tasks_e2e, floor_e2e)]
    pickups: list[tuple[str, Callable[[str, tuple[str, int], int], list[float]]]] = [
        ("pheanq", pheanq_pickup), ("floor", floor_pickup)]
    for run in range(runs):
        for pair in (plans[:2], plans[2:4], plans[4:]):
            for row, side, count, take in pair if run % 2 == 0 else pair[::-1]:
                database = fresh_table(kind, url, root / f"{kind}-{row}-{side}-{run}.db")
                with beanstalkd() as address:
                    seconds = take(database, address, count)
                found[row][side].append(count / seconds)
                print(f"bench-floor: {kind} {row} run {run + 1}/{runs} {side}: {count / seconds:.0f} tasks/s",
                      file=sys.stderr, flush=True)
        for side, pickup in pickups if run % 2 == 0 else pickups[::-1]:
            database = fresh_table(kind, url, root / f"{kind}-pickup-{side}-{run}.db")
            with beanstalkd() as address:
                latencies = pickup(database, address, options.pickups)
            found["pickup_p50"][side].append(percentile(latencies, 50))
            found["pickup_p99"][side].append(percentile(latencies, 99))
            print(f"bench-floor: {kind} pickup run {run + 1}/{runs} {side}: p50 {percentile(latencies, 50):.1f} ms",
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

    def claim(self, task_id: int, nonce: str, job_id: int, worker: str) -> bool:
        """The compare-and-set claim of a `new` task, committed."""
        now = _now()
        m = self.mark
        cursor = self.conn.cursor()
        cursor.execute(f"UPDATE pheanq_task SET status = 'working', job_id = {m}, worker = {m}, "
                       f"attempts = attempts + 1, started = {m}, heartbeat = {m}, modified = {m} "
                       f"WHERE id = {m} AND status = 'new' AND nonce = {m}",
                       (job_id, worker, now, now, now, task_id, nonce), **self.prepare)
        claimed = bool(cursor.rowcount == 1)
        self.conn.commit()
        return claimed

    def finish(self, task_id: int, worker: str, code: int) -> None:
        """The attempt's end, committed (done on exit code 0)."""
        now = _now()
        m = self.mark
        cursor = self.conn.cursor()
        cursor.execute(f"UPDATE pheanq_task SET status = {m}, exit_code = {m}, finished = {m}, modified = {m} "
                       f"WHERE id = {m} AND status = 'working' AND worker = {m}",
                       ("done" if code == 0 else "failed", code, now, now, task_id, worker), **self.prepare)
        self.conn.commit()

    def count(self, status: str) -> int:
        cursor = self.conn.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM pheanq_task WHERE status = {self.mark}", (status,))
        found = int(cursor.fetchone()[0])
        self.conn.commit()  # a fresh snapshot next time (PostgreSQL, InnoDB's repeatable read)
        return found

    def span(self) -> float:
        """Seconds from the earliest start to the latest end of the done tasks."""
        cursor = self.conn.cursor()
        cursor.execute("SELECT MIN(started), MAX(finished) FROM pheanq_task WHERE status = 'done'")
        first, last = cursor.fetchone()
        self.conn.commit()
        if isinstance(first, str):  # SQLite keeps the times as text
            first, last = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
        return float((last - first).total_seconds())

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


def floor_worker(url: str, address: tuple[str, int], argv: list[str]) -> int:
    """A worker on the drivers: reserve, claim (compare-and-set) and commit, spawn `argv` (posix_spawn, its
    output read through a pipe) and wait, record the end and commit, delete the job; stop after 1 s idle."""
    driver = Driver(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE, watch=TUBE)
    name = f"floor:{os.getpid()}"
    try:
        while True:
            try:
                job = client.reserve(timeout=1)
            except greenstalk.TimedOutError:
                return 0
            body = json.loads(job.body)
            if driver.claim(int(body["task_id"]), body["nonce"], job.id, name):
                driver.finish(int(body["task_id"]), name, _spawn(argv))
            client.delete(job)
    finally:
        client.close()
        driver.close()


def _spawn(argv: list[str]) -> int:
    read, write = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, write, 1),
            (os.POSIX_SPAWN_DUP2, write, 2)])
    finally:
        os.close(write)
    while os.read(read, 65536):
        pass
    os.close(read)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def floor_e2e(url: str, address: tuple[str, int], tasks: int) -> float:
    _queue_fast(url, address, tasks)
    argv = [sys.executable, str(Path(__file__).resolve()), "--floor-worker", url, f"{address[0]}:{address[1]}",
            TRUE]
    return _until_done(url, tasks, [spawn(argv, stdout=subprocess.DEVNULL) for _ in range(WORKERS)])


def pheanq_e2e(url: str, address: tuple[str, int], tasks: int) -> float:
    _queue_fast(url, address, tasks)
    return _until_done(url, tasks, _pheanq_workers(url, address, ["true", TRUE]))


def floor_pickup(url: str, address: tuple[str, int], tasks: int) -> list[float]:
    """Milliseconds from a put to its command's start, one job at a time on an idle queue."""
    stamps = Path(tempfile.mkdtemp(prefix="pheanq-floor-pickup-")) / "stamps"
    argv = [sys.executable, str(Path(__file__).resolve()), "--floor-worker", url, f"{address[0]}:{address[1]}",
            *_stamp(stamps)]
    workers = [spawn(argv, stdout=subprocess.DEVNULL) for _ in range(WORKERS)]
    try:
        return _paced(url, address, tasks, stamps)
    finally:
        for worker in workers:
            stop(worker)


def pheanq_pickup(url: str, address: tuple[str, int], tasks: int) -> list[float]:
    stamps = Path(tempfile.mkdtemp(prefix="pheanq-pickup-")) / "stamps"
    workers = _pheanq_workers(url, address, ["stamp", *_stamp(stamps)])
    try:
        return _paced(url, address, tasks, stamps, command="stamp")
    finally:
        for worker in workers:
            stop(worker)


def _stamp(path: Path) -> list[str]:
    """A command that appends the time it started to `path` (the same for pheanq and the floor)."""
    return ["/bin/sh", "-c", f'date +%s.%N >> "{path}"']


def _paced(url: str, address: tuple[str, int], tasks: int, stamps: Path, command: str = "true") -> list[float]:
    """Put `tasks` jobs PICKUP_SPACING apart (each row inserted first); the pickup of each, in ms."""
    driver = Driver(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE)
    data = json.dumps({**DESCRIPTION, "command": command}, separators=(",", ":"))
    time.sleep(1.0)  # the workers are up and waiting (a reserve of theirs is in progress)
    put_at: list[float] = []
    try:
        for _ in range(tasks):
            nonce = secrets.token_hex(8)
            task_id = driver.insert_one(_values(data, nonce, command))
            put_at.append(time.time())
            client.put(_body(task_id, nonce, command), priority=PRIORITY, ttr=TTR)
            time.sleep(PICKUP_SPACING)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = stamps.read_text().split() if stamps.exists() else []
            if len(started) >= tasks:
                return sorted((float(at) - put) * 1000 for at, put in zip(sorted(map(float, started)), put_at,
                                                                           strict=False))
            time.sleep(0.05)
        raise BenchError(f"only {len(started)} of {tasks} paced tasks started")
    finally:
        client.close()
        driver.close()


def _queue_fast(url: str, address: tuple[str, int], tasks: int) -> None:
    """`tasks` new rows and their jobs, as the bulk floor writes them (not timed)."""
    floor_bulk(url, address, tasks)


def _pheanq_workers(url: str, address: tuple[str, int], command: list[str]) -> list[subprocess.Popen[bytes]]:
    """pheanq's side of the floor's 2 worker processes: a worker-tender keeping exactly 2 task-workers, as pheanq
    is deployed (the tender deals with what a dead worker leaves, which lets its workers start commands with one
    exec less; see pheanq.worker.child.die_with_parent)."""
    root = Path(tempfile.mkdtemp(prefix="pheanq-floor-config-"))
    config = root / "pheanq.toml"
    config.write_text(f"[commands]\n{command[0]} = {json.dumps(command[1:])}\n")
    config.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
    env.update(PHEANQ_DATABASE_URL=url, PHEANQ_BEANSTALKD=f"{address[0]}:{address[1]}", PHEANQ_CONFIG=str(config),
               PHEANQ_RUN_DIR=str(root))
    argv = [sys.executable, "-m", "pheanq", "worker-tender", "--min-workers", str(WORKERS), "--max-workers",
            str(WORKERS), "--spare-workers", "0", "--reconcile-interval", "0"]
    return [spawn(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]


def _until_done(url: str, tasks: int, workers: list[subprocess.Popen[bytes]]) -> float:
    """Seconds from the first task's start to the last one's end, once every task is done (the rows' own times:
    the workers' start-up is not counted)."""
    driver = Driver(url)
    try:
        deadline = time.monotonic() + 60 + tasks * 0.2
        while driver.count("done") < tasks:
            if time.monotonic() > deadline or all(worker.poll() is not None for worker in workers):
                raise BenchError(f"{driver.count('done')} of {tasks} tasks done; the workers: "
                                 f"{[worker.poll() for worker in workers]}")
            time.sleep(0.02)
        return driver.span()
    finally:
        driver.close()
        for worker in workers:
            stop(worker)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _values(data: str, nonce: str, command: str = "true") -> tuple[Any, ...]:
    now = _now()
    return (command, data, TUBE, "new", PRIORITY, TTR, now, now, nonce)


def _body(task_id: int, nonce: str, command: str = "true") -> bytes:
    return json.dumps({"pheanq": 1, "task_id": task_id, "nonce": nonce,
                       "description": {**DESCRIPTION, "command": command}}, separators=(",", ":")).encode()


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
             f"{'database':11} {'row':10} {'pheanq':>24} {'floor':>24} {'ratio':>6}"]

    def side(rates: list[float]) -> str:
        return f"{statistics.median(rates):7.0f} ({min(rates):.0f} .. {max(rates):.0f})"

    for kind, rows in figures.items():
        for row, sides in rows.items():
            mine, floor = statistics.median(sides["pheanq"]), statistics.median(sides["floor"])
            if row.startswith("pickup"):
                lines.append(f"{kind:11} {row:10} {mine:8.1f} ms {'':13} {floor:8.1f} ms {'':13} "
                             f"{mine - floor:+5.1f} ms")
                continue
            lines.append(f"{kind:11} {row:10} {side(sides['pheanq']):>24} {side(sides['floor']):>24} "
                         f"{mine / floor:6.2f}")
    lines.append("")
    lines.append(machine_line(info))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
