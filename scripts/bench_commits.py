"""What one PostgreSQL on this machine sustains for pheanq-shaped work: the ceiling of the capacity model in
docs/deployment.rst. Medians of --runs runs, on a private, throwaway PostgreSQL cluster (never the machine's own
server) whose database pheanq's own `pheanq db upgrade` made.

- **compare-and-set UPDATE**: commits/s of pgbench (the server's own client, in C, statements prepared by the
  server as psycopg prepares pheanq's hot statements) running one statement a transaction, for 1, 4 and 16
  clients, with `synchronous_commit` on and off: a one-row UPDATE of `pheanq_task` by primary key whose WHERE
  names the statuses it moves from, as a claim and an end do. It moves the row `new` -> `working` or back, so it
  changes an indexed column and fires pheanq's count trigger, as a claim and an end do::

      UPDATE pheanq_task SET status = CASE status WHEN 'new' THEN 'working' ELSE 'new' END,
             attempts = attempts + 1, modified = ..., heartbeat = ...
       WHERE id = :id AND status IN ('new', 'working')

  on a random one of --rows rows. Before each run the table is vacuumed, the count trigger's change rows are
  emptied and a CHECKPOINT is taken, so that every run starts alike.
- **end to end** (skipped with --no-e2e): --tasks tasks queued one at a time with `queue_task`, then run by a
  `pheanq worker-tender` keeping 2 task-workers (`/bin/true`, as ./scripts/bench's e2e row), with each setting of
  `synchronous_commit`: tasks/s of each side, and the transactions each task cost the database, counted by
  PostgreSQL itself (`pg_stat_database.xact_commit`, the benchmark's own reads taken off). Then the
  transactions per second of an idle tender and its 2 workers, over --idle seconds: the cost of a host that does
  nothing.

    ./scripts/bench-commits [--runs R] [--seconds S] [--clients 1,4,16] [--rows N] [--tasks N] [--idle S]
                            [--no-e2e] [--json]

Exit code 0 when every figure was taken; 1 when one could not be (it says why); 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy as sa
from bench import create_database, fresh_table, pheanq_queue, pheanq_workers
from bench_floors import Driver
from benchlib import BenchError, beanstalkd, machine, machine_line, measured, positive, stop
from chaos import PostgresCluster, ScenarioFailed

from pheanq.storage.engine import create_engine

DATABASE = "pheanq_bench_commits"
SETTINGS = ("on", "off")     # synchronous_commit
DEFAULT_CLIENTS = (1, 4, 16)
PGBENCH_SCRIPT = """\\set id random(1, :rows)
UPDATE pheanq_task SET status = CASE status WHEN 'new' THEN 'working' ELSE 'new' END,
       attempts = attempts + 1, modified = LOCALTIMESTAMP, heartbeat = LOCALTIMESTAMP
 WHERE id = :id AND status IN ('new', 'working');
"""
TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
SERVER_SETTINGS = ("server_version", "fsync", "wal_sync_method", "shared_buffers", "max_wal_size")
Figures = dict[str, Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2, no usage dump
        self.exit(2, f"bench-commits: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    info = machine()
    figures: Figures = {"update": {setting: {str(n): [] for n in options.clients} for setting in SETTINGS},
                        "e2e": {setting: {"queue_per_second": [], "queue_commits_per_task": [],
                                          "run_per_second": [], "run_commits_per_task": []}
                                for setting in SETTINGS},
                        "idle_commits_per_second": [], "server": {}}

    def measure_all() -> None:
        try:
            cluster = PostgresCluster()
        except ScenarioFailed as error:
            raise BenchError(str(error)) from None
        try:
            cluster.start()
            url = cluster.url.rsplit("/", 1)[0] + f"/{DATABASE}"
            create_database(url)
            upgrade(url)
            figures["server"] = server_settings(cluster.url)
            measure_updates(cluster, url, options, figures["update"])
            if options.e2e:
                measure_end_to_end(cluster.url, url, options, figures)
        except ScenarioFailed as error:
            raise BenchError(str(error)) from None
        finally:
            cluster.remove()

    code = measured("bench-commits", measure_all)
    if code:
        return code
    if options.json:
        print(json.dumps({"options": {key: value for key, value in vars(options).items() if key != "json"},
                          "machine": info, "figures": figures}, indent=2))
    else:
        print(format_table(figures, info, options))
    return 0


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="scripts/bench-commits", description=__doc__.splitlines()[0])
    for flag, default, what in (("--runs", 3, "runs of each figure; the median is reported"),
                                ("--seconds", 10, "seconds of each pgbench run"),
                                ("--rows", 100_000, "rows of pheanq_task the UPDATE picks from"),
                                ("--tasks", 1000, "tasks queued and run per end-to-end run"),
                                ("--idle", 10, "seconds an idle tender is watched")):
        parser.add_argument(flag, type=positive, default=default, metavar="N", help=f"{what} (default: %(default)s)")
    parser.add_argument("--clients", type=client_counts, default=list(DEFAULT_CLIENTS), metavar="N,N,...",
                        help="pgbench's clients, one run each (default: 1,4,16)")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end figures")
    parser.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    return parser.parse_args(argv)


def client_counts(text: str) -> list[int]:
    counts = [positive(part) for part in text.split(",")]
    if any(count > 100 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: at most 100 clients (the private server takes 200 connections)")
    return counts


def progress(text: str) -> None:
    print(f"bench-commits: {text}", file=sys.stderr, flush=True)


# --- the private cluster -------------------------------------------------------------------------------------


def upgrade(url: str) -> None:
    """pheanq's schema, made by `pheanq db upgrade` as an operator makes it."""
    result = subprocess.run([sys.executable, "-m", "pheanq", "--database-url", url, "db", "upgrade"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PHEANQ_CONFIG": "/dev/null"})
    if result.returncode != 0:
        raise BenchError(f"pheanq db upgrade failed: {(result.stderr or result.stdout).strip()[-300:]}")


def autocommit(url: str, *statements: str) -> list[Any]:
    """Run each statement outside a transaction (VACUUM, CHECKPOINT, ALTER DATABASE); the first column of each
    statement's first row, or None."""
    engine = create_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            found = []
            for statement in statements:
                result = conn.exec_driver_sql(statement)
                found.append(result.scalar() if result.returns_rows else None)
            return found
    finally:
        engine.dispose()


def server_settings(url: str) -> dict[str, str]:
    return dict(zip(SERVER_SETTINGS, [str(value) for value in
                                      autocommit(url, *(f"SHOW {name}" for name in SERVER_SETTINGS))],
                    strict=True))


def set_synchronous_commit(url: str, setting: str) -> None:
    """Every new session of the benchmark's database gets `setting`; checked on a new session."""
    autocommit(url, f"ALTER DATABASE {DATABASE} SET synchronous_commit = {setting}")
    (shown,) = autocommit(url, "SHOW synchronous_commit")
    if shown != setting:
        raise BenchError(f"synchronous_commit is {shown!r} on a new session, not {setting!r}")


def committed(server_url: str) -> int:
    """Transactions committed in the benchmark's database so far, read from another database's session (a read
    that is not itself counted). A backend's counts reach the statistics when it ends or commits, at most once a
    second while it is busy: read after the benchmark's sessions have ended."""
    (found,) = autocommit(server_url, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{DATABASE}'")
    return int(found)


# --- the compare-and-set UPDATE, through pgbench --------------------------------------------------------------


def measure_updates(cluster: PostgresCluster, url: str, options: argparse.Namespace,
                    found: dict[str, dict[str, list[float]]]) -> None:
    fill(url, options.rows)
    with tempfile.TemporaryDirectory(prefix="pheanq-bench-commits-") as root:
        script = Path(root) / "cas-update.sql"
        script.write_text(PGBENCH_SCRIPT)
        for run in range(options.runs):
            # Alternate which setting goes first, so that a drift in the machine's load hits both alike.
            for setting in SETTINGS if run % 2 == 0 else SETTINGS[::-1]:
                set_synchronous_commit(url, setting)
                for clients in options.clients:
                    autocommit(url, "TRUNCATE pheanq_count_change", "VACUUM pheanq_task", "CHECKPOINT")
                    rate = pgbench(cluster, script, clients, options)
                    found[setting][str(clients)].append(rate)
                    progress(f"run {run + 1}/{options.runs} synchronous_commit={setting}, {clients} client(s): "
                             f"{rate:.0f} commits/s")
    set_synchronous_commit(url, "on")


def fill(url: str, rows: int) -> None:
    """`rows` new tasks, ids 1..rows, as pheanq writes them (the count trigger's change rows are dropped)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE pheanq_task, pheanq_count_change, pheanq_count RESTART IDENTITY CASCADE"))
            conn.execute(sa.text(
                "INSERT INTO pheanq_task (command, data, tube, status, priority, ttr, attempts, created, modified, "
                "nonce) SELECT 'true', '{\"command\":\"true\",\"arguments\":[],\"options\":{}}', 'pheanq', 'new', "
                "1024, 60, 0, LOCALTIMESTAMP, LOCALTIMESTAMP, substr(md5(n::text), 1, 16) "
                "FROM generate_series(1, :rows) AS n"), {"rows": rows})
            conn.execute(sa.text("TRUNCATE pheanq_count_change"))
    finally:
        engine.dispose()
    autocommit(url, "VACUUM ANALYZE pheanq_task")


def pgbench(cluster: PostgresCluster, script: Path, clients: int, options: argparse.Namespace) -> float:
    """Commits/s of one pgbench run of `script` (one statement a transaction)."""
    argv = [str(cluster.bindir / "pgbench"), "--no-vacuum", "--protocol=prepared", "--file", str(script),
            "--define", f"rows={options.rows}", "--client", str(clients), "--jobs", str(min(clients, 2)),
            "--time", str(options.seconds), "--host", "127.0.0.1", "--port", str(cluster.port),
            "--username", "postgres", DATABASE]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=options.seconds + 120,
                                env={**os.environ, "PGAPPNAME": "bench-commits"})
    except subprocess.TimeoutExpired:
        raise BenchError(f"pgbench with {clients} client(s) did not end") from None
    match = TPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise BenchError(f"pgbench failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return float(match.group(1))


# --- pheanq end to end -----------------------------------------------------------------------------------------


def measure_end_to_end(server_url: str, url: str, options: argparse.Namespace, figures: Figures) -> None:
    for run in range(options.runs):
        for setting in SETTINGS if run % 2 == 0 else SETTINGS[::-1]:
            set_synchronous_commit(url, setting)
            found = end_to_end(server_url, url, options.tasks)
            for key, value in found.items():
                figures["e2e"][setting][key].append(value)
            progress(f"run {run + 1}/{options.runs} end to end, synchronous_commit={setting}: queued "
                     f"{found['queue_per_second']:.0f}/s ({found['queue_commits_per_task']:.2f} commits a task), "
                     f"ran {found['run_per_second']:.0f}/s ({found['run_commits_per_task']:.2f} commits a task)")
    set_synchronous_commit(url, "on")
    fresh_table("postgresql", url, Path("unused.db"))
    figures["idle_commits_per_second"].append(idle_tender(server_url, url, options.idle))
    progress(f"idle tender and 2 workers: {figures['idle_commits_per_second'][-1]:.2f} commits/s")


def end_to_end(server_url: str, url: str, tasks: int) -> dict[str, float]:
    fresh_table("postgresql", url, Path("unused.db"))
    with beanstalkd() as address:
        before = settled(server_url)
        queue_seconds = pheanq_queue(url, address, tasks)   # closes its service: its sessions end
        queued = settled(server_url)
        workers = pheanq_workers(url, address, ["true", "/bin/true"])
        run_seconds, own = run_until_done(url, tasks, workers)
        ran = settled(server_url) - own
    return {"queue_per_second": tasks / queue_seconds, "queue_commits_per_task": (queued - before) / tasks,
            "run_per_second": tasks / run_seconds, "run_commits_per_task": (ran - queued) / tasks}


def settled(server_url: str) -> int:
    """`committed` once the count stops moving: the sessions that just ended have reported."""
    last = committed(server_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = committed(server_url)
        if now == last:
            return now
        last = now
    return last


def run_until_done(url: str, tasks: int, workers: list[subprocess.Popen[bytes]]) -> tuple[float, int]:
    """Seconds from the first task's start to the last one's end (the rows' own times), and the transactions this
    function committed itself to find that out; the workers are stopped before the span is read."""
    driver = Driver(url)
    own = 0
    try:
        deadline = time.monotonic() + 60 + tasks * 0.2
        while True:
            done = driver.count("done")
            own += 1
            if done >= tasks:
                break
            if time.monotonic() > deadline or all(worker.poll() is not None for worker in workers):
                raise BenchError(f"{done} of {tasks} tasks done; the tender: {[w.poll() for w in workers]}")
            time.sleep(0.1)
        for worker in workers:
            stop(worker)
        span = driver.span()
        own += 1
        return span, own
    finally:
        driver.close()
        for worker in workers:
            stop(worker)


def idle_tender(server_url: str, url: str, seconds: int) -> float:
    """Transactions/s of a tender and its 2 workers with nothing to do, after their start has settled."""
    with beanstalkd() as address:
        workers = pheanq_workers(url, address, ["true", "/bin/true"])
        try:
            time.sleep(3)  # the tender's and the workers' start
            before = committed(server_url)
            time.sleep(seconds)
            after = committed(server_url)
        finally:
            for worker in workers:
                stop(worker)
    return (after - before) / seconds


# --- the table ------------------------------------------------------------------------------------------------


def format_table(figures: Figures, info: dict[str, Any], options: argparse.Namespace) -> str:
    def cell(values: list[float], digits: int = 0) -> str:
        if not values:
            return "-"
        return (f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})")

    lines = [f"one-row compare-and-set UPDATE of pheanq_task by primary key, commits/s, pgbench, median "
             f"(min-max) of {options.runs} run(s) of {options.seconds} s",
             f"{'clients':<10}{'synchronous_commit=on':<28}{'synchronous_commit=off':<28}{'off / on':>8}"]
    for clients in options.clients:
        on, off = (figures["update"][setting][str(clients)] for setting in SETTINGS)
        ratio = statistics.median(off) / statistics.median(on)
        lines.append(f"{clients:<10}{cell(on):<28}{cell(off):<28}{ratio:>7.1f}x")
    if options.e2e:
        lines += ["", f"pheanq end to end, {options.tasks} tasks: queue_task one at a time, then a worker-tender "
                  f"keeping 2 task-workers (/bin/true); median (min-max) of {options.runs} run(s)",
                  f"{'':<32}{'synchronous_commit=on':<28}{'synchronous_commit=off':<28}"]
        for key, what, digits in (("queue_per_second", "queue_task, tasks/s", 0),
                                  ("queue_commits_per_task", "  transactions per task", 2),
                                  ("run_per_second", "run, tasks/s", 0),
                                  ("run_commits_per_task", "  transactions per task", 2)):
            on, off = (figures["e2e"][setting][key] for setting in SETTINGS)
            lines.append(f"{what:<32}{cell(on, digits):<28}{cell(off, digits):<28}")
        lines.append(f"{'idle tender + 2 workers':<32}{cell(figures['idle_commits_per_second'], 2)} "
                     f"transactions/s (synchronous_commit=on, over {options.idle} s)")
    server = figures["server"]
    lines += ["", f"PostgreSQL {server['server_version']}, a private cluster (data under {tempfile.gettempdir()}), "
              f"fsync={server['fsync']}, wal_sync_method={server['wal_sync_method']}, "
              f"shared_buffers={server['shared_buffers']}, max_wal_size={server['max_wal_size']}",
              machine_line(info)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
