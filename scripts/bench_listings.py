"""The commands a person runs on a big task table — `status`, `show`, `batch show`, `reconcile --dry-run`,
`task-cleanup` — timed on a table of --rows tasks (default 10 million), on SQLite, PostgreSQL and MariaDB.

Issue 13's goal: each under 1 s on 10 M rows. For every command two figures, medians of --runs:

- **query**: the store calls the command makes (pheanq.storage), in this process, on a warm connection;
- **CLI**: the whole `python -m pheanq ...` process, from its start to its exit (Python's and pheanq's imports,
  the connection, the query, beanstalkd's stats where the command asks for them, the printing).

The table is made by pheanq's own migrations (so its indexes are the real ones), then filled in a few big
statements (PostgreSQL: INSERT ... SELECT over generate_series; MariaDB: over the sequence engine; SQLite: over
a recursive CTE). The fill is kept between runs — PostgreSQL and MariaDB in the database pheanq_bench_listings,
SQLite in a file under --cache-dir — and made again only with --refill, or when the row count or the mix
differs. Each run first upgrades the kept table to pheanq's newest schema and says how long that took (a new
index on a big table is built then). A fresh in-memory beanstalkd answers the commands' tube stats.

The mix, on N rows: the last min(5000, N/10) are live (60 % new, 5 % working, 15 % waiting on the task before,
10 % retrying, 5 % restarted, 5 % stalled); the rest is history: 97 % done, 2 % failed, 0.6 % cancelled,
0.4 % upstream_failed. Four tubes (pheanq 60 %, mail 25 %, reports 10 %, images 5 %), each with its own
command. 1 % of the rows are in batches of 1000 (finished), and 200,000 rows from the middle plus 1 % of the
live ones in one big batch still running. Every ended task has a log: an attempt line (about 60 bytes), 600
bytes of output for one done task in 10, 1.5 KB for a failed one. Created over the last 30 days.

    ./scripts/bench-listings [--database sqlite,postgresql,mysql] [--rows N] [--runs R] [--refill]
                             [--cache-dir DIR] [--postgres-url URL] [--mysql-url URL] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from benchlib import BenchError, beanstalkd, machine, machine_line, positive, stop_all

from pheanq.body import encode_data
from pheanq.description import TaskDescription
from pheanq.ops.metrics import read_table
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS
from pheanq.ops.report import PROGRESS_SHOWN
from pheanq.storage import Store
from pheanq.storage.engine import create_engine
from pheanq.storage.migrate import upgrade_database

DEFAULT_URLS = {
    "sqlite": "",   # a file under --cache-dir
    "postgresql": "postgresql://postgres@127.0.0.1:5432/pheanq_bench_listings",
    "mysql": "mysql://root@127.0.0.1:3306/pheanq_bench_listings",
}
# Bump when the fill changes: a kept table of another mix is filled again.
MIX_VERSION = 1
# The bench's own note in the database: how many rows of which mix a completed fill wrote.
FILL_TABLE = "bench_listings_fill"
HISTORY_DAYS = 30
SMALL_BATCH_EVERY = 100_000    # rows of id range per small batch; 1 % of them join it
BIG_BATCH_ROWS = 200_000
LIVE_ROWS = 5000
# (tube, command, arguments) and each tube's share of the rows, in twentieths.
TUBES = (("pheanq", "resize-avatar", ["--user", "4711", "--size", "256"], 12),
         ("mail", "send-mail", ["--template", "weekly-digest", "--to", "user-4711@example.com"], 5),
         ("reports", "build-report", ["--account", "981", "--month", "2026-10", "--format", "pdf"], 2),
         ("images", "thumbnail", ["s3://bucket/uploads/2026/10/31/4711/original.jpg"], 1))
WORKER = "app-host-3:24817"
OUTPUT_LINE = "processed 4711 items in 2.31 s; 0 warnings; cache hits 97.2 %; wrote 18 rows\n"


@dataclass(frozen=True)
class Fill:
    rows: int
    live_from: int           # ids above this are live tasks
    big_batch: int           # the running batch's id
    big_batch_from: int      # its history rows: ids from here, BIG_BATCH_ROWS of them
    small_batch: int         # one finished batch of 1000
    base: dt.datetime        # the oldest task's creation

    @classmethod
    def of(cls, rows: int) -> Fill:
        live = min(LIVE_ROWS, rows // 10)
        return cls(rows=rows, live_from=rows - live, big_batch=rows // SMALL_BATCH_EVERY + 2,
                   big_batch_from=rows // 2, small_batch=1,
                   base=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
                   - dt.timedelta(days=HISTORY_DAYS))

    @property
    def step(self) -> float:
        """Seconds between two tasks' creation: the history spans HISTORY_DAYS, the live ones end a minute ago."""
        return (HISTORY_DAYS * 86400 - 60) / self.rows


@dataclass(frozen=True)
class Timed:
    name: str
    cli: list[str] | None                 # the command's arguments after `pheanq`; None: only the query is timed
    query: Callable[[Store], Any]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-listings", description=__doc__.splitlines()[0])
    options, kinds, urls = fill_options(parser, argv, "sqlite,postgresql,mysql", runs=3)
    info = machine()
    results: dict[str, dict[str, Any]] = {}
    try:
        with beanstalkd() as (host, port):
            for kind in kinds:
                results[kind] = measure(kind, urls[kind], options.rows, options.runs, options.refill,
                                        f"{host}:{port}")
    except BenchError as error:
        print(f"bench-listings: error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    if options.json:
        print(json.dumps({"rows": options.rows, "runs": options.runs, "machine": info, "databases": results},
                         indent=2))
    else:
        print(format_tables(results, info, options.rows, options.runs))
    return 0


# --- one database ---------------------------------------------------------------------------------------------

def fill_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None, databases: str, runs: int
                 ) -> tuple[argparse.Namespace, list[str], dict[str, str]]:
    """The options of a bench on the kept fill (this one's and bench-web's), parsed: the options, the databases
    asked for, and each database's URL."""
    parser.add_argument("--database", default=databases, help=f"comma-separated: sqlite, postgresql, mysql "
                                                               f"(default: {databases})")
    parser.add_argument("--postgres-url", default=DEFAULT_URLS["postgresql"])
    parser.add_argument("--mysql-url", default=DEFAULT_URLS["mysql"])
    parser.add_argument("--rows", type=positive, default=10_000_000, help="tasks in the table (default 10,000,000)")
    parser.add_argument("--runs", type=positive, default=runs)
    parser.add_argument("--refill", action="store_true", help="fill the table again even if it has --rows rows")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or
                                                                 Path.home() / ".cache") / "pheanq-bench-listings",
                        help="where the SQLite file is kept (default ~/.cache/pheanq-bench-listings)")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    kinds = [kind.strip() for kind in options.database.split(",") if kind.strip()]
    if unknown := [kind for kind in kinds if kind not in DEFAULT_URLS]:
        parser.error(f"unknown database {unknown[0]!r} (sqlite, postgresql, mysql)")
    if options.rows < 1000:
        parser.error("--rows must be at least 1000")
    if "sqlite" in kinds:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
    urls = {"sqlite": f"sqlite:///{options.cache_dir / 'listings.db'}", "postgresql": options.postgres_url,
            "mysql": options.mysql_url}
    return options, kinds, urls


def measure(kind: str, url: str, rows: int, runs: int, refill: bool, server: str) -> dict[str, Any]:
    ensure_database(kind, url)
    store = Store(url)
    try:
        engine = store.database.engine
        kept = kept_fill(engine)
        fill = Fill.of(rows)
        outcome: dict[str, Any] = {"fill_seconds": None, "upgrade_seconds": None}
        if refill or kept != rows:
            log(f"{kind}: filling {rows:,} rows" + ("" if kept is None else f" (kept: {kept:,} rows)"))
            started = time.monotonic()
            drop_tables(engine)
            upgrade_database(store)
            fill_table(kind, engine, fill)
            outcome["fill_seconds"] = round(time.monotonic() - started, 1)
            log(f"{kind}: filled in {outcome['fill_seconds']:.0f} s")
        else:
            started = time.monotonic()
            before, after = upgrade_database(store)
            if before != after:
                outcome["upgrade_seconds"] = round(time.monotonic() - started, 1)
                log(f"{kind}: upgraded the kept table from {before} to {after} in {outcome['upgrade_seconds']} s")
        # What the reconciler's next pass does after the fill (or an upgrade): fold the changes of the task counts
        # the triggers noted, so that `status` reads the counts (its first run would otherwise pay for the fold).
        started = time.monotonic()
        store.tasks.fold_counts()
        outcome["fold_seconds"] = round(time.monotonic() - started, 1)
        log(f"{kind}: the task counts' changes folded in {outcome['fold_seconds']} s")
        outcome["revision"] = upgrade_database(store)[1]
        outcome["version"] = server_version(engine)
        newest, oldest = (engine_scalar(engine, f"SELECT {aggregate}(id) FROM pheanq_task")
                          for aggregate in ("max", "min"))
        oldest_row = store.tasks.find_task(oldest)
        assert oldest_row is not None
        timed = commands(fill, newest, oldest, oldest_row.created)
        environment = dict(os.environ, PHEANQ_DATABASE_URL=url, PHEANQ_BEANSTALKD=server)
        outcome["commands"] = {}
        for command in timed:
            query = [timing(command.query, store) for _ in range(runs)]
            cli = [run_cli(command.cli, environment) for _ in range(runs)] if command.cli is not None else []
            outcome["commands"][command.name] = {
                "query_seconds": statistics.median(query), "cli_seconds": statistics.median(cli) if cli else None}
            log(f"{kind}: {command.name}: query {statistics.median(query):.3f} s"
                + (f", CLI {statistics.median(cli):.3f} s" if cli else ""))
        return outcome
    finally:
        store.close()


def commands(fill: Fill, newest: int, oldest: int, first_created: dt.datetime) -> list[Timed]:
    """What each command asks the store for, as the command does it (see pheanq.cli and pheanq.ops)."""
    def status(store: Store) -> None:
        store.tasks.count_tasks()
        store.tasks.progress_of_working(PROGRESS_SHOWN)

    def show(task_id: int) -> Callable[[Store], Any]:
        return lambda store: store.tasks.find_task(task_id)

    def batch_show(batch_id: int) -> Callable[[Store], Any]:
        def query(store: Store) -> None:
            row = store.workflows.find_batch(batch_id)
            if row is not None and row.finished is None:
                store.workflows.count_batch(batch_id)
                store.tasks.progress_of_working(PROGRESS_SHOWN, batch_id)
        return query

    def reconcile_listing(tube: str | None) -> Callable[[Store], Any]:
        def query(store: Store) -> int:
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            after, listed = 0, 0
            while rows := store.tasks.tasks_to_reconcile(tube, after, 500,
                                                         now - dt.timedelta(seconds=DEFAULT_MIN_AGE_SECONDS), now):
                after, listed = rows[-1].id, listed + len(rows)
            return listed
        return query

    def settle_listing(store: Store) -> None:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        after = 0
        while ids := store.workflows.settleable_task_ids(after, 500, now):
            after = ids[-1]
        store.workflows.unfinished_batch_ids()

    # task-cleanup's cutoff a day before the oldest task: it finds nothing to delete, and the fill stays.
    before_all = first_created - dt.timedelta(days=1)
    older_than_all = int((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - before_all).total_seconds())
    return [
        Timed("status", ["status"], status),
        # The table's part of a Prometheus scrape (fold, counts, totals, histograms, oldest ready age, pool).
        Timed("metrics (table)", None, read_table),
        Timed("show (newest)", ["show", str(newest)], show(newest)),
        Timed("show (oldest)", ["show", str(oldest)], show(oldest)),
        Timed("batch show (1000, finished)", ["batch", "show", str(fill.small_batch)], batch_show(fill.small_batch)),
        Timed(f"batch show ({BIG_BATCH_ROWS // 1000}k, running)", ["batch", "show", str(fill.big_batch)],
              batch_show(fill.big_batch)),
        Timed("reconcile --dry-run", ["reconcile", "--dry-run"], reconcile_listing(None)),
        Timed("reconcile --dry-run --use-tube mail", ["reconcile", "--dry-run", "--use-tube", "mail"],
              reconcile_listing("mail")),
        Timed("reconcile: settle listing (query only)", None, settle_listing),
        Timed("task-cleanup (nothing old enough)", ["task-cleanup", "--period", str(older_than_all)],
              lambda store: store.tasks.delete_done_before(before_all)),
    ]


def timing(query: Callable[[Store], Any], store: Store) -> float:
    started = time.perf_counter()
    query(store)
    return time.perf_counter() - started


def run_cli(arguments: list[str], environment: dict[str, str]) -> float:
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "pheanq", *arguments], env=environment, capture_output=True,
                              text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if finished.returncode != 0:
        raise BenchError(f"pheanq {' '.join(arguments)} exited {finished.returncode}: {finished.stderr.strip()}")
    return elapsed


# --- the fill -------------------------------------------------------------------------------------------------

def ensure_database(kind: str, url: str) -> None:
    """Create the PostgreSQL or MariaDB database of `url` when it does not exist."""
    if kind == "sqlite":
        return
    target = sa.engine.make_url(url)
    server = create_engine(target.set(database="postgres" if kind == "postgresql" else "").render_as_string(
        hide_password=False)).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            if kind == "postgresql":
                if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                {"name": target.database}).first() is None:
                    conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
            else:
                conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{target.database}`"))
    except sa.exc.OperationalError as error:
        raise BenchError(f"{kind}: cannot reach {target.render_as_string(hide_password=True)}: "
                         f"{str(error.orig).strip().splitlines()[0]}") from None
    finally:
        server.dispose()


def kept_fill(engine: sa.Engine) -> int | None:
    """The rows of the completed fill kept in the database, if it is of this mix."""
    if not sa.inspect(engine).has_table(FILL_TABLE):
        return None
    with engine.connect() as conn:
        found = conn.execute(sa.text(f"SELECT rows_filled, mix FROM {FILL_TABLE}")).first()
    return None if found is None or found[1] != MIX_VERSION else int(found[0])


def drop_tables(engine: sa.Engine) -> None:
    reflected = sa.MetaData()
    reflected.reflect(engine)
    reflected.drop_all(engine)


def fill_table(kind: str, engine: sa.Engine, fill: Fill) -> None:
    dialect = DIALECTS[kind]
    data = {f"data_{tube}": encode_data(TaskDescription(command, arguments)) for tube, command, arguments, _ in TUBES}
    parameters = dict(data, live_from=fill.live_from, big_batch=fill.big_batch, big_from=fill.big_batch_from,
                      big_to=fill.big_batch_from + BIG_BATCH_ROWS - 1, base=fill.base, step=fill.step,
                      base_epoch=int(fill.base.replace(tzinfo=dt.timezone.utc).timestamp()),
                      log_attempt_done=f"--- attempt 1 on {WORKER}: exit code 0\n",
                      log_attempt_failed=f"--- attempt 1 on {WORKER}: exit code 1\n",
                      log_output=f"--- attempt 1 on {WORKER}: exit code 0\n" + OUTPUT_LINE * 8,
                      log_failed=f"--- attempt 1 on {WORKER}: exit code 1\n" + OUTPUT_LINE * 18
                      + "Traceback (most recent call last): ConnectionError: upstream answered 503\n",
                      worker=WORKER)
    with engine.begin() as conn:
        dialect.prepare(conn)
    for low in range(1, fill.rows + 1, dialect.chunk):
        high = min(fill.rows, low + dialect.chunk - 1)
        with engine.begin() as conn:
            dialect.prepare(conn)
            conn.execute(sa.text(insert_tasks(dialect, low, high)), parameters)
        if high % 1_000_000 == 0 or high == fill.rows:
            log(f"  rows {high:,} of {fill.rows:,}")
    with engine.begin() as conn:
        dialect.prepare(conn)
        conn.execute(sa.text(INSERT_DEPENDENCIES))
        conn.execute(sa.text(insert_batches(dialect)), {"big_batch": fill.big_batch})
        for statement in dialect.after_fill:
            conn.execute(sa.text(statement))
        conn.execute(sa.text(f"CREATE TABLE {FILL_TABLE} (rows_filled BIGINT NOT NULL, mix INTEGER NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {FILL_TABLE} VALUES (:rows, :mix)"), {"rows": fill.rows, "mix": MIX_VERSION})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in dialect.analyze:
            conn.execute(sa.text(statement))


@dataclass(frozen=True)
class Dialect:
    series: Callable[[int, int], str]       # a row source `g` of one integer column `i` from low to high
    timestamp: Callable[[str], str]         # :base plus `seconds` (an SQL expression)
    nonce: str
    divide: str                             # integer division
    concat: Callable[[str, str], str]
    prepare: Callable[[sa.Connection], None]
    after_fill: tuple[str, ...]
    analyze: tuple[str, ...]
    chunk: int = 1_000_000                  # rows per INSERT: each must end within the driver's read timeout


def _no_preparation(conn: sa.Connection) -> None:
    pass


def _sqlite_preparation(conn: sa.Connection) -> None:
    conn.execute(sa.text("PRAGMA cache_size = -1000000"))   # 1 GB: the indexes' pages stay in memory while filling


def _mysql_preparation(conn: sa.Connection) -> None:
    conn.execute(sa.text("SET SESSION time_zone = '+00:00'"))


DIALECTS = {
    "sqlite": Dialect(
        series=lambda low, high: f"(WITH RECURSIVE g(i) AS (SELECT {low} UNION ALL SELECT i + 1 FROM g "
                                 f"WHERE i < {high}) SELECT i FROM g) AS g",
        # SQLAlchemy keeps a DateTime as this text on SQLite; the bench's own rows must compare like pheanq's.
        timestamp=lambda seconds: f"(strftime('%Y-%m-%d %H:%M:%S', :base_epoch + ({seconds}), 'unixepoch')"
                                  " || '.000000')",
        nonce="lower(hex(randomblob(16)))", divide="/", concat=lambda a, b: f"{a} || {b}", prepare=_sqlite_preparation,
        after_fill=(), analyze=("ANALYZE",)),
    "postgresql": Dialect(
        series=lambda low, high: f"generate_series({low}, {high}) AS g(i)",
        timestamp=lambda seconds: f"(CAST(:base AS timestamp) + make_interval(secs => {seconds}))",
        nonce="md5(i::text)", divide="/", concat=lambda a, b: f"{a} || {b}", prepare=_no_preparation,
        after_fill=("SELECT setval(pg_get_serial_sequence('pheanq_task', 'id'), (SELECT max(id) FROM pheanq_task))",
                    "SELECT setval(pg_get_serial_sequence('pheanq_batch', 'id'), (SELECT max(id) FROM pheanq_batch))"),
        analyze=("VACUUM ANALYZE pheanq_task", "VACUUM ANALYZE pheanq_batch", "VACUUM ANALYZE pheanq_dependency")),
    "mysql": Dialect(
        series=lambda low, high: f"(SELECT seq AS i FROM seq_{low}_to_{high}) AS g",
        timestamp=lambda seconds: f"(CAST(:base AS DATETIME(6)) + INTERVAL ROUND(({seconds}) * 1000000) MICROSECOND)",
        nonce="md5(i)", divide="DIV", concat=lambda a, b: f"CONCAT({a}, {b})", prepare=_mysql_preparation,
        after_fill=(), analyze=("ANALYZE TABLE pheanq_task, pheanq_batch, pheanq_dependency",), chunk=100_000),
}


def insert_tasks(dialect: Dialect, low: int, high: int) -> str:
    """One INSERT ... SELECT of the rows with ids low..high (see the mix in the module's docstring)."""
    share, tube_cases, command_cases, data_cases = 0, [], [], []
    for tube, command, _, twentieths in TUBES:
        share += twentieths
        tube_cases.append(f"WHEN i % 20 < {share} THEN '{tube}'")
        command_cases.append(f"WHEN i % 20 < {share} THEN '{command}'")
        data_cases.append(f"WHEN i % 20 < {share} THEN :data_{tube}")
    live = "i > :live_from"
    status = (f"CASE WHEN {live} THEN CASE WHEN i % 100 < 60 THEN 'new' WHEN i % 100 < 65 THEN 'working' "
              "WHEN i % 100 < 80 THEN 'waiting' WHEN i % 100 < 90 THEN 'retrying' WHEN i % 100 < 95 THEN 'restarted' "
              "ELSE 'stalled' END "
              "ELSE CASE WHEN i % 1000 < 970 THEN 'done' WHEN i % 1000 < 990 THEN 'failed' "
              "WHEN i % 1000 < 996 THEN 'cancelled' ELSE 'upstream_failed' END END")
    ended = f"NOT ({live})"
    attempted = f"({ended} AND i % 1000 < 990) OR ({live} AND i % 100 >= 60 AND i % 100 < 65) " \
                f"OR ({live} AND i % 100 >= 80)"
    created = dialect.timestamp("i * :step")
    finished = dialect.timestamp("i * :step + 5")
    return f"""
        INSERT INTO pheanq_task (id, command, data, tube, status, priority, ttr, job_id, attempts, exit_code, log,
                                 worker, created, started, finished, modified, heartbeat, waiting_for, batch_id,
                                 nonce)
        SELECT i,
               CASE {' '.join(command_cases)} END,
               CASE {' '.join(data_cases)} END,
               CASE {' '.join(tube_cases)} END,
               {status},
               1024, 60,
               CASE WHEN {live} THEN i END,
               CASE WHEN {attempted} THEN 1 ELSE 0 END,
               CASE WHEN {ended} AND i % 1000 < 970 THEN 0 WHEN {ended} AND i % 1000 < 990 THEN 1 END,
               CASE WHEN {ended} AND i % 1000 < 970 AND i % 10 = 3 THEN :log_output
                    WHEN {ended} AND i % 1000 < 970 THEN :log_attempt_done
                    WHEN {ended} AND i % 1000 < 990 AND i % 2 = 0 THEN :log_failed
                    WHEN {ended} AND i % 1000 < 990 THEN :log_attempt_failed
                    WHEN {live} AND i % 100 >= 80 THEN :log_attempt_failed END,
               CASE WHEN {attempted} THEN :worker END,
               {created},
               CASE WHEN {attempted} THEN {dialect.timestamp("i * :step + 1")} END,
               CASE WHEN {ended} THEN {finished} END,
               CASE WHEN {ended} THEN {finished} ELSE {created} END,
               CASE WHEN {live} AND i % 100 >= 60 AND i % 100 < 65 THEN {created} END,
               CASE WHEN {live} AND i % 100 >= 65 AND i % 100 < 80 THEN 1 ELSE 0 END,
               CASE WHEN i BETWEEN :big_from AND :big_to THEN :big_batch
                    WHEN {live} AND i % 100 = 7 THEN :big_batch
                    WHEN i % 100 = 7 THEN i {dialect.divide} {SMALL_BATCH_EVERY} + 1 END,
               {dialect.nonce}
        FROM {dialect.series(low, high)}"""


# Each waiting task waits for the task before it (live too, so none is settleable: the listing finds nothing).
INSERT_DEPENDENCIES = """
    INSERT INTO pheanq_dependency (task_id, parent_id, satisfied)
    SELECT id, id - 1, false FROM pheanq_task WHERE status = 'waiting'"""


def insert_batches(dialect: Dialect) -> str:
    """The batches the tasks name, with counters that match their rows; all closed, finished but the big one."""
    pending = "status IN ('new', 'working', 'waiting', 'retrying', 'restarted', 'stalled')"
    return f"""
        INSERT INTO pheanq_batch (id, name, total, unfinished, failures, done, created, closed, finished)
        SELECT batch_id, {dialect.concat("'bench batch '", "batch_id")},
               count(*),
               sum(CASE WHEN {pending} THEN 1 ELSE 0 END),
               sum(CASE WHEN status IN ('failed', 'upstream_failed') THEN 1 ELSE 0 END),
               sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END),
               min(created), min(created),
               CASE WHEN batch_id = :big_batch THEN NULL ELSE max(modified) END
        FROM pheanq_task WHERE batch_id IS NOT NULL GROUP BY batch_id"""


def engine_scalar(engine: sa.Engine, statement: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(statement)).scalar_one())


def server_version(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        statement = {"sqlite": "SELECT sqlite_version()", "postgresql": "SHOW server_version"}.get(
            engine.dialect.name, "SELECT version()")
        return str(conn.execute(sa.text(statement)).scalar_one())


def log(message: str) -> None:
    print(f"bench-listings: {message}", file=sys.stderr, flush=True)


# --- the report -----------------------------------------------------------------------------------------------

def format_tables(results: dict[str, dict[str, Any]], info: dict[str, Any], rows: int, runs: int) -> str:
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB"}
    lines = [f"pheanq listings on {rows:,} rows (medians of {runs}; query: the store's calls, CLI: the whole "
             "process); goal < 1 s", machine_line(info) + f"; pheanq {metadata.version('pheanq')}", ""]
    for kind, outcome in results.items():
        made = (f"filled in {outcome['fill_seconds']:.0f} s" if outcome["fill_seconds"] is not None else "kept fill")
        if outcome["upgrade_seconds"] is not None:
            made += f", upgraded in {outcome['upgrade_seconds']:.0f} s"
        lines.append(f"{names[kind]} {outcome['version']} (schema {outcome['revision']}, {made})")
        width = max(len(name) for name in outcome["commands"])
        lines.append(f"  {'command':<{width}}  {'query s':>8}  {'CLI s':>7}")
        for name, figures in outcome["commands"].items():
            cli = "-" if figures["cli_seconds"] is None else f"{figures['cli_seconds']:.3f}"
            lines.append(f"  {name:<{width}}  {figures['query_seconds']:>8.3f}  {cli:>7}")
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main())
