"""pheanq's hot path beside its floors, on SQLite, PostgreSQL and MariaDB, in one run.

A floor is what the database drivers and greenstalk allow for the same durable work, with nothing of pheanq in
it. docs/performance.rst defines each row exactly.

- **enqueue**: `TaskQueueService.queue_task`, one task at a time; the floor INSERTs the row and commits, then
  puts its job (the minimum durable order: the row before the job).
- **bulk**: `TaskQueueService.queue_many` in chunks of 500; the floor makes one multi-row INSERT ... RETURNING id
  and a commit per chunk, then one put per task.
- **e2e**: a `pheanq worker-tender` keeping 2 task-workers (as pheanq is deployed) runs `/bin/true` tasks; the
  floor is 2 worker processes on the drivers (scripts/bench_floors.py). Timed from the first task's start to the
  last one's end, on rows and jobs queued beforehand.
- **pickup**: one job at a time on an idle queue, 50 ms apart, from the put to the command's start; p50, p99.
- **memory**: the resident memory of an idle `pheanq task-worker` and `worker-tender` (SQLite only).

Each run gets a fresh beanstalkd and an empty table; the two sides alternate which goes first. Prints a table
(or --json) with the medians, min and max, the ratio pheanq / floor, and the machine and versions it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_floors import (
    CHUNK,
    TRUE,
    WORKERS,
    floor_bulk,
    floor_e2e,
    floor_enqueue,
    floor_pickup,
    paced,
    queue_untimed,
    stamp,
    until_done,
)
from benchlib import (
    BenchError,
    beanstalkd,
    machine,
    machine_line,
    measured,
    percentile,
    positive,
    spawn,
    stop,
)

DEFAULT_URLS = {
    "sqlite": "",   # a fresh file per run
    "postgresql": "postgresql://postgres@127.0.0.1:5432/pheanq_bench",
    "mysql": "mysql://root@127.0.0.1:3306/pheanq_bench",
}
ROWS = ("enqueue", "bulk", "e2e", "pickup", "memory")
Figures = dict[str, dict[str, list[float]]]   # row → side ("pheanq", "floor") → one figure per run
Timed = Callable[[str, tuple[str, int], int], float]   # (database URL, beanstalkd, tasks) → seconds taken


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    info = machine()
    info.update(drivers())
    figures: dict[str, Figures] = {}
    memory: dict[str, float] = {}

    def measure_all() -> None:
        with tempfile.TemporaryDirectory(prefix="pheanq-bench-", ignore_cleanup_errors=True) as root:
            # Every temporary directory a measurement makes lands in this one, removed at the end.
            tempfile.tempdir = root
            try:
                for kind in options.databases:
                    figures[kind] = measure(kind, options.urls.get(kind, ""), Path(root), options)
                if "memory" in options.only and "sqlite" in options.databases:
                    memory.update(resident_memory())
            finally:
                tempfile.tempdir = None

    code = measured("bench", measure_all)
    if code:
        return code
    if options.json:
        print(json.dumps({"runs": options.runs, "tasks": options.tasks, "tasks_e2e": options.tasks_e2e,
                          "pickups": options.pickups, "workers": WORKERS, "machine": info, "figures": figures,
                          "resident_mb": memory}, indent=2))
    else:
        if any(figures.values()):
            print(format_table(figures, info, options.runs))
        if memory:
            print(f"resident memory, idle, SQLite: task-worker {memory['worker']:.1f} MB (goal 45), worker-tender "
                  f"{memory['tender']:.1f} MB (goal 35)")
    return 0


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.splitlines()[0],
        epilog="A whole run (all rows, all three databases, --runs 3, the default sizes) takes about 5 minutes on "
               "2 cores; --database and --only make it shorter.")
    parser.add_argument("--database", default="sqlite,postgresql,mysql", metavar="KINDS",
                        help="comma-separated: sqlite, postgresql, mysql (default: all three)")
    parser.add_argument("--only", default=",".join(ROWS), metavar="ROWS",
                        help=f"comma-separated rows to measure: {', '.join(ROWS)} (default: all; memory is read "
                             "on SQLite only)")
    parser.add_argument("--postgres-url", default=DEFAULT_URLS["postgresql"], metavar="URL",
                        help="made if missing, its pheanq_task table emptied (default: %(default)s)")
    parser.add_argument("--mysql-url", default=DEFAULT_URLS["mysql"], metavar="URL",
                        help="made if missing, its pheanq_task table emptied (default: %(default)s)")
    parser.add_argument("--tasks", type=positive, default=2000, metavar="N",
                        help="tasks per enqueue run; bulk runs 10 times as many (default: %(default)s)")
    parser.add_argument("--tasks-e2e", type=positive, default=500, metavar="N",
                        help="tasks per end-to-end run (default: %(default)s)")
    parser.add_argument("--pickups", type=positive, default=40, metavar="N",
                        help="jobs per pickup run (default: %(default)s)")
    parser.add_argument("--runs", type=positive, default=3, metavar="R",
                        help="runs of each row; the median is reported (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    options.databases = listed(parser, "--database", options.database, tuple(DEFAULT_URLS))
    options.only = listed(parser, "--only", options.only, ROWS)
    if options.only == ["memory"] and "sqlite" not in options.databases:
        parser.error("--only memory: the resident memory is read on SQLite only; add sqlite to --database")
    options.urls = {"postgresql": options.postgres_url, "mysql": options.mysql_url}
    return options


def listed(parser: argparse.ArgumentParser, option: str, text: str, known: tuple[str, ...]) -> list[str]:
    """The comma-separated names of `text`, each one of `known`; a parser error (exit 2) otherwise."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        parser.error(f"{option}: name at least one of {', '.join(known)}")
    if unknown := [name for name in names if name not in known]:
        parser.error(f"{option}: unknown {unknown[0]!r} (one of {', '.join(known)})")
    return names


def measure(kind: str, url: str, root: Path, options: argparse.Namespace) -> Figures:
    """Per (row, side), every run: tasks/s (enqueue, bulk, e2e) or milliseconds (pickup p50, p99)."""
    tasks: int = options.tasks
    runs: int = options.runs
    only: list[str] = options.only
    every_rate: list[tuple[str, int, list[tuple[str, Timed]]]] = [
        ("enqueue", tasks, [("pheanq", pheanq_queue), ("floor", floor_enqueue)]),
        ("bulk", tasks * 10, [("pheanq", pheanq_bulk), ("floor", floor_bulk)]),
        ("e2e", options.tasks_e2e, [("pheanq", pheanq_e2e), ("floor", floor_e2e)])]
    rates = [(row, count, sides) for row, count, sides in every_rate if row in only]
    pickups: list[tuple[str, Callable[[str, tuple[str, int], int], list[float]]]] = [
        ("pheanq", pheanq_pickup), ("floor", floor_pickup)]
    found: Figures = {row: {"pheanq": [], "floor": []} for row, _count, _sides in rates}
    if "pickup" in only:
        found.update({"pickup_p50": {"pheanq": [], "floor": []}, "pickup_p99": {"pheanq": [], "floor": []}})
    for run in range(runs):
        # Alternate which side goes first, so that a drift in the machine's load hits both alike.
        for row, count, sides in rates:
            for side, take in sides if run % 2 == 0 else sides[::-1]:
                database = fresh_table(kind, url, root / f"{kind}-{row}-{side}-{run}.db", side)
                with beanstalkd() as address:
                    seconds = take(database, address, count)
                found[row][side].append(count / seconds)
                print(f"bench: {kind} {row} run {run + 1}/{runs} {side}: {count / seconds:.0f} tasks/s",
                      file=sys.stderr, flush=True)
        if "pickup" not in only:
            continue
        for side, pickup in pickups if run % 2 == 0 else pickups[::-1]:
            database = fresh_table(kind, url, root / f"{kind}-pickup-{side}-{run}.db", side)
            with beanstalkd() as address:
                latencies = pickup(database, address, options.pickups)
            found["pickup_p50"][side].append(percentile(latencies, 50))
            found["pickup_p99"][side].append(percentile(latencies, 99))
            print(f"bench: {kind} pickup run {run + 1}/{runs} {side}: p50 {percentile(latencies, 50):.1f} ms",
                  file=sys.stderr, flush=True)
    return found


def fresh_table(kind: str, url: str, sqlite_file: Path, side: str = "pheanq") -> str:
    """An empty, upgraded pheanq_task table: a new SQLite file, or the server database emptied. The floor's has no
    triggers: the task counts they keep are pheanq's work, not the floor's, so its server database is another one
    (`<name>_floor`)."""
    import sqlalchemy as sa

    from pheanq.storage import Store
    from pheanq.storage.migrate import upgrade_database

    if kind == "sqlite":
        url = f"sqlite:///{sqlite_file}"
    else:
        if side == "floor":
            given = sa.engine.make_url(url)
            url = given.set(database=f"{given.database}_floor").render_as_string(hide_password=False)
        create_database(url)
    store = Store(url)
    try:
        upgrade_database(store)
        with store.database.transaction() as conn:
            for table in ("pheanq_task", "pheanq_count_change", "pheanq_count"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
            if side == "floor":
                on_table = " ON pheanq_task" if kind == "postgresql" else ""
                for event in ("insert", "update", "delete"):
                    conn.execute(sa.text(f"DROP TRIGGER IF EXISTS pheanq_count_{event}{on_table}"))
    finally:
        store.close()
    return url


def create_database(url: str) -> None:
    """The server database of `url`, made if missing; a BenchError when the server does not answer."""
    import sqlalchemy as sa

    from pheanq.storage.engine import create_engine

    given = sa.engine.make_url(url)
    server = given.set(database="postgres" if given.get_backend_name() == "postgresql" else "")
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


# --- pheanq's side ------------------------------------------------------------------------------------------------


def pheanq_queue(url: str, address: tuple[str, int], tasks: int) -> float:
    """Seconds pheanq takes to queue `tasks` tasks one at a time."""
    from pheanq.config import Settings
    from pheanq.description import TaskDescription
    from pheanq.producer.service import TaskQueueService

    service = TaskQueueService(Settings(database_url=url, beanstalkd=address))
    try:
        started = time.perf_counter()
        for _ in range(tasks):
            service.queue_task(TaskDescription("true"))
        return time.perf_counter() - started
    finally:
        service.close()


def pheanq_bulk(url: str, address: tuple[str, int], tasks: int) -> float:
    """Seconds pheanq takes to queue `tasks` tasks with queue_many, CHUNK at a time."""
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


def pheanq_e2e(url: str, address: tuple[str, int], tasks: int) -> float:
    queue_untimed(url, address, tasks)
    return until_done(url, tasks, pheanq_workers(url, address, ["true", TRUE]))


def pheanq_pickup(url: str, address: tuple[str, int], tasks: int) -> list[float]:
    stamps = Path(tempfile.mkdtemp(prefix="pheanq-pickup-")) / "stamps"
    workers = pheanq_workers(url, address, ["stamp", *stamp(stamps)])
    try:
        return paced(url, address, tasks, stamps, command="stamp")
    finally:
        for worker in workers:
            stop(worker)


def pheanq_workers(url: str, address: tuple[str, int], command: list[str]) -> list[subprocess.Popen[bytes]]:
    """pheanq's side of the floor's 2 worker processes: a worker-tender keeping exactly 2 task-workers, as pheanq
    is deployed (the tender deals with what a dead worker leaves, which lets its workers start commands with one
    exec less; see pheanq.worker.child.die_with_parent). `command` is the config's name, then its argv."""
    root = Path(tempfile.mkdtemp(prefix="pheanq-bench-config-"))
    config = root / "pheanq.toml"
    config.write_text(f"[commands]\n{command[0]} = {json.dumps(command[1:])}\n")
    config.chmod(0o600)
    argv = [sys.executable, "-m", "pheanq", "worker-tender", "--min-workers", str(WORKERS), "--max-workers",
            str(WORKERS), "--spare-workers", "0", "--reconcile-interval", "0"]
    return [spawn(argv, env=pheanq_env(url, address, config, root), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)]


def pheanq_env(url: str, address: tuple[str, int], config: str | Path, run_dir: Path) -> dict[str, str]:
    """This process's environment, with pheanq's settings replaced by the benchmark's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
    env.update(PHEANQ_DATABASE_URL=url, PHEANQ_BEANSTALKD=f"{address[0]}:{address[1]}", PHEANQ_CONFIG=str(config),
               PHEANQ_RUN_DIR=str(run_dir))
    return env


def resident_memory() -> dict[str, float]:
    """MB of resident memory of an idle `pheanq task-worker`, and of a `pheanq worker-tender` (with one worker,
    not counted), on SQLite."""
    import psutil

    directory = Path(tempfile.mkdtemp(prefix="pheanq-bench-memory-"))
    url = fresh_table("sqlite", "", directory / "pheanq.db")
    found: dict[str, float] = {}
    with beanstalkd() as address:
        env = pheanq_env(url, address, os.devnull, directory / "run")
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
    print(f"bench: resident memory, idle: task-worker {found['worker']:.1f} MB, worker-tender "
          f"{found['tender']:.1f} MB", file=sys.stderr, flush=True)
    return found


# --- the report ---------------------------------------------------------------------------------------------------


def drivers() -> dict[str, str]:
    found = {}
    for name in ("psycopg", "PyMySQL"):
        try:
            found[name.lower()] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name.lower()] = "not installed"
    return found


def format_table(figures: dict[str, Figures], info: dict[str, Any], runs: int) -> str:
    lines = [f"bench: tasks/s, medians of {runs} run(s) (min .. max); ratio = pheanq / floor; pickup in ms, "
             "its last column pheanq - floor", "",
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
