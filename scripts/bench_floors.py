"""The floors of pheanq's hot path: the same durable work as pheanq's, written on the database drivers and
greenstalk with nothing of pheanq in them; and what both sides of scripts/bench share to be timed alike (the rows
queued before an end-to-end run, the wait for them to be done, the paced puts of the pickup).

The drivers: `sqlite3` (WAL, synchronous=NORMAL, as pheanq sets SQLite), `psycopg` (statements prepared by the
server) and `pymysql`. Run as a script, this module is one floor worker process:

    python scripts/bench_floors.py --floor-worker DATABASE_URL HOST:PORT COMMAND...
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import greenstalk
from benchlib import TUBE, BenchError, parse_address, spawn, stop

PRIORITY = 1024            # pheanq's DEFAULT_PRIORITY
TTR = 60                   # pheanq's DEFAULT_TTR
CHUNK = 500                # rows per multi-row INSERT, and tasks per queue_many call on pheanq's side
WORKERS = 2
TRUE = "/bin/true"
# Jobs put one at a time this far apart when pickup is measured: each finds the workers idle.
PICKUP_SPACING = 0.05
COLUMNS = ("command", "data", "tube", "status", "priority", "ttr", "created", "modified", "nonce")
DESCRIPTION = {"command": "true", "arguments": [], "options": {}, "type": "pheanq.description.TaskDescription"}


def main(argv: list[str]) -> int:
    if argv[:1] != ["--floor-worker"] or len(argv) < 4:
        print("bench_floors: usage: bench_floors.py --floor-worker DATABASE_URL HOST:PORT COMMAND...",
              file=sys.stderr)
        return 2
    url, address, *command = argv[1:]
    return floor_worker(url, parse_address(address), command)


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
    queue_untimed(url, address, tasks)
    return until_done(url, tasks, floor_workers(url, address, [TRUE]))


def floor_pickup(url: str, address: tuple[str, int], tasks: int) -> list[float]:
    """Milliseconds from a put to its command's start, one job at a time on an idle queue."""
    stamps = Path(tempfile.mkdtemp(prefix="pheanq-floor-pickup-")) / "stamps"
    workers = floor_workers(url, address, stamp(stamps))
    try:
        return paced(url, address, tasks, stamps)
    finally:
        for worker in workers:
            stop(worker)


def floor_workers(url: str, address: tuple[str, int], argv: list[str]) -> list[subprocess.Popen[bytes]]:
    """WORKERS floor worker processes (this module run as a script), each running `argv` for every task."""
    worker = [sys.executable, str(Path(__file__).resolve()), "--floor-worker", url, f"{address[0]}:{address[1]}",
              *argv]
    return [spawn(worker, stdout=subprocess.DEVNULL) for _ in range(WORKERS)]


def stamp(path: Path) -> list[str]:
    """A command that appends the time it started to `path` (the same for pheanq and the floor)."""
    return ["/bin/sh", "-c", f'date +%s.%N >> "{path}"']


def paced(url: str, address: tuple[str, int], tasks: int, stamps: Path, command: str = "true") -> list[float]:
    """Put `tasks` jobs PICKUP_SPACING apart (each row inserted first); the pickup of each, in ms."""
    driver = Driver(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE)
    data = json.dumps({**DESCRIPTION, "command": command}, separators=(",", ":"))
    put_at: list[float] = []
    try:
        wait_for_reserves(client)
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


def wait_for_reserves(client: greenstalk.Client[bytes]) -> None:
    """Return once WORKERS reserves wait on the tube: every worker is up and idle, so that no pickup counts a
    worker's start (a worker-tender starts its workers after its own start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if int(client.stats_tube(TUBE)["current-waiting"]) >= WORKERS:
                return
        except greenstalk.NotFoundError:
            pass  # no worker watches the tube yet
        time.sleep(0.02)
    raise BenchError(f"{WORKERS} workers were not waiting for jobs 30 s after their start")


def queue_untimed(url: str, address: tuple[str, int], tasks: int) -> None:
    """`tasks` new rows and their jobs, as the bulk floor writes them (not timed)."""
    floor_bulk(url, address, tasks)


def until_done(url: str, tasks: int, workers: list[subprocess.Popen[bytes]]) -> float:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
