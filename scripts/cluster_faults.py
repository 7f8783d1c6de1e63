"""The fault scenarios of scripts/cluster. Each builds a fresh cluster (see clusterlib), starts a tender on every
host, queues tasks from several hosts, knocks something over mid-run, waits for every task to end, and counts
from ran.txt (each completed command appends its task id) and from the table, each on its own::

    <scenario>: queued N, done N, lost 0, completed twice 0 (notes)

`lost` is a queued id that is not `done` (table) or never written (file); `completed twice` an id written more
than once (file) or whose log has more than one completed attempt (table). The line shows the worse of the two.
A command stopped half-way and run again elsewhere is expected: it is not "completed twice".
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chaos
import greenstalk
from chaos import COMMAND, COMPLETED_ATTEMPT, TENDER_RESENT_MARK, ScenarioFailed, pause, wait_until
from clusterlib import BEANSTALKD_PORT, TTR, TUBE, Cluster, Node, Process

from pheanq.body import decode_data
from pheanq.lease import stale_after

# pheanq.dispatch.ends: a result refused because another attempt now holds the task (ends are compare-and-set).
FENCED = "no longer holds the task"
# pheanq.worker.holds: a holder that could renew neither its lease nor its reservation stopped its command.
STOPPED_UNRENEWED = re.compile(r"could be renewed for \d+s")
SCRIPTS = Path(__file__).resolve().parent
ENDS = {"done", "failed", "cancelled", "upstream_failed"}   # pheanq.status: the statuses a task ends in
BUSY_SECONDS = 60.0         # how long a scenario waits for its victim to run what its fault must catch


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every scenario of a run is asked to do."""

    hosts: int = 3
    servers: int = 2
    tasks: int = 60
    workers: int = 2
    keep: bool = False      # keep every cluster's directory (a failed scenario's is always kept)


class Outcome(chaos.Outcome):
    """What one scenario found: chaos's counts (`failed` stays 0: the commands always exit 0), its own line."""

    def line(self) -> str:
        notes = [*self.notes, *(f"PROBLEM: {problem}" for problem in self.problems), f"{self.seconds:.1f}s"]
        return (f"{self.scenario}: queued {self.queued}, done {self.done}, lost {self.lost}, completed twice "
                f"{self.ran_twice} ({'; '.join(notes)})")


class Run:
    """One scenario on its cluster: its producers, its waits, its counts."""

    def __init__(self, name: str, cluster: Cluster, plan: Plan) -> None:
        self.name, self.cluster, self.plan = name, cluster, plan
        self.outcome = Outcome(name)
        self.producers: list[tuple[Process, Path]] = []

    def note(self, text: str) -> None:
        self.outcome.notes.append(text)

    def problem(self, text: str) -> None:
        self.outcome.problems.append(text)

    # --- queueing from the hosts ---

    def produce(self, hosts: list[Node], count: int, low: float, high: float, seconds: float,
                command: str = COMMAND) -> None:
        """`count` tasks of `low`..`high` seconds, queued from these hosts (a share each) over `seconds`."""
        for i, host in enumerate(hosts):
            share = count // len(hosts) + (1 if i < count % len(hosts) else 0)
            number = len(self.producers) + 1
            out = host.directory / f"queued-{number}.txt"
            argv = [sys.executable, str(SCRIPTS / "cluster_producer.py"), str(out), command, str(share), str(low),
                    str(high), str(TTR), str(seconds), f"{self.name}:{number}"]
            self.producers.append((self.cluster.run_on(host, argv, host.directory / f"producer-{number}.log"), out))

    def producing(self) -> bool:
        return any(process.alive() for process, _ in self.producers)

    def queued(self) -> list[int]:
        ids: list[int] = []
        for _, out in self.producers:
            with contextlib.suppress(FileNotFoundError):
                ids += [int(line.split()[0]) for line in out.read_text().splitlines() if line[:1].isdigit()]
        return ids

    def pending(self) -> int:
        """Tasks whose queue_task warned TaskPendingWarning (beanstalkd away): the reconciler sends them."""
        return sum(out.read_text().count(" pending") for _, out in self.producers if out.exists())

    def started_at(self) -> float:
        """When the first producer began to queue (epoch seconds)."""
        starts = [float(line.split()[1]) for _, out in self.producers if out.exists()
                  for line in out.read_text().splitlines()[:1] if line.startswith("start ")]
        return min(starts, default=time.time())

    def wait_queued(self, count: int, timeout: float) -> None:
        wait_until(lambda: len(self.queued()) >= count, timeout, f"{count} task(s) to be queued")

    # --- the table ---

    def statuses(self) -> dict[str, int]:
        """How many tasks are in each status ({} while the database cannot say)."""
        try:
            return {str(status): int(n) for status, n in
                    self.cluster.sql("SELECT status, count(*) FROM pheanq_task GROUP BY status")}
        except Exception:
            return {}

    def done(self) -> int:
        return self.statuses().get("done", -1)

    def working_on(self, host: Node, ahead: float = 0.0) -> list[int]:
        """The tasks a worker of `host` holds now, of those whose command has `ahead` seconds or more still to run
        (its start and its duration argument say)."""
        with contextlib.suppress(Exception):
            rows = self.cluster.sql("SELECT id, started, data FROM pheanq_task WHERE status = 'working' AND worker "
                                    "LIKE %(host)s", {"host": f"{host.hostname}:%"})
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)   # pheanq's clock: naive UTC
            return [int(task_id) for task_id, started, data in rows
                    if started + dt.timedelta(seconds=float(decode_data(data).arguments[0])) - now
                    >= dt.timedelta(seconds=ahead)]
        return []

    def rows(self) -> dict[int, tuple[str, int, str, str]]:
        """id -> (status, attempts, worker, log)."""
        return {int(row[0]): (str(row[1]), int(row[2] or 0), str(row[3] or ""), str(row[4] or "")) for row in
                self.cluster.sql("SELECT id, status, attempts, worker, log FROM pheanq_task")}

    def wait_done(self, count: int, timeout: float) -> None:
        wait_until(lambda: self.done() >= count, timeout, f"{count} task(s) to be done")

    def wait_busy(self, host: Node, timeout: float, least: int = 1, ahead: float = 0.0) -> list[int]:
        """Until workers of `host` run `least` tasks each with `ahead` seconds or more of its command still to run,
        so that none ends by chance at the moment of the fault; the tasks it holds then."""
        def held() -> list[int]:
            fresh = self.working_on(host, ahead)
            return fresh if len(fresh) >= least else []

        return list(wait_until(held, timeout, f"{host.hostname} to start {least} task(s)", 0.05))

    def finish(self, timeout: float) -> None:
        """Until queueing is over and every task has ended (done, or another end, which the counts then show as
        lost); a problem saying what is missing at the deadline."""
        def finished() -> bool:
            if self.producing():
                return False
            counts = self.statuses()
            ended = sum(n for status, n in counts.items() if status in ENDS)
            return bool(counts) and ended == sum(counts.values()) >= len(self.queued())

        try:
            wait_until(finished, timeout, "every task to end", 0.25)
        except ScenarioFailed:
            self.problem(f"timed out after {timeout:.0f}s: statuses {self.statuses()}, still queueing "
                         f"{self.producing()} (the rows not done and their logs: unfinished.txt)")
        counts = self.statuses()
        if counts.get("done", 0) == sum(counts.values()):
            return
        if not self.outcome.problems:
            self.problem(f"not every task ended done: statuses {counts} (the rows not done and their logs: "
                         f"unfinished.txt)")
        with contextlib.suppress(Exception), (self.cluster.directory / "unfinished.txt").open("w") as out:
            for task_id, (status, attempts, worker, log) in sorted(self.rows().items()):
                if status != "done":
                    out.write(f"=== task {task_id}: {status}, attempts {attempts}, worker {worker}\n{log}\n")

    # --- the counts ---

    def count(self) -> Outcome:
        outcome = self.outcome
        queued = self.queued()
        outcome.queued = len(queued)
        ran = collections.Counter(int(line) for line in self.cluster.ran_file.read_text().split() if line.isdigit())
        outcome.lost_file = len(set(queued) - set(ran))
        outcome.twice_file = sum(1 for task_id in queued if ran[task_id] > 1)
        try:
            rows = self.rows()
        except Exception as error:
            self.problem(f"the table could not be read at the end: {error}")
            rows = {}
        mine = {task_id: rows[task_id] for task_id in queued if task_id in rows}
        outcome.done = sum(1 for status, *_ in mine.values() if status == "done")
        outcome.lost_table = len(queued) - outcome.done
        outcome.twice_table = sum(1 for *_, log in mine.values() if len(COMPLETED_ATTEMPT.findall(log)) > 1)
        outcome.reruns = reruns = sum(max(attempts - 1, 0) for _, attempts, _, _ in mine.values())
        if len(queued) != len(set(queued)):
            self.problem("a task id was returned twice")
        extra = set(rows) - set(queued)
        if extra:
            self.problem(f"{len(extra)} row(s) that no producer queued")
        pending = self.pending()
        outcome.pending = pending
        self.note(f"{reruns} attempt(s) beyond the first")
        if pending:
            self.note(f"{pending} queued while beanstalkd was unreachable, sent later by their producer or a "
                      f"reconciler")
        return outcome

    def tender_log_count(self, pattern: str | re.Pattern[str], hosts: list[Node] | None = None) -> int:
        """How often `pattern` appears in these hosts' tender logs (every host by default)."""
        texts = [(host.directory / "tender.log").read_text(errors="replace")
                 for host in (hosts or self.cluster.hosts) if (host.directory / "tender.log").exists()]
        if isinstance(pattern, str):
            return sum(text.count(pattern) for text in texts)
        return sum(len(pattern.findall(text)) for text in texts)

    def resent(self) -> int:
        return sum(int(n) for host in self.cluster.hosts
                   for n in TENDER_RESENT_MARK.findall((host.directory / "tender.log").read_text(errors="replace")))

    def taken_over(self, ids: list[int], host: Node) -> int:
        """Of these tasks (held by `host` at a fault), how many another host ended done."""
        rows = self.rows()
        return sum(1 for task_id in ids if rows.get(task_id, ("",))[0] == "done"
                   and not rows[task_id][2].startswith(f"{host.hostname}:"))


def deadline(run: Run, mean: float, fault: float = 0.0) -> float:
    """A generous bound for a scenario: start-up, four times the expected work, the fault's own time."""
    plan = run.plan
    return 60.0 + fault + 4 * plan.tasks * (mean + 0.2) / (plan.hosts * plan.workers)


def feed_seconds(run: Run) -> float:
    """How long the queueing is spread over, so that the fault lands while tasks are still queued."""
    return min(10.0, max(3.0, run.plan.tasks / 20))


def short_tasks_from_every_host(run: Run, seconds: float | None = None) -> float:
    """Tenders on every host, and tasks of 0.1-0.5 s queued from every host (over `seconds`, by default as
    feed_seconds says); the scenario's deadline."""
    run.cluster.start_tenders()
    run.produce(run.cluster.hosts, run.plan.tasks, 0.1, 0.5, feed_seconds(run) if seconds is None else seconds)
    return deadline(run, 0.3, 30)


def long_tasks_first(run: Run, producers: list[Node]) -> float:
    """Tasks queued from these hosts: first one of 2-3 s for every worker of the cluster, so that the victim's
    workers soon run commands with a second or more still ahead, then the rest of 0.1-2 s; the deadline."""
    first = len(run.cluster.hosts) * run.cluster.workers
    run.produce(producers, first, 2.0, 3.0, 0.5)
    run.produce(producers, run.plan.tasks - first, 0.1, 2.0, feed_seconds(run))
    return deadline(run, 1.2, 30)


# --- the scenarios -------------------------------------------------------------------------------------------------


def link_cut(run: Run) -> None:
    """A host's link down, mid-run, for longer than a lease lasts, then up: its tasks are taken over elsewhere,
    it stops its commands when it cannot renew, and the results it tries to record on its return are refused."""
    cluster, victim = run.cluster, run.cluster.hosts[0]
    cluster.start_tenders()
    # Tasks of 8-9 s, cut with 5 s or more of each still to run: longer than a holder may go on unrenewed after the
    # cut (pheanq.lease.holder_must_stop_after(TTR) = 3.7 s), so a command running on the cut host must be stopped
    # before it completes, not completed unrecorded.
    # A tenth of the tasks (at least two rounds of every worker): long tasks take long.
    tasks = min(run.plan.tasks, max(2 * len(cluster.hosts) * cluster.workers, run.plan.tasks // 10))
    run.produce(cluster.hosts[1:], tasks, 8.0, 9.0, feed_seconds(run))
    limit = deadline(run, 8.5 * tasks / run.plan.tasks, 40)
    held = run.wait_busy(victim, BUSY_SECONDS, least=cluster.workers, ahead=5.0)
    cut_for = stale_after(TTR) + 10
    cluster.cut_link(victim)
    pause(cut_for)  # the fault's own duration: longer than a lease stays valid
    cluster.restore_link(victim)
    run.finish(limit)
    taken = run.taken_over(held, victim)
    fenced = run.tender_log_count(FENCED, [victim])
    stopped = run.tender_log_count(STOPPED_UNRENEWED, [victim])
    run.outcome.figures.update(held=len(held), taken_over=taken, fenced=fenced, stopped=stopped)
    run.note(f"{victim.hostname}'s link down {cut_for:.0f}s while it held {len(held)} task(s): {taken} taken over "
             f"by other hosts, {stopped} command(s) stopped unrenewed, {fenced} late result(s) refused")
    if stopped < len(held):
        run.problem(f"{len(held) - stopped} of the {len(held)} command(s) running on {victim.hostname} were not "
                    f"stopped when it could not renew their leases")


def beanstalkd_killed(run: Run) -> None:
    """A beanstalkd server killed -9 mid-run, then started again with its binlog. With several servers the others
    carry on, the reconcilers send its tasks again, and the jobs it brings back from its binlog are deleted unrun."""
    cluster = run.cluster
    several = len(cluster.servers) > 1
    # Queued in a second, far faster than the workers run them: the server dies holding many tasks' jobs.
    limit = short_tasks_from_every_host(run, seconds=1.0)
    wait_until(lambda: ready_on(cluster, 0) >= 2, BUSY_SECONDS, "jobs waiting on the server to kill")
    cluster.kill_beanstalkd(0)
    down_for = 10.0 if several else 3.0
    pause(down_for)  # the fault's own duration: long enough, with several servers, for the reconcilers to re-send
    cluster.start_beanstalkd(0)
    back = jobs_on(cluster, 0)
    run.finish(limit)
    if several:
        with contextlib.suppress(ScenarioFailed):
            wait_until(lambda: jobs_on(cluster, 0) == 0, 30, "the returned server's old jobs to be dealt with")
        if jobs_on(cluster, 0):
            run.problem(f"{jobs_on(cluster, 0)} job(s) the returned server brought back are still there")
    resent = run.resent()
    run.outcome.figures.update(resent=resent, back=back)
    run.note(f"beanstalkd {cluster.servers[0].hostname} of {len(cluster.servers)} killed -9, back after "
             f"{down_for:.0f}s with {back} job(s) from its binlog; the tenders' reconcilers sent {resent} job(s) again")


def jobs_on(cluster: Cluster, index: int) -> int:
    """Jobs of the tube that server `index` holds ready or reserved (-1 when it cannot be asked)."""
    return tube_figure(cluster, index, "current-jobs-ready", "current-jobs-reserved")


def ready_on(cluster: Cluster, index: int) -> int:
    """Jobs of the tube waiting on server `index` (-1 when it cannot be asked)."""
    return tube_figure(cluster, index, "current-jobs-ready")


def tube_figure(cluster: Cluster, index: int, *names: str) -> int:
    try:
        with greenstalk.Client((cluster.servers[index].address, BEANSTALKD_PORT), encoding=None) as client:
            stats = client.stats_tube(TUBE)
    except greenstalk.NotFoundError:
        return 0
    except (OSError, greenstalk.Error):
        return -1
    return sum(int(str(stats.get(name, 0))) for name in names)


def beanstalkd_partitioned(run: Run) -> None:
    """A beanstalkd server cut off from half of the hosts only, then reachable again."""
    cluster = run.cluster
    cut_off = cluster.hosts[:max(1, len(cluster.hosts) // 2)]
    limit = short_tasks_from_every_host(run)
    run.wait_queued(run.plan.tasks * 3 // 10, limit)
    cluster.partition_beanstalkd(0, cut_off)
    apart = stale_after(TTR) + 2
    pause(apart)  # the fault's own duration
    cluster.heal()
    run.finish(limit)
    resent = run.resent()
    run.outcome.figures["resent"] = resent
    run.note(f"beanstalkd {cluster.servers[0].hostname} unreachable from {','.join(h.hostname for h in cut_off)} for "
             f"{apart:.0f}s; the tenders' reconcilers sent {resent} job(s) again")


def tender_killed(run: Run) -> None:
    """One host's tender killed -9 mid-run (its workers and their commands go with it), started again later."""
    cluster, victim = run.cluster, run.cluster.hosts[0]
    cluster.start_tenders()
    limit = long_tasks_first(run, cluster.hosts)
    held = run.wait_busy(victim, BUSY_SECONDS, ahead=1.0)
    cluster.kill_tender(victim)
    pause(stale_after(TTR))  # the fault's own duration: the host has no tender for a lease's length
    cluster.start_tenders([victim])
    run.finish(limit)
    taken = run.taken_over(held, victim)
    run.outcome.figures.update(held=len(held), taken_over=taken)
    run.note(f"{victim.hostname}'s tender killed -9 while it held {len(held)} task(s) ({taken} ended on other hosts, "
             f"{len(held) - taken} on {victim.hostname} itself), started again after {stale_after(TTR):.0f}s")


def host_killed(run: Run) -> None:
    """Every process of one host killed -9 at once, mid-run; the host stays down."""
    cluster, victim = run.cluster, run.cluster.hosts[0]
    cluster.start_tenders()
    # Killed with 1 s or more of each command still to run: each is killed mid-command, none in the instant between
    # its command's end and the recording of its result (in which a whole host's death makes it run again, see
    # docs/guarantees.rst, "What is not promised").
    limit = long_tasks_first(run, cluster.hosts[1:])
    held = run.wait_busy(victim, BUSY_SECONDS, least=cluster.workers, ahead=1.0)
    killed = cluster.kill_host(victim)
    run.finish(limit)
    taken = run.taken_over(held, victim)
    run.outcome.figures.update(held=len(held), taken_over=taken, killed=killed)
    run.note(f"all {killed} processes of {victim.hostname} killed -9 while it held {len(held)} task(s): {taken} "
             f"taken over by other hosts")


def postgres_restart(run: Run) -> None:
    """PostgreSQL restarted (-m fast) while every host works."""
    cluster = run.cluster
    limit = short_tasks_from_every_host(run)
    for host in cluster.hosts:
        run.wait_busy(host, limit)
    cluster.restart_postgres()
    run.finish(limit)
    run.note("PostgreSQL restarted (pg_ctl restart -m fast) while every host ran tasks")


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "link-cut": link_cut,
    "beanstalkd-killed": beanstalkd_killed,
    "beanstalkd-partitioned": beanstalkd_partitioned,
    "tender-killed": tender_killed,
    "host-killed": host_killed,
    "postgres-restart": postgres_restart,
}


def run_scenario(name: str, plan: Plan) -> Outcome:
    """One scenario on a fresh cluster, counted; the cluster is removed whatever happens (its directory is kept
    when the scenario failed, or with plan.keep)."""
    started = time.monotonic()
    cluster = Cluster(hosts=plan.hosts, servers=plan.servers, workers=plan.workers, keep=True)
    outcome = Outcome(name)
    try:
        with cluster:
            run = Run(name, cluster, plan)
            outcome = run.outcome
            try:
                SCENARIOS[name](run)
            except ScenarioFailed as error:
                run.problem(str(error))
            except Exception as error:   # a bug of the harness: this scenario reports it, the others still run
                (cluster.directory / "harness.log").write_text(traceback.format_exc())
                run.problem(f"harness error {type(error).__name__}: {error} (traceback in harness.log)")
            outcome = run.count()
    except Exception as error:   # the cluster could not be built or counted
        outcome.problems.append(f"{type(error).__name__}: {error}")
    outcome.seconds = round(time.monotonic() - started, 1)
    outcome.figures["slot"] = cluster.slot
    if outcome.ok and not plan.keep:
        shutil.rmtree(cluster.directory, ignore_errors=True)
    else:
        outcome.directory = str(cluster.directory)
    return outcome


def figures_of(outcome: Outcome) -> dict[str, Any]:
    return {**outcome.to_json(), "completed_twice": outcome.ran_twice}
