"""What the benchmark scripts share: the processes they start (stopped at the end, on error and on a signal),
a throwaway beanstalkd, a fresh SQLite database with pheanq's schema, the machine and versions they ran on, and
small helpers for their options and figures.

Imported by scripts/bench.py, bench_floors.py, bench_batch.py, bench_python.py and bench_reconcile.py; not run itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa

BEANSTALKD = "/usr/bin/beanstalkd"
TUBE = "pheanq"            # pheanq's default tube


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


# --- processes a benchmark starts, stopped at the end, on error and on a signal ------------------------------

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


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGHUP raise Stopped, so that the caller's `finally` stops what it started."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def measured(prog: str, measure: Callable[[], None]) -> int:
    """Run `measure` with SIGTERM and SIGHUP raising Stopped; stop every process it started, however it ends.
    0 when it ran through; else what stopped it is said on stderr and its exit code returned: 1 for a BenchError,
    130 for Ctrl-C, 128 + the signal number for SIGTERM or SIGHUP."""
    stop_on_signals()
    try:
        measure()
    except BenchError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"{prog}: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        stop_all()
    return 0


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
