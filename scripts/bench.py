"""Benchmark pheanq against a bare greenstalk + SQLAlchemy loop that makes the same writes.

Two measurements, each on SQLite (a fresh temp database file, upgraded with
pheanq.storage.migrate.upgrade_database) and a fresh beanstalkd on a free loopback port,
for every run of every side:

1. queue_task: tasks/s of ``TaskQueueService.queue_task(TaskDescription("true"))``,
   beside a loop that INSERTs the row and commits, puts a job with the same kind of
   body, and UPDATEs the row's job id.
2. end-to-end: tasks/s from the moment two workers start until every row is `done`
   (the table is polled), for tasks whose command is /bin/true. pheanq's side runs
   ``python -m pheanq task-worker --stop-when-empty``; the baseline runs this file in
   its baseline-worker mode: reserve, compare-and-set the row to `working`, run
   /bin/true (no shell), set the row to `done`, delete the job.

Each measurement is taken --runs times (the two sides alternate); the median, the
min and max, and the ratio of the medians (pheanq / baseline) are printed.
This is a benchmark script that prints figures, not a timed test.

The baseline deliberately imports nothing from pheanq, so that a baseline worker
process pays only for SQLAlchemy and greenstalk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import greenstalk
import sqlalchemy as sa

BEANSTALKD = "/usr/bin/beanstalkd"
TUBE = "pheanq"            # pheanq's default tube
PRIORITY = 1024            # pheanq's DEFAULT_PRIORITY
TTR = 60                   # pheanq's DEFAULT_TTR
RESERVE_TIMEOUT = 1        # seconds, as pheanq's worker
WORKERS = 2
BODY_VERSION = 1
TRUE = "/bin/true"
CLAIMABLE = ("new", "restarted", "stalled")
POLL_SECONDS = 0.02

# The columns of pheanq's task table that the baseline writes, as plain SQLAlchemy Core.
task = sa.table(
    "pheanq_task",
    sa.column("id", sa.Integer),
    sa.column("command", sa.String),
    sa.column("data", sa.Text),
    sa.column("tube", sa.String),
    sa.column("status", sa.String),
    sa.column("priority", sa.BigInteger),
    sa.column("ttr", sa.Integer),
    sa.column("job_id", sa.BigInteger),
    sa.column("attempts", sa.Integer),
    sa.column("exit_code", sa.Integer),
    sa.column("log", sa.Text),
    sa.column("worker", sa.String),
    sa.column("created", sa.DateTime),
    sa.column("started", sa.DateTime),
    sa.column("finished", sa.DateTime),
    sa.column("modified", sa.DateTime),
)


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


# --- processes this script starts, stopped at the end, on error and on Ctrl-C -------------------------------

_children: list[subprocess.Popen[bytes]] = []


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    process: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **kwargs)
    _children.append(process)
    return process


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in _children:
        _children.remove(process)


def stop_all() -> None:
    # Newest first: workers before the beanstalkd they talk to.
    for process in reversed(list(_children)):
        stop(process)


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop measuring, clean up, exit 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


# --- beanstalkd and databases ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def beanstalkd() -> Iterator[tuple[str, int]]:
    """A fresh in-memory beanstalkd on a free loopback port, stopped on the way out."""
    for _attempt in range(5):
        port = free_port()
        process = spawn([BEANSTALKD, "-l", "127.0.0.1", "-p", str(port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.01)
        if process.poll() is None:
            try:
                yield ("127.0.0.1", port)
            finally:
                stop(process)
            return
        stop(process)  # the port was taken between free_port() and the bind: try another
    raise BenchError("beanstalkd would not start on a free loopback port")


def fresh_database(directory: Path, name: str) -> str:
    """A new SQLite file with pheanq's schema, made by pheanq's own migrations."""
    from pheanq.storage import Store
    from pheanq.storage.migrate import upgrade_database

    url = f"sqlite:///{directory / name}"
    store = Store(url)
    upgrade_database(store)
    store.close()
    return url


def measured_runs(doc: str, default_tasks: int, prefix: str,
                  measure: Callable[[Path, int, int], dict[str, dict[str, list[float]]]],
                  argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, dict[str, list[float]]]] | None:
    """Parse --tasks/--runs/--json and run `measure(root, tasks, runs)` in a temporary directory. Returns the
    options and the figures for the caller to print, or None when they were printed as JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=default_tasks)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        times = measure(Path(root), options.tasks, options.runs)
    if options.json:
        print(json.dumps({"tasks": options.tasks, "runs": options.runs, "seconds": times}, indent=2))
        return None
    return options, times


def bare_engine(url: str) -> sa.Engine:
    """A plain SQLAlchemy engine with the SQLite settings pheanq uses (WAL, synchronous=NORMAL, 30 s busy wait)."""
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def status_counts(path: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT status, count(*) FROM pheanq_task GROUP BY status").fetchall()
    conn.close()
    return {str(status): int(count) for status, count in rows}


# --- queue_task ---------------------------------------------------------------------------------------------


def pheanq_queue(url: str, address: tuple[str, int], tasks: int) -> float:
    """Seconds pheanq takes to queue `tasks` tasks."""
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


def baseline_queue(url: str, address: tuple[str, int], tasks: int) -> float:
    """Seconds the bare loop takes for the same writes: INSERT + commit, put, UPDATE job_id + commit."""
    engine = bare_engine(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE)
    try:
        started = time.perf_counter()
        for _ in range(tasks):
            description = {"command": "true", "arguments": [], "options": {},
                           "type": "pheanq.description.TaskDescription"}
            now = utcnow()
            with engine.begin() as conn:
                task_id = conn.execute(task.insert().values(
                    command="true", data=json.dumps(description, separators=(",", ":")), tube=TUBE,
                    status="new", priority=PRIORITY, ttr=TTR, attempts=0, created=now, modified=now,
                )).lastrowid
            body = json.dumps({"pheanq": BODY_VERSION, "task_id": task_id, "description": description},
                              separators=(",", ":")).encode()
            job_id = client.put(body, priority=PRIORITY, ttr=TTR)
            with engine.begin() as conn:
                conn.execute(task.update().where(task.c.id == task_id).values(job_id=job_id))
        return time.perf_counter() - started
    finally:
        client.close()
        engine.dispose()


# --- end to end ---------------------------------------------------------------------------------------------


def baseline_worker(url: str, address: tuple[str, int]) -> int:
    """The bare worker: reserve, claim (compare-and-set), run /bin/true, record done, delete; stop when empty."""
    engine = bare_engine(url)
    client: greenstalk.Client[bytes] = greenstalk.Client(address, encoding=None, use=TUBE, watch=TUBE)
    name = f"{socket.gethostname()}:{os.getpid()}"
    c = task.c
    try:
        while True:
            try:
                job = client.reserve(timeout=RESERVE_TIMEOUT)
            except greenstalk.TimedOutError:
                return 0
            task_id = int(json.loads(job.body)["task_id"])
            now = utcnow()
            with engine.begin() as conn:
                claimed = conn.execute(
                    task.update().where(c.id == task_id, c.status.in_(CLAIMABLE))
                    .values(status="working", job_id=job.id, worker=name, attempts=c.attempts + 1, started=now,
                            finished=None, exit_code=None, modified=now)
                ).rowcount == 1
            if not claimed:
                client.delete(job)
                continue
            began = time.monotonic()
            result = subprocess.run([TRUE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, check=False)
            verdict = "done" if result.returncode == 0 else "failed"
            now = utcnow()
            with engine.begin() as conn:
                conn.execute(
                    task.update().where(c.id == task_id, c.status == "working", c.worker == name)
                    .values(status=verdict, exit_code=result.returncode, finished=now, modified=now,
                            log=f"--- on {name}: {verdict} after {time.monotonic() - began:.2f}s\n")
                )
            client.delete(job)
    finally:
        client.close()
        engine.dispose()


@dataclass
class Workbench:
    """One end-to-end measurement's directory, database and beanstalkd."""

    directory: Path
    url: str
    address: tuple[str, int]
    logs: list[Path] = field(default_factory=list)

    @property
    def db_path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def config(self) -> Path:
        path = self.directory / "pheanq.toml"
        path.write_text(f'[commands]\ntrue = ["{TRUE}"]\n')
        return path

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            tails.append(f"--- {log.name}:\n" + "\n".join(text))
        return "\n".join(tails)


def pheanq_e2e(bench: Workbench, tasks: int) -> float:
    from pheanq.config import Settings
    from pheanq.description import TaskDescription
    from pheanq.producer.service import TaskQueueService

    service = TaskQueueService(Settings(database_url=bench.url, beanstalkd=bench.address))
    try:
        for _ in range(tasks):
            service.queue_task(TaskDescription("true"))
    finally:
        service.close()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
    env.update(PHEANQ_DATABASE_URL=bench.url, PHEANQ_BEANSTALKD=f"{bench.address[0]}:{bench.address[1]}",
               PHEANQ_CONFIG=str(bench.config()))
    return run_workers(bench, tasks, [sys.executable, "-m", "pheanq", "task-worker", "--stop-when-empty"], env)


def baseline_e2e(bench: Workbench, tasks: int) -> float:
    baseline_queue(bench.url, bench.address, tasks)
    argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", bench.url,
            f"{bench.address[0]}:{bench.address[1]}"]
    return run_workers(bench, tasks, argv, dict(os.environ))


def run_workers(bench: Workbench, tasks: int, argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting the workers until all `tasks` rows are done; the workers are gone on return."""
    counts = status_counts(bench.db_path)
    if counts != {"new": tasks}:
        raise BenchError(f"expected {tasks} new tasks before the workers start, found {counts}")
    workers: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + 60 + tasks * 0.2
    try:
        started = time.perf_counter()
        for number in range(WORKERS):
            log = bench.directory / f"worker-{number}.log"
            bench.logs.append(log)
            with log.open("wb") as err:
                workers.append(spawn(argv, env=env, cwd=bench.directory, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err))
        while True:
            counts = status_counts(bench.db_path)
            if counts.get("done", 0) == tasks:
                elapsed = time.perf_counter() - started
                break
            if counts.get("failed"):
                raise BenchError(f"{counts['failed']} task(s) failed; rows: {counts}\n{bench.log_tail()}")
            if all(worker.poll() is not None for worker in workers):
                raise BenchError(f"the workers exited (codes {[w.returncode for w in workers]}) before every "
                                 f"task was done; rows: {counts}\n{bench.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"not every task was done in time; rows: {counts}\n{bench.log_tail()}")
            time.sleep(POLL_SECONDS)
        for worker in workers:  # --stop-when-empty: each leaves after one idle reserve timeout
            with suppress(subprocess.TimeoutExpired):
                worker.wait(RESERVE_TIMEOUT + 15)
            if worker.returncode not in (None, 0):
                raise BenchError(f"a worker exited with code {worker.returncode}\n{bench.log_tail()}")
        return elapsed
    finally:
        for worker in workers:
            stop(worker)


# --- the runs and the report --------------------------------------------------------------------------------


@dataclass
class Figures:
    """Tasks per second of each run of one side."""

    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def as_dict(self) -> dict[str, Any]:
        return {"median": round(self.median, 1), "min": round(min(self.rates), 1),
                "max": round(max(self.rates), 1), "runs": [round(rate, 1) for rate in self.rates]}


@dataclass
class Measurement:
    name: str
    tasks: int
    pheanq: Figures = field(default_factory=Figures)
    baseline: Figures = field(default_factory=Figures)

    @property
    def ratio(self) -> float:
        return self.pheanq.median / self.baseline.median

    def as_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "pheanq": self.pheanq.as_dict(), "baseline": self.baseline.as_dict(),
                "ratio": round(self.ratio, 3)}


def measure(root: Path, runs: int, queue_tasks: int, e2e_tasks: int, progress: TextIO) -> list[Measurement]:
    queue = Measurement("queue_task", queue_tasks)
    e2e = Measurement(f"end-to-end {WORKERS} wk", e2e_tasks)

    def queue_pheanq(directory: Path, url: str) -> float:
        with beanstalkd() as address:
            return queue_tasks / pheanq_queue(url, address, queue_tasks)

    def queue_baseline(directory: Path, url: str) -> float:
        with beanstalkd() as address:
            return queue_tasks / baseline_queue(url, address, queue_tasks)

    def e2e_pheanq(directory: Path, url: str) -> float:
        with beanstalkd() as address:
            return e2e_tasks / pheanq_e2e(Workbench(directory, url, address), e2e_tasks)

    def e2e_baseline(directory: Path, url: str) -> float:
        with beanstalkd() as address:
            return e2e_tasks / baseline_e2e(Workbench(directory, url, address), e2e_tasks)

    plans: list[tuple[Measurement, str, Callable[[Path, str], float]]] = [
        (queue, "pheanq", queue_pheanq), (queue, "baseline", queue_baseline),
             (e2e, "pheanq", e2e_pheanq), (e2e, "baseline", e2e_baseline)]
    for measurement_plans in (plans[:2], plans[2:]):
        for run in range(runs):
            # Alternate which side goes first, so a drift in the machine's load hits both alike.
            order = measurement_plans if run % 2 == 0 else measurement_plans[::-1]
            for measurement, side, take in order:
                directory = root / f"{measurement.name.split()[0]}-{side}-{run + 1}"
                directory.mkdir()
                rate = take(directory, fresh_database(directory, "pheanq.db"))
                getattr(measurement, side).rates.append(rate)
                print(f"bench: {measurement.name} run {run + 1}/{runs} {side}: {rate:.0f} tasks/s",
                      file=progress, flush=True)
    return [queue, e2e]


def machine() -> dict[str, Any]:
    try:
        version = subprocess.run([BEANSTALKD, "-v"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "unknown"
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "beanstalkd": version.removeprefix("beanstalkd ").strip(),
        "sqlalchemy": sa.__version__,
        "greenstalk": metadata.version("greenstalk"),
    }


def format_table(measurements: list[Measurement], info: dict[str, Any], runs: int) -> str:
    def side(figures: Figures) -> str:
        return f"{figures.median:6.0f}/s ({min(figures.rates):.0f} .. {max(figures.rates):.0f})"

    lines = [f"pheanq vs bare greenstalk+SQLAlchemy, SQLite; median of {runs} run(s), (min .. max)"]
    for m in measurements:
        lines.append(f"{m.name:<17} N={m.tasks:<6} pheanq {side(m.pheanq):<26} "
                     f"baseline {side(m.baseline):<26} ratio {m.ratio:.2f}")
    lines.append(machine_line(info))
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """The machine and versions of `machine()` (and any versions added to it) as one line."""
    load = " ".join(f"{value:.2f}" for value in info["load_average"])
    versions = {"Python": info["python"], "SQLite": info["sqlite"], "beanstalkd": info["beanstalkd"],
                "SQLAlchemy": info["sqlalchemy"], "greenstalk": info["greenstalk"]}
    versions.update({name: info[key] for name, key in (("psycopg", "psycopg"), ("PyMySQL", "pymysql")) if key in info})
    return f"machine: {info['cores']} cores ({info['cpu']}), load {load} at start; " + \
        ", ".join(f"{name} {version}" for name, version in versions.items())


def percentile(values: list[float], percent: float) -> float:
    """The value at `percent` of the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(percent / 100 * (len(ordered) - 1))))]


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Throughput of pheanq's queue_task and of end-to-end work with 2 workers, each beside a bare "
                    "greenstalk + SQLAlchemy loop doing the same writes (SQLite, throwaway beanstalkd).")
    parser.add_argument("--tasks-queue", type=positive, default=2000, metavar="N",
                        help="tasks queued per queue_task run (default: %(default)s)")
    parser.add_argument("--tasks-e2e", type=positive, default=1000, metavar="N",
                        help="tasks per end-to-end run (default: %(default)s)")
    parser.add_argument("--runs", type=positive, default=3, metavar="R",
                        help="runs of each measurement; the median is reported (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--baseline-worker", nargs=2, metavar=("DATABASE_URL", "HOST:PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.baseline_worker:
        url, address = args.baseline_worker
        return baseline_worker(url, parse_address(address))
    if not os.access(BEANSTALKD, os.X_OK):
        print(f"bench: error: {BEANSTALKD} is missing: run ./scripts/test or ./scripts/demo, which install it",
              file=sys.stderr)
        return 2

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    info = machine()
    print(f"bench: {args.runs} run(s) of queue_task ({args.tasks_queue} tasks) and end-to-end "
          f"({args.tasks_e2e} tasks, {WORKERS} workers), each side on a fresh database and beanstalkd",
          file=sys.stderr, flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="pheanq-bench-", ignore_cleanup_errors=True) as root:
            measurements = measure(Path(root), args.runs, args.tasks_queue, args.tasks_e2e, sys.stderr)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"bench: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        stop_all()
    if args.json:
        print(json.dumps({"runs": args.runs, "workers": WORKERS, "database": "sqlite", "machine": info,
                          "results": {"queue_task": measurements[0].as_dict(),
                                      "end_to_end": measurements[1].as_dict()}}, indent=2))
    else:
        print(format_table(measurements, info, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
