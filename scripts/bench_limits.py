"""What cluster-wide limits cost, on a real beanstalkd and PostgreSQL: figures, medians of --runs runs.

- **beside a limit**: unlimited `/bin/true` tasks per second through a `pheanq worker-tender` of --workers workers,
  in a tube alone, and in the same tube after --limited tasks of a type limited to `concurrency = 1` that each
  run far longer than the measurement: the limit is saturated, one of them holds its place and the others come
  back again and again (backoff) to be refused. Timed from the rows' own times: the first unlimited claim to the
  last unlimited end.
- **claim overhead**: claim + end per second (reserve, compare-and-set claim, mark done, delete), one task at a
  time in one process, of tasks under no limit, under `concurrency = 10` and under `concurrency = 1000`, neither
  of which ever fills: what reading a limit's places and taking one adds to every claim.

Each run gets a fresh beanstalkd and an emptied table (the database of --postgres-url, made when missing); the two
sides of each row alternate which goes first.

    ./scripts/bench-limits [--postgres-url URL] [--runs R] [--tasks N] [--limited N] [--workers W] [--claims N]
                           [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench import fresh_table, pheanq_env
from bench_listings import server_version
from benchlib import TUBE, BenchError, beanstalkd, machine, machine_line, measured, positive, spawn, stop

from pheanq import TaskDescription, TaskQueueService, load_settings
from pheanq.storage.engine import create_engine
from pheanq.worker.claims import TaskClaims

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/pheanq_bench_limits"
CONFIG = """[commands]
true = ["/bin/true"]
warm = ["/bin/true"]
slow = ["/bin/sleep", "600"]
[limits.commands.slow]
concurrency = 1
"""
CLAIM_LIMITS = {"no limit": None, "concurrency = 10": 10, "concurrency = 1000": 1000}
Figures = dict[str, list[float]]


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    info = machine()
    figures: Figures = {side: [] for side in ("alone", "beside", *CLAIM_LIMITS)}

    def measure_all() -> None:
        with tempfile.TemporaryDirectory(prefix="pheanq-bench-limits-", ignore_cleanup_errors=True) as root:
            for run in range(options.runs):
                # Alternate which side goes first, so that a drift in the machine's load hits both alike.
                for side in ("alone", "beside") if run % 2 == 0 else ("beside", "alone"):
                    figures[side].append(unlimited_rate(options, Path(root), side == "beside"))
                    progress(f"run {run + 1}/{options.runs} unlimited tasks {side}: {figures[side][-1]:.0f}/s")
                names = list(CLAIM_LIMITS) if run % 2 == 0 else list(CLAIM_LIMITS)[::-1]
                for name in names:
                    figures[name].append(claim_rate(options, CLAIM_LIMITS[name]))
                    progress(f"run {run + 1}/{options.runs} claim + end, {name}: {figures[name][-1]:.0f}/s")
        info["postgresql"] = postgres_version(options.postgres_url)

    code = measured("bench-limits", measure_all)
    if code:
        return code
    if options.json:
        print(json.dumps({"options": {key: value for key, value in vars(options).items() if key != "json"},
                          "machine": info, "per_second": figures}, indent=2))
    else:
        print(format_table(figures, info, options))
    return 0


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench-limits", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=DEFAULT_URL, metavar="URL",
                        help="made if missing, its tables emptied (default: %(default)s)")
    for flag, default, what in (("--runs", 3, "runs of each row; the median is reported"),
                                ("--tasks", 400, "unlimited tasks per run"),
                                ("--limited", 20, "limited tasks queued before them, in the runs beside a limit"),
                                ("--workers", 4, "the tender's workers"),
                                ("--claims", 1000, "tasks claimed and ended per claim run")):
        parser.add_argument(flag, type=positive, default=default, metavar="N", help=f"{what} (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def progress(text: str) -> None:
    print(f"bench-limits: {text}", file=sys.stderr, flush=True)


def empty_tables(url: str) -> str:
    """The database of `url`, made when missing, upgraded, without tasks or the places of limits."""
    url = fresh_table("postgresql", url, Path("unused.db"))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM pheanq_limit_slot"))
    finally:
        engine.dispose()
    return url


def unlimited_rate(options: argparse.Namespace, root: Path, beside_a_limit: bool) -> float:
    """Unlimited tasks per second through a tender, alone in their tube or after a saturated limit's tasks."""
    url = empty_tables(options.postgres_url)
    config = root / "pheanq.toml"
    config.write_text(CONFIG)
    config.chmod(0o600)  # pheanq refuses a config file that others could write: its [commands] run
    with beanstalkd() as address:
        # --shutdown-timeout 0: at the end, the long limited task is interrupted rather than waited for.
        tender = spawn([sys.executable, "-m", "pheanq", "worker-tender", "--min-workers", str(options.workers),
                        "--max-workers", str(options.workers), "--spare-workers", "0", "--reconcile-interval", "0",
                        "--shutdown-timeout", "0"], env=pheanq_env(url, address, config, root / "run"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        service = TaskQueueService(load_settings({"config_file": str(config), "database_url": url,
                                                  "beanstalkd": f"{address[0]}:{address[1]}"}, environ={}))
        try:
            # Every worker up and warm before the figure's tasks come: their start is not what is measured.
            service.queue_many(TaskDescription("warm") for _ in range(2 * options.workers))
            seconds_of(url, "warm", 2 * options.workers, tender)
            if beside_a_limit:
                service.queue_many(TaskDescription("slow") for _ in range(options.limited))
            tasks: int = options.tasks
            service.queue_many(TaskDescription("true") for _ in range(tasks))
            return tasks / seconds_of(url, "true", tasks, tender)
        finally:
            service.close()
            stop(tender, grace=15)


def seconds_of(url: str, command: str, tasks: int, tender: subprocess.Popen[bytes]) -> float:
    """Once the `tasks` tasks of `command` are all done: seconds from the first one's claim to the last one's end
    (their rows' own times)."""
    engine = create_engine(url)
    mine = f"FROM pheanq_task WHERE command = '{command}'"
    try:
        deadline = time.monotonic() + 60 + tasks * 0.2
        while True:
            with engine.connect() as conn:
                done = conn.execute(sa.text(f"SELECT count(*) {mine} AND status = 'done'")).scalar_one()
                if done >= tasks:
                    first, last = conn.execute(sa.text(f"SELECT min(started), max(finished) {mine}")).one()
                    return float((last - first).total_seconds())
            if time.monotonic() > deadline or tender.poll() is not None:
                raise BenchError(f"{done} of {tasks} {command} tasks done; the tender: {tender.poll()}")
            time.sleep(0.05)  # the poll of a deadline wait
    finally:
        engine.dispose()


def claim_rate(options: argparse.Namespace, places: int | None) -> float:
    """Claims + ends per second of tasks one at a time in this process, under a concurrency limit of `places` (None:
    no limit) that never fills."""
    url = empty_tables(options.postgres_url)
    limits = {} if places is None else {"commands": {"true": {"concurrency": places}}}
    with beanstalkd() as address:
        service = TaskQueueService(load_settings({"database_url": url, "beanstalkd": f"{address[0]}:{address[1]}",
                                                  "commands": {"true": ["/bin/true"]}, "limits": limits},
                                                 environ={}))
        try:
            service.queue_many(TaskDescription("true") for _ in range(options.claims + 1))
            worker = TaskClaims(service.dispatch)
            end_next(worker)  # untimed: the first claim makes the limit's rows
            claims: int = options.claims
            started = time.perf_counter()
            for _ in range(claims):
                end_next(worker)
            return claims / (time.perf_counter() - started)
        finally:
            service.close()


def end_next(worker: TaskClaims) -> None:
    package = worker.reserve_task(TUBE, 0)
    if package is None:
        raise BenchError("no task was claimed: a limit that should never fill refused one")
    worker.mark_done(package, None)


def postgres_version(url: str) -> str:
    engine = create_engine(url)
    try:
        return server_version(engine)
    finally:
        engine.dispose()


def format_table(figures: Figures, info: dict[str, Any], options: argparse.Namespace) -> str:
    def side(values: list[float]) -> str:
        return f"{statistics.median(values):7.0f} ({min(values):.0f} .. {max(values):.0f})"

    def ratio(name: str, base: str) -> str:
        return f"{statistics.median(figures[name]) / statistics.median(figures[base]):6.2f}"

    lines = [f"bench-limits: per second, medians of {options.runs} run(s) (min .. max); ratio = to the first row; "
             f"PostgreSQL {info['postgresql']}", "",
             f"unlimited /bin/true tasks, {options.tasks} through a tender of {options.workers} workers:",
             f"  {'alone in their tube':44} {side(figures['alone']):>24}",
             f"  {f'beside {options.limited} tasks limited to 1 at a time':44} {side(figures['beside']):>24} "
             f"{ratio('beside', 'alone')}",
             f"claim + end, {options.claims} tasks one at a time in one process:"]
    for name in CLAIM_LIMITS:
        lines.append(f"  {name:44} {side(figures[name]):>24} {ratio(name, 'no limit')}")
    lines += ["", machine_line(info)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
