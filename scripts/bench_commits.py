"""What one PostgreSQL on this machine sustains for pheanq-shaped work: the ceiling of the capacity model in
docs/deployment.rst. Medians of --runs runs, on a private, throwaway PostgreSQL cluster (never the machine's own
server) whose database pheanq's own `pheanq db upgrade` made.

- **compare-and-set UPDATE**: commits/s of pgbench (the server's own client, in C, statements prepared by the
  server as psycopg prepares pheanq's hot statements) running one statement a transaction, for 1, 4 and 16
  clients, with `synchronous_commit` on and off: a one-row UPDATE of `pheanq_task` by primary key whose WHERE
  names the statuses it moves from. It moves the row `new` -> `working` or back, so it changes an indexed column
  and fires pheanq's count trigger: the shape of a claim and of an end::

      UPDATE pheanq_task SET status = CASE status WHEN 'new' THEN 'working' ELSE 'new' END,
             attempts = attempts + 1, modified = ..., heartbeat = ...
       WHERE id = :id AND status IN ('new', 'working')

  on a random one of --rows rows. Before each run the table is vacuumed, the count trigger's change rows are
  emptied and a CHECKPOINT is taken, so that every run starts alike. From the server's statistics, each run also
  gives the commits per WAL flush and the milliseconds of a flush (`pg_stat_wal`, with `track_wal_io_timing`):
  with `synchronous_commit = on` a commit waits for its flush, and the clients that commit meanwhile share the
  next one (group commit), so the flush time of this machine's disk is what bounds the figure.
- **end to end** (skipped with --no-e2e): --tasks tasks queued one at a time with `queue_task`, then run by a
  `pheanq worker-tender` keeping 2 task-workers (`/bin/true`, as ./scripts/bench's e2e row), with each setting of
  `synchronous_commit`: tasks/s of each side, and the transactions each task cost the database, counted by
  PostgreSQL itself (`pg_stat_database.xact_commit`, the benchmark's own reads taken off). Then the
  transactions per second of an idle tender and its 2 workers, over --idle seconds: the cost of a host that does
  nothing, and the connections they hold.
- **cleanup** (skipped with --no-cleanup): what `pheanq task-cleanup` does to --cleanup-rows done tasks (pheanq's
  own DELETE, through its store), and the VACUUM that must then reclaim the dead rows: seconds and megabytes of
  WAL (what a replica must receive too); beside them, the DROP of a table holding the same rows with the same
  indexes, which is what dropping a time partition of the task table would cost (pheanq has no partitions: this
  is the plan's figure, not a feature).

    ./scripts/bench-commits [--runs R] [--seconds S] [--clients 1,4,16] [--rows N] [--tasks N] [--idle S]
                            [--cleanup-rows N] [--no-e2e] [--no-cleanup] [--json]

Exit code 0 when every figure was taken; 1 when one could not be (it says why); 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
# What a cleanup costs: pheanq's DELETE of old done tasks (and the VACUUM that must follow it) against dropping a
# table that holds the same rows with the same indexes, as dropping a time partition would.
CLEANUP = ("delete_seconds", "delete_wal_mb", "vacuum_seconds", "vacuum_wal_mb", "drop_seconds", "drop_wal_mb")
SERVER_SETTINGS = ("server_version", "fsync", "wal_sync_method", "shared_buffers", "max_wal_size")
Figures = dict[str, Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2, no usage dump
        self.exit(2, f"bench-commits: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    info = machine()
    figures: Figures = {"update": {setting: {str(n): [] for n in options.clients} for setting in SETTINGS},
                        "flush": {setting: {str(n): [] for n in options.clients} for setting in SETTINGS},
                        "cleanup": {key: [] for key in CLEANUP},
                        "e2e": {setting: {"queue_per_second": [], "queue_commits_per_task": [],
                                          "run_per_second": [], "run_commits_per_task": []}
                                for setting in SETTINGS},
                        "idle_commits_per_second": [], "idle_connections": [], "server": {}}

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
            measure_updates(cluster, url, options, figures["update"], figures["flush"])
            if options.e2e:
                measure_end_to_end(cluster.url, url, options, figures)
            if options.cleanup:
                measure_cleanup(cluster.url, url, options, figures["cleanup"])
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
                                ("--idle", 10, "seconds an idle tender is watched"),
                                ("--cleanup-rows", 100_000, "done tasks deleted per cleanup run")):
        parser.add_argument(flag, type=positive, default=default, metavar="N", help=f"{what} (default: %(default)s)")
    parser.add_argument("--clients", type=client_counts, default=list(DEFAULT_CLIENTS), metavar="N,N,...",
                        help="pgbench's clients, one run each (default: 1,4,16)")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end figures")
    parser.add_argument("--no-cleanup", dest="cleanup", action="store_false", help="skip the cleanup figures")
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
                    found: dict[str, dict[str, list[float]]], flushes: dict[str, dict[str, list[list[float]]]]) -> None:
    """pgbench's commits/s; and per run, from the server's statistics, the commits per WAL flush (fdatasync) and
    the milliseconds a flush took: with synchronous_commit on, a commit waits for its flush, and the commits of
    other clients that arrived meanwhile share it (group commit)."""
    autocommit(cluster.url, "ALTER SYSTEM SET track_wal_io_timing = on", "SELECT pg_reload_conf()")
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
                    before = wal_flushes(cluster.url)
                    rate = pgbench(cluster, script, clients, options)
                    commits, syncs, sync_ms = (after - first for after, first in
                                               zip(wal_flushes(cluster.url), before, strict=True))
                    found[setting][str(clients)].append(rate)
                    flushes[setting][str(clients)].append([commits / max(syncs, 1), sync_ms / max(syncs, 1)])
                    progress(f"run {run + 1}/{options.runs} synchronous_commit={setting}, {clients} client(s): "
                             f"{rate:.0f} commits/s, {commits / max(syncs, 1):.1f} commits a WAL flush of "
                             f"{sync_ms / max(syncs, 1):.2f} ms")
    set_synchronous_commit(url, "on")


def wal_flushes(server_url: str) -> tuple[int, int, float]:
    """The benchmark database's commits, and the server's WAL flushes and their milliseconds, so far (the sessions
    that wrote them have ended)."""
    commits = settled(server_url)
    (syncs,) = autocommit(server_url, "SELECT wal_sync || ' ' || wal_sync_time FROM pg_stat_wal")
    count, milliseconds = str(syncs).split()
    return commits, int(count), float(milliseconds)


def fill(url: str, rows: int, table: str = "pheanq_task", status: str = "new", age: str = "0 s") -> None:
    """`rows` tasks in `status`, ids 1..rows, created and (when done) finished `age` ago, as pheanq writes them;
    the count trigger's change rows are dropped."""
    engine = create_engine(url)
    finished = "LOCALTIMESTAMP - CAST(:age AS interval)" if status == "done" else "NULL"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {table}, pheanq_count_change, pheanq_count RESTART IDENTITY CASCADE"))
            conn.execute(sa.text(
                f"INSERT INTO {table} (command, data, tube, status, priority, ttr, attempts, created, modified, "
                "started, finished, exit_code, nonce) SELECT 'true', "
                "'{\"command\":\"true\",\"arguments\":[],\"options\":{}}', 'pheanq', :status, 1024, 60, 0, "
                f"LOCALTIMESTAMP - CAST(:age AS interval), LOCALTIMESTAMP, {finished}, {finished}, "
                f"{'0' if status == 'done' else 'NULL'}, substr(md5(n::text), 1, 16) "
                "FROM generate_series(1, :rows) AS n"), {"rows": rows, "status": status, "age": age})
            conn.execute(sa.text("TRUNCATE pheanq_count_change"))
    finally:
        engine.dispose()
    autocommit(url, f"VACUUM ANALYZE {table}")


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
    rate, connections = idle_tender(server_url, url, options.idle)
    figures["idle_commits_per_second"].append(rate)
    figures["idle_connections"].append(connections)
    progress(f"idle tender and 2 workers: {rate:.2f} commits/s, {connections} connection(s)")


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


def idle_tender(server_url: str, url: str, seconds: int) -> tuple[float, int]:
    """Transactions/s of a tender and its 2 workers with nothing to do, after their start has settled, and the
    connections they hold to the database."""
    with beanstalkd() as address:
        workers = pheanq_workers(url, address, ["true", "/bin/true"])
        try:
            time.sleep(3)  # the tender's and the workers' start
            before = committed(server_url)
            time.sleep(seconds)
            after = committed(server_url)
            (connections,) = autocommit(server_url, "SELECT count(*) FROM pg_stat_activity "
                                                    f"WHERE datname = '{DATABASE}'")
        finally:
            for worker in workers:
                stop(worker)
    return (after - before) / seconds, int(connections)


# --- what a cleanup costs ----------------------------------------------------------------------------------------


def measure_cleanup(server_url: str, url: str, options: argparse.Namespace, found: dict[str, list[float]]) -> None:
    from pheanq.storage import Store

    rows = options.cleanup_rows
    for run in range(options.runs):
        fill(url, rows, status="done", age="2 days")
        autocommit(url, "CHECKPOINT")
        store = Store(url)
        cutoff = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=1)
        try:  # what `pheanq task-cleanup --period 86400` runs
            seconds, wal = timed_wal(server_url, functools.partial(store.tasks.delete_done_before, cutoff))
        finally:
            store.close()
        found["delete_seconds"].append(seconds)
        found["delete_wal_mb"].append(wal)
        seconds, wal = timed_wal(server_url, lambda: autocommit(url, "VACUUM pheanq_task"))
        found["vacuum_seconds"].append(seconds)
        found["vacuum_wal_mb"].append(wal)
        autocommit(url, "DROP TABLE IF EXISTS pheanq_task_partition",
                   "CREATE TABLE pheanq_task_partition (LIKE pheanq_task INCLUDING ALL)")
        fill(url, rows, table="pheanq_task_partition", status="done", age="2 days")
        autocommit(url, "CHECKPOINT")
        seconds, wal = timed_wal(server_url, lambda: autocommit(url, "DROP TABLE pheanq_task_partition"))
        found["drop_seconds"].append(seconds)
        found["drop_wal_mb"].append(wal)
        progress(f"run {run + 1}/{options.runs} cleanup of {rows:,} done tasks: DELETE "
                 f"{found['delete_seconds'][-1]:.2f} s, {found['delete_wal_mb'][-1]:.1f} MB of WAL, then VACUUM "
                 f"{found['vacuum_seconds'][-1]:.2f} s, {found['vacuum_wal_mb'][-1]:.1f} MB; DROP of a table of "
                 f"the same rows {seconds:.3f} s, {wal:.3f} MB")


def timed_wal(server_url: str, action: Callable[[], object]) -> tuple[float, float]:
    """Seconds `action` took, and the megabytes of WAL the server wrote meanwhile."""
    (start,) = autocommit(server_url, "SELECT pg_current_wal_insert_lsn()::text")
    began = time.perf_counter()
    action()
    seconds = time.perf_counter() - began
    (written,) = autocommit(server_url, f"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{start}')")
    return seconds, float(written) / 1e6


# --- the table ------------------------------------------------------------------------------------------------


def flush_cell(runs: list[list[float]]) -> str:
    if not runs:
        return "-"
    return (f"{statistics.median(run[0] for run in runs):.1f} / "
            f"{statistics.median(run[1] for run in runs):.2f} ms")


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
    lines += ["", "the same runs: commits per WAL flush / milliseconds per flush (fdatasync), medians",
              f"{'clients':<10}{'synchronous_commit=on':<28}{'synchronous_commit=off':<28}"]
    for clients in options.clients:
        lines.append(f"{clients:<10}" + "".join(
            f"{flush_cell(figures['flush'][setting][str(clients)]):<28}" for setting in SETTINGS))
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
                     f"transactions/s over {options.idle} s, holding {max(figures['idle_connections'])} "
                     "connection(s)")
    if options.cleanup:
        cleanup = figures["cleanup"]
        lines += ["", f"cleanup of {options.cleanup_rows:,} done tasks; median (min-max) of {options.runs} run(s)",
                  f"{'':<44}{'seconds':<24}{'WAL, MB':<24}",
                  f"{'DELETE (pheanq task-cleanup)':<44}{cell(cleanup['delete_seconds'], 2):<24}"
                  f"{cell(cleanup['delete_wal_mb'], 1):<24}",
                  f"{'  then VACUUM of pheanq_task':<44}{cell(cleanup['vacuum_seconds'], 2):<24}"
                  f"{cell(cleanup['vacuum_wal_mb'], 1):<24}",
                  f"{'DROP TABLE of the same rows and indexes':<44}{cell(cleanup['drop_seconds'], 3):<24}"
                  f"{cell(cleanup['drop_wal_mb'], 3):<24}"]
    server = figures["server"]
    lines += ["", f"PostgreSQL {server['server_version']}, a private cluster (data under {tempfile.gettempdir()}), "
              f"fsync={server['fsync']}, wal_sync_method={server['wal_sync_method']}, "
              f"shared_buffers={server['shared_buffers']}, max_wal_size={server['max_wal_size']}",
              machine_line(info)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
