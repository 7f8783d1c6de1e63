"""`pheanq worker-tender` as a real process: a self-managing pool of workers that never orphans a task.

Each test starts a real tender (which starts real `pheanq task-worker` processes) against a real beanstalkd
and database, queues tasks whose command appends ``start <id> <pid>`` and ``done <id>`` lines to a file, and
then sends real signals (kill -9 of a busy worker or of the tender, SIGTERM, SIGHUP) or lets the tender's own
limits act (size, age, output, memory, task count, crash loops). What is checked: the pool's size as psutil
sees it, the tender's log, `pheanq status`, every task `done` exactly once in one attempt (or, where a run was
cut short, its command finished once), and no process left behind - not even one a task detached. The kill -9
test runs on every configured database, the rest on SQLite.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import (
    Beanstalkd,
    TenderProcess,
    one_error_line,
    pheanq,
    process_gone,
    register_work_script,
    wait_for,
)

from pheanq import Status, TaskDescription
from pheanq.beanstalkd import BeanstalkdConnection
from pheanq.producer.service import TaskQueueService

TUBE = "pheanq"  # the default tube
MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartTender = Callable[..., TenderProcess]

# The task command: records its start (with its pid) and its end; sleeps SECONDS, and with --until=PATH also
# waits for PATH to exist (at most a minute); with --mb=N it holds N MB of written (resident) memory meanwhile;
# with --detach=1 it first starts a process of its own in a new session (as a daemonizing program would),
# which sleeps a minute and is recorded as `detached <task id> <pid>`.
TASK_SCRIPT = """
    import os, subprocess, sys, time
    runs, task_id = sys.argv[1], os.environ["PHEANQ_TASK_ID"]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    options = dict(arg[2:].split("=", 1) for arg in sys.argv[3:])
    with open(runs, "a") as f:
        f.write(f"start {task_id} {os.getpid()}\\n")
    if options.get("detach"):
        # A process the task leaves behind in a session of its own: it lives until its tender kills it.
        detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", __file__],  # lives on
                                    start_new_session=True)
        with open(runs, "a") as f:
            f.write(f"detached {task_id} {detached.pid}\\n")
    held = bytearray(b"\\x01") * (int(options.get("mb", "0")) * 1_000_000)
    deadline, cap = time.monotonic() + seconds, time.monotonic() + 60
    until = options.get("until")
    while time.monotonic() < deadline or (until and not os.path.exists(until) and time.monotonic() < cap):
        time.sleep(0.02)  # the task's work: hold until its time or its go-file has come
    with open(runs, "a") as f:
        f.write(f"done {task_id}\\n")
"""


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """The file the task command writes its start and done lines to; the command is registered as `work`."""
    return register_work_script(tmp_path, TASK_SCRIPT)


@pytest.fixture
def start_tender(tmp_path: Path, make_env: MakeEnv) -> Iterator[Callable[..., TenderProcess]]:
    """Start `pheanq worker-tender ARGS` on `database_url`, its lock files in the test's own run directory."""
    started: list[TenderProcess] = []

    def start(database_url: str, *args: str, **extra_env: str) -> TenderProcess:
        tender = TenderProcess(args, {**tender_env(make_env, tmp_path, database_url), **extra_env}, tmp_path)
        started.append(tender)
        return tender

    yield start
    for tender in started:
        tender.stop()


def tender_env(make_env: MakeEnv, tmp_path: Path, database_url: str) -> dict[str, str]:
    return make_env(database_url, PHEANQ_RUN_DIR=str(tmp_path / "run"))


@pytest.fixture
def connection(beanstalkd: Beanstalkd) -> Iterator[BeanstalkdConnection]:
    client = BeanstalkdConnection(beanstalkd.address)
    yield client
    client.close()


def queue(service: TaskQueueService, count: int, seconds: float = 0.0, **options: str | int) -> list[int]:
    return [service.queue_task(TaskDescription("work", [str(seconds)], options), ttr=30) for _ in range(count)]


def run_lines(runs: Path, word: str) -> list[list[str]]:
    return [line.split() for line in runs.read_text().splitlines() if line.startswith(word + " ")]


def done_counts(runs: Path) -> Counter[int]:
    return Counter(int(words[1]) for words in run_lines(runs, "done"))


def task_pids(runs: Path) -> list[int]:
    return [int(words[2]) for words in run_lines(runs, "start")]


def all_done(service: TaskQueueService, ids: Sequence[int]) -> Callable[[], bool]:
    return lambda: all(service.status_of(task_id) is Status.DONE for task_id in ids)


def assert_each_done_once(service: TaskQueueService, runs: Path, ids: Sequence[int]) -> None:
    """Every task `done` in one attempt; its command started once and finished once: never lost, never repeated."""
    started = Counter(int(words[1]) for words in run_lines(runs, "start"))
    counts = done_counts(runs)
    assert {task_id: (started[task_id], counts[task_id]) for task_id in ids} == dict.fromkeys(ids, (1, 1)), \
        runs.read_text()
    assert set(counts) == set(started) == set(ids), runs.read_text()
    for task_id in ids:
        row = service.find_task(task_id)
        assert (row.status, row.attempts) == (Status.DONE, 1), (task_id, row.log)


def started_workers(tender: TenderProcess) -> list[int]:
    return [int(re.search(r"started worker (\d+)", line)[1])  # type: ignore[index]
            for line in tender.tender_lines("started worker ")]


def busy_by_worker(tender: TenderProcess) -> dict[int, list[int]]:
    """Which tasks each worker said BUSY for, from the lines the tender passed through."""
    busy: dict[int, list[int]] = {}
    for line in list(tender.lines):
        match = re.match(r"worker (\d+): BUSY (\d+)$", line)
        if match:
            busy.setdefault(int(match[1]), []).append(int(match[2]))
    return busy


def worker_of(tender: TenderProcess, task_id: int) -> int:
    """The pid of the (first) worker that said BUSY for `task_id`; waits for it."""
    def find() -> int | None:
        for pid, tasks in busy_by_worker(tender).items():
            if task_id in tasks:
                return pid
        return None
    pid: int = wait_for(find, 15, f"a worker to say BUSY {task_id}; log:\n{tender.log[-2000:]}")
    return pid


def leftovers(tmp_path: Path) -> list[str]:
    """Processes still running a command of this test (the task script lives in its directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(tmp_path) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{process.pid}: {cmdline}")
    return found


def assert_nothing_left(tender: TenderProcess, tmp_path: Path, runs: Path | None = None) -> None:
    """The tender has ended, and so has every worker it started and every task process."""
    assert tender.process.poll() is not None
    pids = started_workers(tender) + (task_pids(runs) if runs else [])
    assert pids
    alive = [pid for pid in pids if not process_gone(pid)]
    assert not alive, f"still running after the tender ended: {alive}"
    assert not leftovers(tmp_path)


class PoolSampler:
    """Counts the tender's worker processes (psutil children) every 10 ms in a thread."""

    def __init__(self, tender: TenderProcess) -> None:
        self.tender = tender
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.samples.append(len(self.tender.workers()))

    def latest(self) -> int:
        return self.samples[-1] if self.samples else 0

    def close(self) -> list[int]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


# --- the pool's size --------------------------------------------------------------------------------------------

def test_the_pool_grows_to_max_under_load_never_beyond_and_shrinks_to_min_plus_spare_when_idle(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "3")
    sampler = PoolSampler(tender)
    tender.wait_log("started worker ")
    ids = queue(service, 6, 1.5)

    wait_for(lambda: sampler.latest() == 3, 15, "the pool to grow to --max-workers 3")
    wait_for(all_done(service, ids), 30, "every task done")
    assert_each_done_once(service, runs, ids)
    assert len(busy_by_worker(tender)) == 3  # all three workers took tasks

    # Idle: one of the three is surplus (min 1 + spare 1 = 2) and retired after 5 s of idleness.
    retired = tender.wait_log("workers idle", timeout=15)
    assert "more than 2 workers idle" in retired[0]
    wait_for(lambda: sampler.latest() == 2, 10, "the pool to shrink to min + spare = 2")
    samples = sampler.close()
    assert max(samples) == 3, f"more than --max-workers processes at some sample: {max(samples)}"
    assert len(tender.workers()) == 2
    assert all(int(n) <= 3 for n in re.findall(r"\((\d+) in the pool\)", tender.log))

    tender.signal(signal.SIGTERM)
    assert tender.wait() == 0, tender.log[-2000:]
    assert_nothing_left(tender, tmp_path, runs)


# --- recycling --------------------------------------------------------------------------------------------------

def _recycled(tender: TenderProcess, reason: str) -> list[int]:
    """The pids of the workers retired for `reason` (the log must say so), once each has ended by itself."""
    lines = tender.tender_lines(reason)
    assert lines, f"no worker retired for {reason!r}; log:\n{tender.log[-3000:]}"
    pids = [int(re.search(r"retiring worker (\d+):", line)[1]) for line in lines]  # type: ignore[index]
    for pid in pids:  # SIGTERM let it finish what it had in hand and exit 0: never killed
        tender.wait_log(f"worker {pid} ended (exit code 0)", timeout=10)
    return pids


def _stop(tender: TenderProcess, tmp_path: Path, runs: Path | None) -> None:
    tender.signal(signal.SIGTERM)
    assert tender.wait() == 0, tender.log[-2000:]
    assert_nothing_left(tender, tmp_path, runs)


def test_a_worker_older_than_max_worker_age_is_retired_without_losing_or_repeating_a_task(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = queue(service, 6, 0.5)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "2",
                          "--max-worker-age", "2")
    wait_for(all_done(service, ids), 30, "every task done")
    assert_each_done_once(service, runs, ids)
    retired = _recycled(tender, "older than --max-worker-age")
    busy = busy_by_worker(tender)
    assert len(busy) >= 2 and set(retired) & set(busy), f"the tasks were not spread over recycled workers: {busy}"
    _stop(tender, tmp_path, runs)


def test_a_worker_that_printed_more_than_max_worker_buffer_is_retired_without_losing_a_task(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = queue(service, 8, 0.1)
    # A worker's start-up line is about 115 bytes and each task adds about 170 (two log lines, BUSY, READY):
    # 400 bytes are passed during its second task, which it finishes (or its third, if it had just taken it).
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "2",
                          "--max-worker-buffer", "400")
    wait_for(all_done(service, ids), 30, "every task done")
    assert_each_done_once(service, runs, ids)
    retired = _recycled(tender, "printed more than --max-worker-buffer")
    busy = busy_by_worker(tender)
    assert len(set(retired)) >= 2 and len(busy) >= 3, busy
    assert all(len(busy.get(pid, [])) <= 3 for pid in retired), busy
    for line in tender.tender_lines("printed more than --max-worker-buffer"):
        pid, counted = (int(n) for n in re.findall(r"retiring worker (\d+): .* \((\d+) > 400 bytes\)", line)[0])
        # What the tender counted is what it passed through: each line of the worker, and its newline.
        passed = sum(len(text.encode()) + 1 for text in tender.worker_lines(pid))
        assert 400 < counted <= passed, (line, passed)
    _stop(tender, tmp_path, runs)


def test_a_worker_whose_task_uses_more_than_max_worker_memory_is_retired_after_that_task(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    release = tmp_path / "release-memory"
    hog = queue(service, 1, 0, mb=150, until=str(release))[0]
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "2",
                          "--max-worker-memory", "120")
    hog_worker = worker_of(tender, hog)
    line = tender.wait_log(f"retiring worker {hog_worker}: uses more than --max-worker-memory")[0]
    assert re.search(r"\((\d+) > 120 MB\)", line), line
    others = queue(service, 2, 0)
    wait_for(all_done(service, others), 15, "the other tasks done by a new worker while the big one still runs")
    assert service.status_of(hog) is Status.WORKING  # a retired worker finishes its task
    release.touch()
    wait_for(all_done(service, [hog]), 15, "the big task done")
    tender.wait_log(f"worker {hog_worker} ended (exit code 0)")
    assert_each_done_once(service, runs, [hog, *others])
    assert hog_worker not in {worker_of(tender, task_id) for task_id in others}
    _stop(tender, tmp_path, runs)


def test_a_worker_that_ran_max_worker_tasks_is_retired_and_no_task_is_lost_or_repeated(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = queue(service, 6, 0.2)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1",
                          "--max-worker-tasks", "2")
    wait_for(all_done(service, ids), 30, "every task done")
    assert_each_done_once(service, runs, ids)
    retired = _recycled(tender, "ran --max-worker-tasks (2) tasks")
    busy = busy_by_worker(tender)
    assert len(busy) >= 3 and len(set(retired)) >= 2, busy
    assert all(len(tasks) <= 2 for tasks in busy.values()), f"a worker ran more than 2 tasks: {busy}"
    _stop(tender, tmp_path, runs)


# --- deaths and signals -----------------------------------------------------------------------------------------

def test_kill_9_of_a_busy_worker_kills_its_task_and_another_worker_runs_the_task_to_done_once(
    db_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(db_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go), detach=1)[0]
    tender = start_tender(db_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "3")
    victim = worker_of(tender, task_id)
    wait_for(lambda: run_lines(runs, "detached"), 10, "the task to start")
    child = task_pids(runs)[0]
    detached = int(run_lines(runs, "detached")[0][2])
    below = [p.pid for p in psutil.Process(victim).children(recursive=True)]
    assert child in below and detached in below

    psutil.Process(victim).kill()
    wait_for(lambda: process_gone(child), 5, f"the killed worker's task process {child} to die with it")
    died = wait_for(lambda: [line for line in tender.tender_lines(f"worker {victim} ")
                             if re.search(rf"worker {victim} (ended|died) \(signal 9\)", line)], 10,
                    f"the tender to notice worker {victim} died")[0]
    assert f"while running task {task_id}; the tender settles the task" in died, died
    # What the task started in a session of its own was adopted by the tender (a subreaper), which kills it.
    wait_for(lambda: process_gone(detached), 5, f"the task's detached process {detached} killed")
    tender.wait_log(f"killing process {detached} ", timeout=5)  # logged before the kill, read by a thread here

    wait_for(lambda: len(run_lines(runs, "start")) == 2, 15, "another worker to take the job over")
    assert worker_of_second_start(tender, task_id) != victim
    go.touch()
    wait_for(all_done(service, [task_id]), 15, "the task done")
    assert done_counts(runs) == {task_id: 1}
    assert service.find_task(task_id).attempts == 2
    wait_for(lambda: not leftovers(tmp_path), 5, "no task process left")
    _stop(tender, tmp_path, runs)


def worker_of_second_start(tender: TenderProcess, task_id: int) -> int:
    """The worker that said BUSY for `task_id` the second time."""
    def find() -> int | None:
        owners = [int(m[1]) for line in list(tender.lines) if (m := re.match(rf"worker (\d+): BUSY {task_id}$", line))]
        return owners[1] if len(owners) > 1 else None
    pid: int = wait_for(find, 10, f"a second BUSY {task_id}")
    return pid


def test_sigterm_lets_busy_workers_finish_every_task_then_the_tender_exits_0_leaving_nothing(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = queue(service, 3, 1.5)
    tender = start_tender(sqlite_url, "--min-workers", "3", "--spare-workers", "0", "--max-workers", "3")
    wait_for(lambda: len(run_lines(runs, "start")) == 3, 15, "three tasks running")

    tender.signal(signal.SIGTERM)
    assert tender.wait(20) == 0, tender.log[-2000:]
    assert_each_done_once(service, runs, ids)
    assert len(tender.tender_lines("ended (exit code 0)")) == 3
    assert not tender.tender_lines("--shutdown-timeout passed")
    assert_nothing_left(tender, tmp_path, runs)


def test_a_task_outliving_shutdown_timeout_is_interrupted_and_handed_back_then_run_by_a_later_tender(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
    connection: BeanstalkdConnection,
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go))[0]
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1",
                          "--shutdown-timeout", "1")
    worker = worker_of(tender, task_id)
    wait_for(lambda: run_lines(runs, "start"), 10, "the task to start")

    tender.signal(signal.SIGTERM)
    assert tender.wait(20) == 0, tender.log[-2000:]
    assert tender.tender_lines("--shutdown-timeout passed: interrupting 1 worker(s)")
    assert tender.tender_lines(f"worker {worker} ended (exit code 130)")
    assert_nothing_left(tender, tmp_path, runs)
    row = service.find_task(task_id)
    assert row.status is Status.NEW and row.worker is None
    assert row.log is not None and "interrupted" in row.log
    assert (connection.tube_stats(TUBE) or {}).get("current-jobs-ready") == 1
    assert not run_lines(runs, "done")

    go.touch()
    later = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1")
    wait_for(all_done(service, [task_id]), 15, "the handed-back task done by a later tender")
    assert done_counts(runs) == {task_id: 1}
    assert service.find_task(task_id).attempts == 2
    _stop(later, tmp_path, runs)


def test_a_crash_looping_worker_command_is_restarted_with_growing_delays_and_the_tender_stays_up(
    sqlite_url: str, tmp_path: Path, start_tender: StartTender,
) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    tender = start_tender(sqlite_url, "--worker-command", command, "--min-workers", "2", "--max-workers", "4")
    lines = tender.wait_log("next start in", count=4, timeout=15)[:4]
    delays = [float(re.search(r"next start in ([0-9.]+)s", line)[1]) for line in lines]  # type: ignore[index]
    assert delays == sorted(delays) and delays[-1] >= 4 * delays[0], delays
    assert all("(exit code 3)" in line and "after its start" in line for line in lines), lines
    assert [int(re.search(r"\((\d+) in a row\)", line)[1]) for line in lines] == [1, 2, 3, 4]  # type: ignore[index]
    # Four quick deaths take 2 to 4 s; a loop without delays would have started dozens of workers by now.
    # Every start but the (at most --min-workers) ones still starting has been answered by a death and a delay.
    starts = len(started_workers(tender))
    deaths = len(tender.tender_lines("next start in"))
    assert starts <= deaths + 2 <= 8, tender.tender_lines("started worker")
    assert tender.process.poll() is None

    tender.signal(signal.SIGTERM)
    assert tender.wait(15) == 0, tender.log[-2000:]
    assert_nothing_left(tender, tmp_path)


def test_a_healthy_worker_beside_a_crash_looping_one_does_not_reset_the_growing_delay(
    sqlite_url: str, tmp_path: Path, start_tender: StartTender,
) -> None:
    # The first start becomes a real, healthy worker; every later start of the command exits 3 at once.
    first = tmp_path / "first-start"
    command = (f"sh -c 'if mkdir {first} 2>/dev/null; then exec {sys.executable} -m pheanq task-worker \"$@\"; "
               "else exit 3; fi' worker")
    tender = start_tender(sqlite_url, "--worker-command", command, "--min-workers", "2", "--spare-workers", "0",
                          "--max-workers", "2")
    # Six quick deaths take 0.5 + 1 + 2 + 4 + 8 s of delays: the healthy worker is older than 10 s (the
    # quick-death window) well before the sixth, and must not make the loop count as over.
    lines = tender.wait_log("next start in", count=6, timeout=40)[:6]
    delays = [float(re.search(r"next start in ([0-9.]+)s", line)[1]) for line in lines]  # type: ignore[index]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], delays
    assert len(tender.workers()) <= 2
    tender.signal(signal.SIGTERM)
    assert tender.wait(15) == 0, tender.log[-2000:]


def test_a_busy_worker_killed_soon_after_its_start_is_replaced_at_once_not_treated_as_a_crash_loop(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go))[0]
    tender = start_tender(sqlite_url, "--min-workers", "2", "--spare-workers", "0", "--max-workers", "2")
    busy = worker_of(tender, task_id)  # seconds after its start: well inside the 10 s quick-death window
    os.kill(busy, signal.SIGKILL)
    wait_for(lambda: len(started_workers(tender)) == 3, 3, "a replacement started without a delay")
    assert not tender.tender_lines("next start in"), tender.log[-2000:]
    go.touch()
    wait_for(all_done(service, [task_id]), 15, "the task taken over and done")
    assert len(run_lines(runs, "done")) == 1
    _stop(tender, tmp_path, runs)


def test_sighup_replaces_every_worker_and_a_running_task_finishes_done_once(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go))[0]
    tender = start_tender(sqlite_url, "--min-workers", "2", "--spare-workers", "0", "--max-workers", "4")
    busy = worker_of(tender, task_id)
    before = set(wait_for(lambda: len(tender.workers()) == 2 and tender.workers(), 10, "two workers"))
    assert busy in before

    tender.signal(signal.SIGHUP)
    retiring = tender.wait_log("SIGHUP: replacing every worker", count=3)  # the signal's line, then one per worker
    assert {int(m[1]) for line in retiring if (m := re.search(r"retiring worker (\d+)", line))} == before
    idle_old = (before - {busy}).pop()
    wait_for(lambda: process_gone(idle_old), 10, "the idle old worker gone")
    new = wait_for(lambda: len(set(tender.workers()) - before) == 2 and set(tender.workers()) - before, 10,
                   "two new workers")
    assert not process_gone(busy) and service.status_of(task_id) is Status.WORKING  # it finishes its task first

    go.touch()
    wait_for(all_done(service, [task_id]), 15, "the running task done")
    wait_for(lambda: process_gone(busy), 10, "the busy old worker gone once its task is done")
    assert set(tender.workers()) == new
    assert_each_done_once(service, runs, [task_id])
    _stop(tender, tmp_path, runs)


def test_a_worker_retired_while_it_claims_its_next_job_runs_that_task_once_in_one_attempt(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
    connection: BeanstalkdConnection,
) -> None:
    """A worker retired (SIGTERM) while it claims its next job: that task is its current one, it runs once.

    Under load this is the common case: the tender retires a worker (age, buffer, task count) right when it
    says READY, and the worker is already taking the next job. The claim is held up here by a write lock on
    the SQLite file, so the SIGTERM deterministically arrives while the job is on its way; the task must not
    be handed back with an attempt counted that never ran it.
    """
    service = make_service(sqlite_url)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "1")
    worker = wait_for(lambda: [pid for pid in started_workers(tender) if "READY" in tender.worker_lines(pid)], 15,
                      "a worker READY")[0]
    task_id = service.queue_task(TaskDescription("work", ["0"]), delay=1, ttr=30)
    database = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")
        wait_for(lambda: (connection.tube_stats(TUBE) or {}).get("current-jobs-reserved") == 1, 10,
                 "the worker to reserve the job; its claim now waits for the lock")
        os.kill(worker, signal.SIGTERM)  # what the tender sends a worker it retires
    finally:
        database.rollback()
        database.close()

    wait_for(lambda: process_gone(worker), 10, "the retired worker gone")
    wait_for(all_done(service, [task_id]), 15, "the task done")
    assert_each_done_once(service, runs, [task_id])
    log = service.find_task(task_id).log or ""
    assert log.count("--- attempt") == 1 and "not started" not in log, log
    _stop(tender, tmp_path, runs)


def test_kill_9_of_the_tender_lets_its_workers_finish_their_tasks_and_exit_and_frees_the_tube(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go))[0]
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "2")
    busy = worker_of(tender, task_id)
    workers = wait_for(lambda: len(tender.workers()) == 2 and tender.workers(), 10, "two workers")
    idle = next(pid for pid in workers if pid != busy)
    wait_for(lambda: run_lines(runs, "start"), 10, "the task to start")

    tender.process.kill()
    tender.wait(10)
    # Each worker was started to get SIGTERM when its tender dies: the idle one leaves, the busy one finishes.
    wait_for(lambda: process_gone(idle), 10, "the idle worker gone with its tender")
    assert not process_gone(busy) and service.status_of(task_id) is Status.WORKING
    go.touch()
    wait_for(all_done(service, [task_id]), 15, "the task done by its orphaned worker")
    wait_for(lambda: process_gone(busy), 10, "the busy worker gone after its task")
    assert_each_done_once(service, runs, [task_id])
    assert not leftovers(tmp_path)

    again = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0")  # the lock died with it
    again.wait_log("started worker ")
    _stop(again, tmp_path, runs)


def test_the_pool_is_tended_while_its_status_report_waits_on_a_locked_database(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    """The tender writes its pool to the database every 2 s for `pheanq status`; a write that waits (here on
    another connection's write lock) must not stop it from replacing a dead worker meanwhile."""
    service = make_service(sqlite_url)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--max-workers", "2")
    first = wait_for(lambda: [pid for pid in started_workers(tender) if "READY" in tender.worker_lines(pid)], 15,
                     "a worker READY")[0]
    wait_for(lambda: any(row.pid == first for row in service.store.admin.list_pool()), 10, "the first report")

    database = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")
        # Reports come every 2 s: once the last one written is 2.5 s old, the next one waits on the lock.
        wait_for(lambda: _seconds_since_report(service, tender.pid) > 2.5, 10, "a report to wait on the lock")
        psutil.Process(first).kill()
        replacement = wait_for(lambda: [pid for pid in started_workers(tender) if pid != first], 5,
                               "the tender to start a replacement while its report waits")[0]
        wait_for(lambda: "READY" in tender.worker_lines(replacement), 10, "the replacement READY")
        assert _seconds_since_report(service, tender.pid) > 2.5  # the report really was held up meanwhile
    finally:
        database.rollback()
        database.close()
    wait_for(lambda: any(row.pid == replacement for row in service.store.admin.list_pool()), 10,
             "a report after the lock")
    _stop(tender, tmp_path, None)


def _seconds_since_report(service: TaskQueueService, tender_pid: int) -> float:
    beats = [row.heartbeat for row in service.store.admin.list_pool() if row.pid == tender_pid]
    assert beats, "the tender has no report in the database"
    return (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - beats[0]).total_seconds()


# --- stop-worker-tender, one tender per tube --------------------------------------------------------------------

def test_stop_worker_tender_stops_the_tube_s_tender_and_returns_once_it_is_gone(
    sqlite_url: str, runs: Path, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
    start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    task_id = queue(service, 1, 1.0)[0]
    env = tender_env(make_env, tmp_path, sqlite_url)
    # The tender's Python takes half a second to exit after its last line of code (atexit), as a slow
    # interpreter shutdown would: `stop-worker-tender` must wait for the process, not for its lock alone.
    slow_exit = tmp_path / "slow-exit"
    slow_exit.mkdir()
    # The worker's slow exit is what the test is about: a fixed 0.5 s at interpreter shutdown.
    (slow_exit / "sitecustomize.py").write_text("import atexit, time\natexit.register(time.sleep, 0.5)\n")
    tender = start_tender(sqlite_url, "--use-tube", TUBE, "--min-workers", "1", "--spare-workers", "0",
                          PYTHONPATH=str(slow_exit))
    worker_of(tender, task_id)

    result = pheanq(["stop-worker-tender", "--use-tube", TUBE], env, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert process_gone(tender.pid), "stop-worker-tender returned while the tender still ran"
    assert result.stdout.strip() == f"stopped worker-tender {tender.pid} (tubes {TUBE})"
    assert tender.wait(5) == 0
    assert_each_done_once(service, runs, [task_id])  # its running task finished first
    assert_nothing_left(tender, tmp_path, runs)

    again = pheanq(["stop-worker-tender", "--use-tube", TUBE], env, tmp_path, timeout=30)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"no worker-tender for tube {TUBE} runs on this machine"


def test_a_second_tender_on_the_same_tube_is_refused_unless_allowed(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, start_tender: StartTender,
) -> None:
    first = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0")
    first.wait_log("started worker ")

    refused = pheanq(["worker-tender", "--min-workers", "1"], tender_env(make_env, tmp_path, sqlite_url), tmp_path,
                     timeout=30)
    assert refused.returncode != 0
    message = one_error_line(refused)
    assert f"already runs here (pid {first.pid})" in message and "--allow-second-tender" in message, message
    assert message.startswith("pheanq: error: a worker-tender for tube pheanq")

    second = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "0", "--allow-second-tender")
    second.wait_log("started worker ")
    assert first.process.poll() is None and second.process.poll() is None
    for tender in (first, second):
        tender.signal(signal.SIGTERM)
    for tender in (first, second):
        assert tender.wait(15) == 0, tender.log[-2000:]
        assert_nothing_left(tender, tmp_path)


# --- what it shows ----------------------------------------------------------------------------------------------

def test_status_shows_the_tender_its_workers_and_their_tasks_while_it_runs_and_not_after(
    sqlite_url: str, runs: Path, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
    start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = queue(service, 1, 0, until=str(go))[0]
    env = tender_env(make_env, tmp_path, sqlite_url)
    tender = start_tender(sqlite_url, "--min-workers", "1", "--spare-workers", "1", "--max-workers", "3")
    busy = worker_of(tender, task_id)

    def pool() -> list[dict[str, Any]]:
        result = pheanq(["status", "--json"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        entries: list[dict[str, Any]] = json.loads(result.stdout)["pool"]
        return entries

    def shows_busy_and_idle() -> list[dict[str, Any]] | None:
        entries = pool()
        states = {(w["pid"], w["state"], w["task_id"]) for t in entries for w in t["workers"]}
        if (busy, "busy", task_id) in states and any(state == "idle" for _, state, _ in states):
            return entries
        return None

    entries = wait_for(shows_busy_and_idle, 15, "status to show the busy worker and an idle one")
    assert len(entries) == 1
    assert entries[0]["pid"] == tender.pid and entries[0]["state"] == "running"
    assert entries[0]["host"] == socket.gethostname() and entries[0]["tubes"] == [TUBE]
    assert {w["pid"] for w in entries[0]["workers"]} <= set(started_workers(tender))

    text = pheanq(["status"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"worker-tender {socket.gethostname()}:{tender.pid}  tubes {TUBE}  running" in text.stdout
    assert re.search(rf"^  worker {busy}\s+busy\s+task {task_id}\s", text.stdout, re.M), text.stdout
    assert re.search(r"^  worker \d+\s+idle\s+-\s", text.stdout, re.M), text.stdout

    go.touch()
    wait_for(all_done(service, [task_id]), 15, "the task done")
    tender.signal(signal.SIGTERM)
    assert tender.wait(15) == 0, tender.log[-2000:]
    assert pool() == []
    after = pheanq(["status"], env, tmp_path)
    assert "worker-tenders: none reported" in after.stdout
    # The tender's own line, not its bare pid: a pid of 390 is also in a beanstalkd port 39083.
    assert f"{socket.gethostname()}:{tender.pid} " not in after.stdout


def test_every_worker_line_is_passed_through_prefixed_with_the_worker_s_pid(
    sqlite_url: str, runs: Path, tmp_path: Path, make_service: MakeService, start_tender: StartTender,
) -> None:
    service = make_service(sqlite_url)
    ids = queue(service, 2, 0)
    tender = start_tender(sqlite_url, "--min-workers", "2", "--spare-workers", "0", "--max-workers", "2")
    wait_for(all_done(service, ids), 15, "both tasks done")
    workers = wait_for(lambda: len(started_workers(tender)) == 2 and started_workers(tender), 10, "two workers")
    wait_for(lambda: all("READY" in tender.worker_lines(pid) for pid in workers), 10, "both workers READY")
    tender.signal(signal.SIGTERM)
    assert tender.wait(15) == 0

    for pid in workers:
        lines = tender.worker_lines(pid)
        prefixes = ("20", "READY", "BUSY ", "CHILD ", "EXITED ")
        assert lines.count("READY") >= 1 and all(line.startswith(prefixes) for line in lines), lines
        # The worker's own log lines carry its pid too: the prefix names the process that printed them.
        logged = [line for line in lines if " pheanq.worker[" in line]
        assert logged and all(f" pheanq.worker[{pid}] " in line for line in logged), lines
        assert any(f"worker {socket.gethostname()}:{pid} stops" in line for line in logged), lines
    for task_id in ids:
        owner = worker_of(tender, task_id)
        assert any(f"task {task_id} (work): attempt 1 starts" in line for line in tender.worker_lines(owner))
    # The tender's own lines: its loop's (pheanq.tender) and its reconciler thread's (pheanq.reconcile).
    unprefixed = [line for line in tender.lines if not line.startswith("worker ")
                  and f" pheanq.tender[{tender.pid}] " not in line and f" pheanq.reconcile[{tender.pid}] " not in line]
    assert not unprefixed, unprefixed
