"""Cluster-wide limits with real tenders: several `pheanq worker-tender` process trees (each with its own run
directory, as on separate machines) against one real beanstalkd and one real database.

Every task command appends ``start <unix time> <pid> <task id>`` when it starts and ``end ...`` when it ends, each
in one O_APPEND write (a shell's echo is one write(2)): the commands' own record of what ran when. A command's start
comes after its claim took a place and its end before its worker records the end that frees it, so the intervals
of the record lie inside the places' holdings: no tolerance is needed to compare their overlap with a concurrency
limit. A rate limit counts claims, which come a little before the starts: that test states its tolerance.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import TenderProcess, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.lease import stale_after
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]

# $1: the record file; $2: seconds to run; $3, if given, a name. A task whose name has a hold file ($1.hold-NAME) runs
# a minute instead, once (it removes the file): a task to kill mid-run whose next attempt is short.
RECORD = ('echo "start $(date +%s.%N) $$ $PHEANQ_TASK_ID" >> "$1"; '
          'if [ -n "$3" ] && rm "$1.hold-$3" 2>/dev/null; then sleep 60; else sleep "$2"; fi; '
          'echo "end $(date +%s.%N) $$ $PHEANQ_TASK_ID" >> "$1"')
COMMANDS = ("slow", "quick", "work")
OVER_A_LIMIT = "is over a limit"    # the dispatcher's log line for a job released because of a limit
# How much earlier than its command's start a claim may have taken its rate limit's place (see the rate test).
START_TOLERANCE = 0.25

# Without PHEANQ_TEST_POSTGRES_URL, db_url skips these here and fails them in CI (scripts/test provides it there).
POSTGRESQL_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a task's command, from the record: its end is None while it runs (or when it was killed)."""

    task_id: int
    pid: int
    start: float
    end: float | None


class Cluster:
    """The test's record file and config, its tenders (stopped at the end), and a service to queue with."""

    def __init__(self, tmp_path: Path, make_env: MakeEnv, service: TaskQueueService, url: str) -> None:
        self.tmp_path, self.make_env, self.service, self.url = tmp_path, make_env, service, url
        self.records = tmp_path / "records.txt"
        self.records.touch()
        self.tenders: list[TenderProcess] = []

    def configure(self, limits: str) -> None:
        """pheanq.toml: the recording commands, and `limits` (TOML tables)."""
        path = write_config(self.tmp_path, commands={name: ["/bin/sh", "-c", RECORD, name, str(self.records)]
                                                     for name in COMMANDS})
        path.write_text(path.read_text() + limits)

    def start_tenders(self, count: int, workers: int) -> None:
        """`count` tenders of `workers` workers each, each with a run directory of its own (another machine); returns
        once every worker is ready, so that the tasks queued next meet them all at once."""
        started = []
        for _ in range(count):
            env = self.make_env(self.url, PHEANQ_RUN_DIR=str(self.tmp_path / f"run-{len(self.tenders)}"))
            started.append(TenderProcess(["--min-workers", str(workers), "--max-workers", str(workers),
                                          "--spare-workers", "0"], env, self.tmp_path))
            self.tenders.append(started[-1])
        wait_for(lambda: all(sum(line.endswith(": READY") for line in list(tender.lines)) >= workers
                             for tender in started), 60, f"{count * workers} workers ready; log:\n{self.log()}")

    def queue(self, command: str, count: int, seconds: float, *name: str, **options: str | int) -> list[int]:
        return [self.service.queue_task(TaskDescription(command, [str(seconds), *name]), ttr=60, **options)  # type: ignore[arg-type]
                for _ in range(count)]

    def runs(self) -> list[Run]:
        """Every run in the record, in the order of their starts."""
        started: dict[int, tuple[int, float]] = {}
        runs: list[Run] = []
        for line in self.records.read_text().splitlines():
            word, moment, pid, task_id = line.split()
            if word == "start":
                started[int(pid)] = (int(task_id), float(moment))
            else:
                runs.append(Run(int(task_id), int(pid), started.pop(int(pid))[1], float(moment)))
        runs += [Run(task_id, pid, start, None) for pid, (task_id, start) in started.items()]
        return sorted(runs, key=lambda run: run.start)

    def all_done(self, ids: Iterable[int]) -> Callable[[], bool]:
        return lambda: all(self.service.status_of(task_id) is Status.DONE for task_id in ids)

    def log(self) -> str:
        """The end of each tender's log, for a message."""
        return "\n".join(tender.log[-3000:] for tender in self.tenders)

    def said(self, text: str) -> bool:
        """Whether any line a tender or its workers logged contains `text`."""
        return any(text in line for tender in self.tenders for line in list(tender.lines))

    def stop(self) -> None:
        for tender in self.tenders:
            tender.stop()


@pytest.fixture
def cluster(tmp_path: Path, db_url: str, make_env: MakeEnv, make_service: MakeService) -> Iterator[Cluster]:
    made = Cluster(tmp_path, make_env, make_service(db_url), db_url)
    yield made
    made.stop()


class WorkingSampler:
    """Counts the `working` rows of each group every 50 ms in a thread (`column` = value: a command, a key)."""

    def __init__(self, url: str, column: str) -> None:
        self.store = Store(url)
        self.query = sa.text(f"SELECT {column}, count(*) FROM pheanq_task WHERE status = 'working' GROUP BY {column}")
        self.most: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with self.store.database.transaction() as conn:
                for group, count in conn.execute(self.query):
                    self.most[str(group)] = max(self.most.get(str(group), 0), int(count))
            self.samples += 1

    def close(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(10)
        self.store.close()
        return self.most


@pytest.fixture
def samplers() -> Iterator[Callable[[str, str], WorkingSampler]]:
    made: list[WorkingSampler] = []

    def make(url: str, column: str) -> WorkingSampler:
        made.append(WorkingSampler(url, column))
        return made[-1]

    yield make
    for sampler in made:
        sampler.close()


def most_at_once(runs: Iterable[Run], until: float = float("inf")) -> int:
    """The most runs that overlapped; a run without an end lasts until `until` (when its worker was killed)."""
    edges = sorted(edge for run in runs for edge in ((run.start, 1), (run.end if run.end else until, -1)))
    running = most = 0
    for _, step in edges:  # at one moment an end (-1) sorts before a start: touching runs do not overlap
        running += step
        most = max(most, running)
    return most


def test_a_concurrency_limit_of_2_across_3_tenders_never_has_3_running(
        cluster: Cluster, samplers: Callable[[str, str], WorkingSampler]) -> None:
    """8 tasks of 0.6 s for 6 workers on 3 tenders: at first all but 2 are over the limit. Neither the table
    (sampled every 50 ms) nor the commands' record ever shows more than 2 running, and all 8 end done once. (Each
    2 tasks more would add a round of the backoff, 1, 2, 4, 8, 16 s, to the test: 12 tasks took some 20-35 s.)"""
    cluster.configure("[limits.commands.slow]\nconcurrency = 2\n")
    sampler = samplers(cluster.url, "command")
    cluster.start_tenders(3, 2)
    ids = cluster.queue("slow", 8, 0.6)
    wait_for(cluster.all_done(ids), 90, f"every slow task done; log:\n{cluster.log()}")
    most = sampler.close()
    runs = cluster.runs()
    assert sorted(run.task_id for run in runs) == sorted(ids) and all(run.end for run in runs), runs
    assert most.get("slow") == 2 and sampler.samples > 20, (most, sampler.samples)
    assert most_at_once(runs) == 2, runs
    assert cluster.said(OVER_A_LIMIT), "no job was ever over the limit: the test proved nothing"
    assert all(cluster.service.find_task(task_id).attempts == 1 for task_id in ids)


@POSTGRESQL_ONLY
@pytest.mark.long
def test_a_rate_limit_holds_over_a_minute_and_its_throughput_is_near_the_rate(cluster: Cluster) -> None:
    """`rate = "5/10s"`, 30 tasks queued at once, 3 tenders of 2 workers: they take about a minute.

    Held: every window of 10 s holds at most 5 claims (the rows' `started`, the claims' own times: exact) and at
    most 5 starts of the commands' own record within a window of 10 s less START_TOLERANCE (a command starts a
    little after its claim: its fork and exec, on a loaded machine). Throughput: the starts after the first 5 come
    at no less than 70 % of the rate over the time they took (a job over the limit comes back when the oldest
    start leaves the window, rounded up to whole seconds, plus up to a quarter: about 85 % is expected)."""
    starts, period, tolerance = 5, 10.0, START_TOLERANCE
    cluster.configure(f'[limits.commands.slow]\nrate = "{starts}/{period:.0f}s"\n')
    cluster.start_tenders(3, 2)
    ids = cluster.queue("slow", 30, 0.1)
    wait_for(cluster.all_done(ids), 150, f"every task done; log:\n{cluster.log()}")
    claimed = sorted(cluster.service.find_task(task_id).started.timestamp() for task_id in ids)  # type: ignore[union-attr]
    started = [run.start for run in cluster.runs()]
    assert len(started) == len(ids)
    assert least_time_for(claimed, starts + 1) >= period - 0.001, claimed
    assert least_time_for(started, starts + 1) >= period - tolerance, started
    throughput = (len(started) - starts) / (started[-1] - started[0]) * period
    assert 0.7 * starts <= throughput <= starts, throughput


def least_time_for(moments: list[float], count: int) -> float:
    """The shortest time in which `count` of the sorted `moments` came."""
    return min(moments[n + count - 1] - moments[n] for n in range(len(moments) - count + 1))


def test_a_killed_workers_place_comes_back_once_its_tender_settles_the_task(
        cluster: Cluster, samplers: Callable[[str, str], WorkingSampler]) -> None:
    """Concurrency 1: the worker of the running task is killed -9 mid-task. Its tender sees it die and puts the
    task back at once (stalled), which frees the place long before the lease would go stale (32 s here): the
    next run starts within seconds, and never two at once."""
    cluster.configure("[limits.commands.slow]\nconcurrency = 1\n")
    sampler = samplers(cluster.url, "command")
    cluster.start_tenders(2, 2)
    Path(f"{cluster.records}.hold-held").touch()  # the first run of the task named "held" lasts a minute
    held = cluster.queue("slow", 1, 0.3, "held")[0]
    wait_for(lambda: cluster.runs(), 30, f"the held task to start; log:\n{cluster.log()}")
    others = cluster.queue("slow", 2, 0.3)  # queued once the held one runs, so that it is the one that holds
    wait_for(lambda: cluster.said(OVER_A_LIMIT), 15, "a task over the limit")
    assert [run.task_id for run in cluster.runs()] == [held]
    worker = int(str(cluster.service.find_task(held).worker).rsplit(":", 1)[1])
    killed_at = time.time()
    os.kill(worker, signal.SIGKILL)
    wait_for(cluster.all_done([held, *others]), 60, f"every task done; log:\n{cluster.log()}")
    runs = cluster.runs()
    assert [run.end for run in runs].count(None) == 1 and len(runs) == 4, runs
    assert min(run.start for run in runs[1:]) - killed_at < 10 < stale_after(60), runs
    assert most_at_once(runs, until=killed_at) == 1 and sampler.close().get("slow") == 1, runs
    row = cluster.service.find_task(held)
    assert row.attempts == 2 and "died (signal 9)" in (row.log or ""), row.log


@POSTGRESQL_ONLY
def test_unlimited_work_in_the_same_tube_is_not_slowed_by_a_saturated_limit(cluster: Cluster) -> None:
    """Quick, unlimited tasks run alone, then again queued among long tasks of a type limited to 1 at a time: the
    quick ones all end while most limited ones still wait, at no less than half their throughput alone (a loose
    sanity bound: scripts/bench-limits measures it)."""
    cluster.configure("[limits.commands.slow]\nconcurrency = 1\n")
    cluster.start_tenders(2, 2)
    alone = cluster.queue("quick", 100, 0)
    wait_for(cluster.all_done(alone), 60, f"the quick tasks done alone; log:\n{cluster.log()}")
    limited: list[int] = []
    beside: list[int] = []
    for _ in range(4):
        limited += cluster.queue("slow", 1, 8)
        beside += cluster.queue("quick", 25, 0)
    wait_for(cluster.all_done(beside), 60, f"the quick tasks done beside the limited; log:\n{cluster.log()}")
    statuses = [cluster.service.status_of(task_id) for task_id in limited]
    runs = cluster.runs()
    assert statuses.count(Status.DONE) <= 1 and statuses.count(Status.NEW) >= 2, statuses
    assert most_at_once(run for run in runs if run.task_id in limited) == 1
    assert cluster.said(OVER_A_LIMIT)
    ratio = span(runs, beside) / span(runs, alone)
    assert ratio <= 2, f"the quick tasks took {ratio:.2f} times as long beside the limited ones"


def span(runs: list[Run], ids: list[int]) -> float:
    """Seconds from the first start of the tasks `ids` to their last end."""
    mine = [run for run in runs if run.task_id in ids]
    return max(run.end or 0 for run in mine) - min(run.start for run in mine)


@POSTGRESQL_ONLY
def test_a_key_limit_holds_each_key_apart_and_both_keys_progress_at_once(
        cluster: Cluster, samplers: Callable[[str, str], WorkingSampler]) -> None:
    cluster.configure("[limits.keys.tenant]\nconcurrency = 1\n")
    sampler = samplers(cluster.url, "limit_key")
    cluster.start_tenders(2, 2)
    keys: dict[str, list[int]] = {key: [] for key in ("tenant:a", "tenant:b")}
    for _ in range(3):
        for key, ids in keys.items():
            ids += cluster.queue("work", 1, 0.8, limit_key=key)
    wait_for(cluster.all_done(keys["tenant:a"] + keys["tenant:b"]), 60, f"every task done; log:\n{cluster.log()}")
    runs = cluster.runs()
    for ids in keys.values():
        assert most_at_once(run for run in runs if run.task_id in ids) == 1, runs
    assert most_at_once(runs) == 2, f"the keys never ran at once: {runs}"
    assert sampler.close() == {"tenant:a": 1, "tenant:b": 1}
