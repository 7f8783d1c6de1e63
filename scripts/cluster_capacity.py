"""Capacity of scripts/cluster: tasks/s for K hosts, and what each task costs the database, from PostgreSQL's own
statistics, so that the per-task cost can be carried to bigger machines.

One measured run: the tenders of the first K hosts are started (the tender's own defaults: reconcile every 30 s)
and left 3 s for the reconcile passes each owes at its start, pg_stat_statements is reset and pg_stat_database
read; each of the K hosts queues N/K trivial tasks (`noop`:
one shell that appends the task's id to ran.txt) as fast as queue_task goes; when ran.txt holds N ids the time
is taken, the tenders are stopped (SIGTERM: their connections close, so their backends' statistics are flushed
to pg_stat_database at once) and the statistics read again. Per task:

- transactions: (xact_commit + xact_rollback) of pheanq's database, delta / N;
- statements: pg_stat_statements' calls in pheanq's database (BEGIN and COMMIT included), delta / N, a
  statement executed being one round trip, give or take the driver's own.

The producers connect as a role of their own, so pg_stat_statements splits the statements into the producers'
and the workers' (and tenders'). Everything the harness reads goes through the database `postgres`, not
pheanq's, so it is not counted.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chaos import pause, wait_until
from cluster_faults import SCRIPTS
from clusterlib import DATABASE, NOOP, PRODUCER, TTR, Cluster, Node, Process

TOP_STATEMENTS = 10
STARTUP_PASSES_SECONDS = 3.0


@dataclasses.dataclass
class Measured:
    """One run with K hosts."""

    hosts: int
    tasks: int
    seconds: float
    transactions: float          # per task
    statements: float            # per task
    by_producers: float          # of `statements`, those of the producers (the rest: tenders and workers)
    top: list[tuple[float, str]]  # (calls per task, statement) of the most called statements

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def measure(cluster: Cluster, hosts: int, tasks: int, number: int) -> Measured:
    """One run on the first `hosts` hosts of `cluster` (see the module's text)."""
    used = cluster.hosts[:hosts]
    before_ids = count_lines(cluster.ran_file)
    cluster.start_tenders(used)
    # Each tender owes a reconcile pass at its start, and the tenders take it in turn through the lock; on an empty
    # backlog they end within a second. Begun while tasks are queued, such a pass re-sends tasks that workers are
    # running meanwhile (docs/cluster.rst, "What the scenarios found"): not the steady state measured here.
    pause(STARTUP_PASSES_SECONDS)
    cluster.sql("SELECT pg_stat_statements_reset()", database="postgres")
    transactions_before = transactions(cluster)
    producers: list[tuple[Process, Path]] = []
    for i, host in enumerate(used):
        share = tasks // hosts + (1 if i < tasks % hosts else 0)
        producers.append(start_producer(cluster, host, share, f"{number}-{i}"))
    wait_until(lambda: count_lines(cluster.ran_file) >= before_ids + tasks, 60 + tasks, f"{tasks} tasks to run", 0.02)
    ended = time.time()
    wait_until(lambda: not any(process.alive() for process, _ in producers), 30, "the producers to exit")
    started = min(float(out.read_text().split()[1]) for _, out in producers)
    cluster.stop_tenders()
    wait_until(lambda: not other_backends(cluster), 30, "the tenders' connections to close")
    spent = transactions(cluster) - transactions_before
    rows = cluster.sql("SELECT calls, query, rolname FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                       "JOIN pg_roles r ON r.oid = s.userid WHERE d.datname = %(db)s ORDER BY calls DESC",
                       {"db": DATABASE}, database="postgres")
    calls = sum(int(row[0]) for row in rows)
    by_producers = sum(int(row[0]) for row in rows if row[2] == PRODUCER)
    top = [(int(row[0]) / tasks, f"[{'producer' if row[2] == PRODUCER else 'worker'}] {' '.join(str(row[1]).split())}")
           for row in rows[:TOP_STATEMENTS]]
    not_done = cluster.sql("SELECT count(*) FROM pheanq_task WHERE status <> 'done'")[0][0]
    if not_done:
        raise RuntimeError(f"{not_done} task(s) not done after the run")
    return Measured(hosts, tasks, ended - started, spent / tasks, calls / tasks, by_producers / tasks, top)


def start_producer(cluster: Cluster, host: Node, count: int, name: str) -> tuple[Process, Path]:
    out = host.directory / f"capacity-{name}.txt"
    argv = [sys.executable, str(SCRIPTS / "cluster_producer.py"), str(out), NOOP, str(count), "0", "0", str(TTR), "0",
            name]
    return cluster.run_on(host, argv, host.directory / f"capacity-{name}.log"), out


def count_lines(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def transactions(cluster: Cluster) -> int:
    return int(cluster.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %(db)s",
                           {"db": DATABASE}, database="postgres")[0][0])


def other_backends(cluster: Cluster) -> int:
    """Client connections to pheanq's database (the tenders', the producers')."""
    return int(cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                           {"db": DATABASE}, database="postgres")[0][0])


def capacity(host_counts: list[int], tasks: int, runs: int, workers: int, servers: int,
             say: Callable[[str], None]) -> list[list[Measured]]:
    """For each K, `runs` measured runs on one cluster of max(K) hosts; say() prints a line a run as it comes."""
    results: list[list[Measured]] = []
    with Cluster(hosts=max(host_counts), servers=servers, workers=workers, reconcile_interval=None) as cluster:
        for hosts in host_counts:
            results.append([])
            for number in range(runs):
                done = measure(cluster, hosts, tasks, len(results) * 100 + number)
                results[-1].append(done)
                say(f"capacity: {hosts} host(s), run {number + 1}: {done.rate:.0f} tasks/s, "
                    f"{done.transactions:.2f} transactions and {done.statements:.2f} statements per task "
                    f"({done.by_producers:.2f} of them the producers')")
    return results


def table(results: list[list[Measured]], workers: int) -> str:
    """Medians of each K's runs, a row each; then the top statements of the largest K's median run."""
    lines = [f"{'hosts':>5} {'workers':>7} {'tasks/s':>8} {'transactions/task':>18} {'statements/task':>16} "
             f"{'producers':>10} {'workers':>8}"]
    for runs in results:
        statements = statistics.median(run.statements for run in runs)
        producers = statistics.median(run.by_producers for run in runs)
        workers_part = statistics.median(run.statements - run.by_producers for run in runs)
        lines.append(f"{runs[0].hosts:>5} {runs[0].hosts * workers:>7} "
                     f"{statistics.median(run.rate for run in runs):>8.0f} "
                     f"{statistics.median(run.transactions for run in runs):>18.2f} "
                     f"{statements:>16.2f} {producers:>10.2f} {workers_part:>8.2f}")
    last = sorted(results[-1], key=lambda run: run.statements)[len(results[-1]) // 2]
    lines.append(f"top statements by calls per task ({last.hosts} host(s)):")
    lines += [f"  {per_task:6.2f}  {query[:110]}" for per_task, query in last.top]
    return "\n".join(lines)
