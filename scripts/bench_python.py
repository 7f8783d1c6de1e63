"""Benchmark Python functions as tasks: pheanq beside RQ and Celery, in one run on this machine.

Issue 12's yardstick, built before the feature it measures: every system runs the same functions
(scripts/benchapp/work.py) with 2 worker processes, on three workloads — a no-op, 5 ms of CPU, and a
function of an application whose import costs ~300 ms:

- ``rq-fork``: RQ's forking ``Worker`` (a work horse forked per job), the application imported before it forks;
- ``rq-simple``: RQ's ``SimpleWorker`` (every job in the worker's own process: no isolation);
- ``celery``: Celery's prefork pool, ``--concurrency 2``, redis broker, late acks;
- ``pheanq-command``: pheanq today, the function run as a registered command ``python -m benchapp.run``
  (a fresh interpreter per task), two ``pheanq task-worker`` processes on SQLite;
- ``pheanq-python``: pheanq's ``@task`` functions (scripts/benchapp/pheanq_tasks.py), two ``pheanq task-worker
  --import benchapp.pheanq_tasks`` processes on SQLite, each running tasks in its forked child, reused
  (the default, ``max_tasks_per_child`` 1000);
- ``pheanq-py-fork``: the same with ``max_tasks_per_child`` 1, a fresh fork per task.

For each: tasks/s (workers started and warm, a burst of tasks queued, from the first put to the last
function's end) and pickup latency (tasks queued 50 ms apart to idle workers, further apart for a system
slower than that; queue → function start) p50 and p99. Medians over --runs, and ratios to RQ's forking
worker. RQ and Celery live in the benchmark's own venv (.bench-peers, made by scripts/bench-python), never
in pheanq's dependencies; redis at 127.0.0.1:6379, database 15, is flushed before each run.
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
from pathlib import Path
from typing import TYPE_CHECKING

from benchlib import BenchError, beanstalkd, fresh_database, machine, percentile, spawn, stop

if TYPE_CHECKING:
    from pheanq.producer.service import TaskQueueService

SCRIPTS = Path(__file__).resolve().parent
WORKERS = 2
WORKLOADS = ("noop", "cpu", "heavy")
SYSTEMS = ("rq-fork", "rq-simple", "celery", "pheanq-command", "pheanq-python", "pheanq-py-fork")
NOT_BUILT: dict[str, str] = {}
LATENCY_SPACING = 0.05


class Bench:
    """One run's directory, the peers' python, and how many tasks each kind of measurement takes."""

    def __init__(self, root: Path, peers_python: str, tasks: int, command_tasks: int, latency_tasks: int) -> None:
        self.root = root
        self.peers_python = peers_python
        self.tasks = tasks
        self.command_tasks = command_tasks
        self.latency_tasks = latency_tasks
        self.serial = 0

    def out(self, name: str) -> Path:
        self.serial += 1
        return self.root / f"{name}-{self.serial}.done"

    def peers(self, *args: str, capture: bool = False) -> str:
        result = subprocess.run([self.peers_python, "-m", "benchapp.peers", *args], cwd=SCRIPTS, env=peers_env(),
                                capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise BenchError(f"benchapp.peers {' '.join(args)}: {result.stderr.strip()[-400:]}")
        return result.stdout if capture else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers-python", required=True, help="python of the venv with rq, celery and redis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=400, help="tasks per throughput burst (peers, pheanq)")
    parser.add_argument("--command-tasks", type=int, default=40, help="the same for pheanq's command path")
    parser.add_argument("--latency-tasks", type=int, default=60)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, of {', '.join(SYSTEMS)} (rq-fork is always measured: ratios use it)")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    chosen = {"rq-fork", *options.systems.split(",")}
    if unknown := sorted(chosen - set(SYSTEMS)):
        parser.error(f"unknown system {unknown[0]!r} (known: {', '.join(SYSTEMS)})")
    figures: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pheanq-bench-python-") as directory:
        bench = Bench(Path(directory), options.peers_python, options.tasks, options.command_tasks,
                      options.latency_tasks)
        for run in range(options.runs):
            for system in SYSTEMS:
                if system in NOT_BUILT or system not in chosen:
                    continue
                for workload in WORKLOADS:
                    print(f"bench-python: run {run + 1}/{options.runs} {system} {workload}", file=sys.stderr)
                    measured = MEASURE[system](bench, workload)
                    for name, value in measured.items():
                        figures.setdefault(system, {}).setdefault(workload, {}).setdefault(name, []).append(value)
    if options.json:
        print(json.dumps({"runs": options.runs, "workers": WORKERS, "machine": machine(), "figures": figures,
                          "not_built": NOT_BUILT}, indent=2))
    else:
        print(format_table(figures, options.runs))
    return 0


# --- the peers ---------------------------------------------------------------------------------------------------


def measure_rq(bench: Bench, workload: str, system: str) -> dict[str, float]:
    queue = f"bench-{system}-{bench.serial}"
    bench.peers("flush")
    workers = [spawn([bench.peers_python, "-m", "benchapp.peers", "worker", system, queue], cwd=SCRIPTS,
                     env=peers_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(WORKERS)]
    try:
        return burst_and_latency(bench, workload, lambda out, n, spacing: peers_enqueue(
            bench, system, queue, workload, out, n, spacing))
    finally:
        for worker in workers:
            stop(worker)


def measure_celery(bench: Bench, workload: str) -> dict[str, float]:
    queue = f"bench-celery-{bench.serial}"
    bench.peers("flush")
    celery = str(Path(bench.peers_python).parent / "celery")
    worker = spawn([celery, "-A", "benchapp.celery_app", "worker", "--pool", "prefork", "--concurrency",
                    str(WORKERS), "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "--loglevel", "WARNING"], cwd=SCRIPTS, env=peers_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    try:
        return burst_and_latency(bench, workload, lambda out, n, spacing: peers_enqueue(
            bench, "celery", queue, workload, out, n, spacing))
    finally:
        stop(worker)


def peers_enqueue(bench: Bench, system: str, queue: str, workload: str, out: Path, count: int,
                  spacing: float) -> dict[str, float]:
    text = bench.peers("enqueue", system, queue, workload, str(out), str(count), str(spacing), capture=True)
    return {key: float(at) for key, at in (line.split() for line in text.splitlines() if line.strip())}


def peers_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SCRIPTS)}


# --- pheanq ------------------------------------------------------------------------------------------------------


def measure_pheanq_command(bench: Bench, workload: str) -> dict[str, float]:
    from pheanq import TaskDescription

    def queue(service: TaskQueueService, key: str, out: Path) -> None:
        service.queue_task(TaskDescription("bench", [workload, key, str(out)]))

    return measure_pheanq(bench, workload, [], {}, queue, tasks=bench.command_tasks,
                          latency_tasks=max(5, bench.latency_tasks // 4))


def measure_pheanq_python(bench: Bench, workload: str, tasks_per_child: int) -> dict[str, float]:
    from benchapp.pheanq_tasks import TASKS

    def queue(service: TaskQueueService, key: str, out: Path) -> None:
        TASKS[workload].options(service=service).queue(key, str(out))

    return measure_pheanq(bench, workload, ["--import", "benchapp.pheanq_tasks"],
                          {"PHEANQ_MAX_TASKS_PER_CHILD": str(tasks_per_child)}, queue)


def measure_pheanq(bench: Bench, workload: str, worker_args: list[str], worker_env: dict[str, str],
                   queue: Callable[[TaskQueueService, str, Path], None], tasks: int | None = None,
                   latency_tasks: int | None = None) -> dict[str, float]:
    """Two `pheanq task-worker` processes with `worker_args` on a fresh SQLite database and beanstalkd; `queue`
    queues one task."""
    from pheanq.config import load_settings
    from pheanq.producer.service import TaskQueueService

    bench.serial += 1
    url = fresh_database(bench.root, f"pheanq-{bench.serial}.db")
    config = bench.root / f"pheanq-{bench.serial}.toml"
    config.write_text(f'[commands]\nbench = ["{sys.executable}", "-m", "benchapp.run"]\n')
    config.chmod(0o600)
    with beanstalkd() as address:
        env = {**os.environ, "PHEANQ_DATABASE_URL": url, "PHEANQ_BEANSTALKD": f"{address[0]}:{address[1]}",
               "PHEANQ_CONFIG": str(config), "PYTHONPATH": str(SCRIPTS), **worker_env}
        service = TaskQueueService(load_settings({"database_url": url, "beanstalkd": f"{address[0]}:{address[1]}",
                                                  "commands": {"bench": [sys.executable]}}, environ={}))

        def enqueue(out: Path, count: int, spacing: float) -> dict[str, float]:
            queued = {}
            for n in range(count):
                key = f"pheanq-{bench.serial}-{out.stem}-{n}"
                queued[key] = time.time()
                queue(service, key, out)
                if spacing:
                    time.sleep(spacing)
            return queued

        workers = [spawn([sys.executable, "-m", "pheanq", "task-worker", *worker_args], env=env, cwd=SCRIPTS,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(WORKERS)]
        try:
            return burst_and_latency(bench, workload, enqueue, tasks=tasks, latency_tasks=latency_tasks)
        finally:
            for worker in workers:
                stop(worker)
            service.close()


MEASURE: dict[str, Callable[[Bench, str], dict[str, float]]] = {
    "rq-fork": lambda bench, workload: measure_rq(bench, workload, "rq-fork"),
    "rq-simple": lambda bench, workload: measure_rq(bench, workload, "rq-simple"),
    "celery": measure_celery,
    "pheanq-command": measure_pheanq_command,
    "pheanq-python": lambda bench, workload: measure_pheanq_python(bench, workload, 1000),
    "pheanq-py-fork": lambda bench, workload: measure_pheanq_python(bench, workload, 1),
}


# --- measuring ---------------------------------------------------------------------------------------------------

Enqueue = Callable[[Path, int, float], dict[str, float]]


def burst_and_latency(bench: Bench, workload: str, enqueue: Enqueue, tasks: int | None = None,
                      latency_tasks: int | None = None) -> dict[str, float]:
    """Warm the workers with a few tasks, then time a burst, then measure pickup latency one task at a time."""
    warm = bench.out("warm")
    wait_done(warm, enqueue(warm, WORKERS * 2, 0.0), 120)
    count = tasks or bench.tasks
    burst = bench.out("burst")
    started = time.time()
    queued = enqueue(burst, count, 0.0)
    ends = wait_done(burst, queued, 600)
    per_second = count / (max(end for _, end in ends.values()) - started)
    # Tasks 50 ms apart, or further apart when the system is slower than that: pickup is measured on idle
    # workers, not on a queue that grows because tasks arrive faster than they finish.
    spacing = max(LATENCY_SPACING, 1.5 * WORKERS / per_second)
    paced = bench.out("latency")
    queued = enqueue(paced, latency_tasks or bench.latency_tasks, spacing)
    starts = wait_done(paced, queued, 600)
    pickups = sorted((starts[key][0] - at) * 1000 for key, at in queued.items())
    return {"tasks_per_s": per_second, "pickup_p50_ms": percentile(pickups, 50),
            "pickup_p99_ms": percentile(pickups, 99)}


def wait_done(out: Path, queued: dict[str, float], timeout: float) -> dict[str, tuple[float, float]]:
    """(start, end) of every queued key, once the file has them all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = read_done(out)
        if all(key in done for key in queued):
            return done
        time.sleep(0.01)
    raise BenchError(f"{out.name}: {len(read_done(out))} of {len(queued)} tasks done after {timeout:.0f}s")


def read_done(out: Path) -> dict[str, tuple[float, float]]:
    if not out.exists():
        return {}
    done = {}
    for line in out.read_text().splitlines():
        key, start, end = line.split()
        done[key] = (float(start), float(end))
    return done


def format_table(figures: dict[str, dict[str, dict[str, list[float]]]], runs: int) -> str:
    lines = [f"bench-python: {WORKERS} worker processes per system, medians of {runs} run(s); ratio = tasks/s "
             "over RQ's forking worker's on the same workload", ""]
    lines.append(f"{'system':16} {'workload':8} {'tasks/s':>9} {'ratio':>7} {'pickup p50':>11} {'p99':>9}")
    for system in SYSTEMS:
        if system in NOT_BUILT:
            lines.append(f"{system:16} {NOT_BUILT[system]}")
            continue
        if system not in figures:
            continue
        for workload in WORKLOADS:
            measured = figures[system][workload]
            rate = statistics.median(measured["tasks_per_s"])
            reference = statistics.median(figures["rq-fork"][workload]["tasks_per_s"])
            lines.append(f"{system:16} {workload:8} {rate:9.1f} {rate / reference:6.2f}x "
                         f"{statistics.median(measured['pickup_p50_ms']):9.1f}ms "
                         f"{statistics.median(measured['pickup_p99_ms']):7.1f}ms")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
