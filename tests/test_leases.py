"""Leases: a task is held by the attempt that renews its row's heartbeat, not by whoever holds the job.

Against a real beanstalkd and real databases, with real worker and tender processes and real signals:
a job handed out again while its holder lives (a dropped connection, a restarted beanstalkd) waits and is
never run a second time; a holder that died is taken over once its lease is stale, or at once when its
tender saw it die; and a command that completed before its worker was killed is recorded, not run again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import greenstalk
import pytest
from support import (
    Beanstalkd,
    TenderProcess,
    WorkerProcess,
    claims,
    job_state,
    kill_worker_once_its_command_exited,
    register_work_script,
    wait_for,
    write_config,
)

from pheanq import Status, TaskDescription
from pheanq.dispatch import WorkPackage
from pheanq.lease import heartbeat_interval, holder_must_stop_after, stale_after
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.claims import ClaimOutcome
from pheanq.storage.tables import task_table

TUBE = "pheanq"
MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]

# Appends "start <id>" then, after SECONDS (and once the file GO exists, when given), "done <id>".
TASK_SCRIPT = """
    import os, sys, time
    runs, seconds, go = sys.argv[1], float(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""
    task_id = os.environ["PHEANQ_TASK_ID"]
    with open(runs, "a") as f:
        f.write(f"start {task_id}\\n")
    deadline, cap = time.monotonic() + seconds, time.monotonic() + 60
    while time.monotonic() < deadline or (go and not os.path.exists(go) and time.monotonic() < cap):
        time.sleep(0.02)  # the task's work
    with open(runs, "a") as f:
        f.write(f"done {task_id}\\n")
"""


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return register_work_script(tmp_path, TASK_SCRIPT)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[WorkerProcess | TenderProcess]]:
    started: list[WorkerProcess | TenderProcess] = []
    yield started
    for process in started:
        process.stop()


def counts(runs: Path, word: str, task_id: int) -> int:
    return runs.read_text().split("\n").count(f"{word} {task_id}")


def set_heartbeat(service: TaskQueueService, task_id: int, seconds_ago: float) -> None:
    when = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=seconds_ago)
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(heartbeat=when))


def jobs_in(server: Beanstalkd, tube: str = TUBE) -> int:
    with greenstalk.Client(server.address, encoding=None) as client:
        stats = client.stats_tube(tube)
    return sum(int(str(dict(stats)[f"current-jobs-{state}"])) for state in ("ready", "reserved", "delayed", "buried"))


def test_the_lease_rule() -> None:
    assert heartbeat_interval(60) == 10 and heartbeat_interval(3) == 1 and heartbeat_interval(0) == 0.2
    for ttr in (1, 3, 30, 60, 3600):
        # The holder gives up well before anyone else may take over, and renews at least twice before that.
        assert 2 * heartbeat_interval(ttr) <= holder_must_stop_after(ttr) < stale_after(ttr)
        assert heartbeat_interval(ttr) < ttr or ttr < 1


def held_then_dropped(make_service: MakeService, db_url: str) -> tuple[TaskQueueService, TaskQueueService, int,
                                                                      WorkPackage]:
    """A task claimed by `holder`, whose beanstalkd connection then drops (the job is handed out again), and
    another service that will get the job: (holder, other, task id, the holder's package)."""
    holder, other = make_service(db_url), make_service(db_url)
    other.dispatch.worker_name = "other:1"
    task_id = holder.queue_task(TaskDescription("example-task-worker", ["1"]), ttr=3)
    package = claims(holder).reserve_task(TUBE, 1)
    assert package is not None
    holder.beanstalkd.close()
    return holder, other, task_id, package


def test_a_job_handed_out_again_while_its_holder_renews_the_lease_waits_and_is_not_run_twice(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    holder, other, task_id, package = held_then_dropped(make_service, db_url)

    assert claims(other).reserve_task(TUBE, 1) is None  # it came, found the lease renewed, and was put off
    row = other.find_task(task_id)
    assert (row.status, row.attempts, row.worker) == (Status.WORKING, 1, holder.dispatch.worker_name)
    assert job_state(beanstalkd, package.job_id) == "delayed"
    claim = other.store.claims.claim_task(task_id, package.row.nonce, package.job_id, other.dispatch.worker_name,
                                         [TUBE], [package.row.command])
    assert claim.outcome is ClaimOutcome.HELD_ALIVE

    assert claims(holder).renew_lease(package)
    assert claims(holder).mark_done(package, "--- done\n")
    assert holder.find_task(task_id).status is Status.DONE
    assert job_state(beanstalkd, package.job_id) is None  # a delayed job is anyone's to delete


def test_a_stale_lease_is_taken_over_and_the_old_attempt_can_no_longer_record_anything(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    holder, other, task_id, package = held_then_dropped(make_service, db_url)
    set_heartbeat(holder, task_id, stale_after(3) + 1)

    taken = claims(other).reserve_task(TUBE, 1)
    assert taken is not None and (taken.task_id, taken.attempt) == (task_id, 2)
    assert not claims(holder).renew_lease(package)
    assert not claims(holder).mark_done(package, "--- late\n")
    assert claims(other).mark_done(taken, "--- done\n")
    assert other.find_task(task_id).attempts == 2


def test_a_stalled_task_handed_back_late_by_its_cut_off_worker_is_not_ended(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    """A host cut off silently: the reconciler found its task's job gone and lease stale, stalled the task and sent
    it again; the worker comes back and hands its stopped attempt back. That late move is refused, and the task
    stays to run again: it is not ended as if a cancel had been requested (./scripts/cluster link-cut found it)."""
    holder, other, task_id, package = held_then_dropped(make_service, db_url)
    set_heartbeat(holder, task_id, stale_after(3) + 1)
    assert job_state(beanstalkd, package.job_id) == "ready"
    with greenstalk.Client(beanstalkd.address, encoding=None) as client:
        client.delete(package.job_id)  # its job is gone too (lost with the cut host's connection, say)
    report = reconcile(other.dispatch, TUBE, min_age=0)
    assert report.stalled == 1, report.summary()
    assert other.find_task(task_id).status is Status.STALLED

    assert not claims(holder).release_task(package, "--- attempt 1: interrupted: its lease could not be renewed\n")
    row = other.find_task(task_id)
    assert row.status is Status.STALLED and row.cancel_requested_by is None, row.log
    taken = claims(other).reserve_task(TUBE, 1)
    assert taken is not None and (taken.task_id, taken.attempt) == (task_id, 2)
    assert claims(other).mark_done(taken, "--- done\n")
    assert other.find_task(task_id).status is Status.DONE


def test_a_worker_whose_beanstalkd_restarts_mid_task_finishes_it_and_no_other_worker_runs_it(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService, runs: Path,
    processes: list[WorkerProcess | TenderProcess],
) -> None:
    binlog = tmp_path / "binlog"
    binlog.mkdir()
    server = Beanstalkd(binlog_dir=binlog).start()
    try:
        env = {**make_env(sqlite_url), "PHEANQ_BEANSTALKD": server.address_text}
        service = make_service(sqlite_url, beanstalkd=server.address_text)
        go = tmp_path / "go"
        task_id = service.queue_task(TaskDescription("work", ["0", str(go)]), ttr=2)
        first = WorkerProcess([], env, tmp_path)
        processes.append(first)
        wait_for(lambda: counts(runs, "start", task_id) == 1, 20, "the task to start")
        server.stop(signal.SIGKILL)
        server.start()  # from its binlog: the reserved job is ready again
        second = WorkerProcess([], env, tmp_path)
        processes.append(second)
        wait_for(lambda: any("still held by" in line for line in second.errors), 20,
                 f"the second worker to find the task held; its log:\n{second.log}")
        go.touch()
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, f"the task done; log:\n{first.log}")
        assert service.find_task(task_id).attempts == 1
        assert (counts(runs, "start", task_id), counts(runs, "done", task_id)) == (1, 1)
        wait_for(lambda: jobs_in(server) == 0, 20, "the job to be gone")
    finally:
        server.stop()


def test_a_killed_standalone_workers_task_is_taken_over_once_its_lease_is_stale(
    db_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService, beanstalkd: Beanstalkd,
    runs: Path, processes: list[WorkerProcess | TenderProcess],
) -> None:
    service = make_service(db_url)
    env = make_env(db_url)
    task_id = service.queue_task(TaskDescription("work", ["30"]), ttr=1)
    first = WorkerProcess([], env, tmp_path)
    processes.append(first)
    wait_for(lambda: counts(runs, "start", task_id) == 1, 20, "the task to start")
    second = WorkerProcess([], env, tmp_path)
    processes.append(second)
    # Up and waiting for the job before the first dies: a start slower than the lease (a loaded machine) would
    # find the lease already stale and take the task over without waiting, which is not what this test shows.
    second.wait_line("READY")
    first.signal(signal.SIGKILL)
    first.wait()
    # The second worker gets the job at once, but waits out the dead holder's lease before running it.
    wait_for(lambda: counts(runs, "start", task_id) == 2, 30, f"the takeover; log:\n{second.log}")
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.WORKING, 2)
    assert (row.heartbeat - row.started).total_seconds() >= 0  # type: ignore[operator]
    assert any("still held by" in line for line in second.errors), second.log
    assert counts(runs, "done", task_id) == 0  # the killed run never completed: its command died with it


def start_held_task(service: TaskQueueService, tmp_path: Path, env: dict[str, str], runs: Path, go: Path,
                    workers: int, processes: list[WorkerProcess | TenderProcess]) -> tuple[int, TenderProcess, int]:
    """A tender of `workers` workers, one of which runs a task until `go` exists: (task id, tender, its pid).
    The TTR is long: waiting for the lease to go stale would take 32 s."""
    task_id = service.queue_task(TaskDescription("work", ["0", str(go)]), ttr=60)
    tender = TenderProcess(["--min-workers", str(workers), "--max-workers", str(workers), "--spare-workers", "0"],
                           {**env, "PHEANQ_RUN_DIR": str(tmp_path / "run")}, tmp_path)
    processes.append(tender)
    wait_for(lambda: counts(runs, "start", task_id) == 1, 20, "the task to start")
    return task_id, tender, int(str(service.find_task(task_id).worker).rsplit(":", 1)[1])


def test_a_tender_stalls_the_task_of_a_worker_killed_mid_task_and_it_runs_again_at_once(
    db_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService, runs: Path,
    processes: list[WorkerProcess | TenderProcess],
) -> None:
    service = make_service(db_url)
    go = tmp_path / "go"
    task_id, tender, worker_pid = start_held_task(service, tmp_path, make_env(db_url), runs, go, 2, processes)
    os.kill(worker_pid, signal.SIGKILL)
    wait_for(lambda: counts(runs, "start", task_id) == 2, 15, f"the task to run again; log:\n{tender.log[-3000:]}")
    go.touch()
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, "the task done")
    row = service.find_task(task_id)
    assert row.attempts == 2 and counts(runs, "done", task_id) == 1
    assert "died (signal 9); the task goes back to its tube" in (row.log or ""), row.log


def test_a_command_that_completed_before_its_worker_was_killed_is_recorded_by_the_tender_not_run_again(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService, beanstalkd: Beanstalkd,
    runs: Path, processes: list[WorkerProcess | TenderProcess],
) -> None:
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id, tender, worker_pid = start_held_task(service, tmp_path, make_env(sqlite_url), runs, go, 1, processes)
    kill_worker_once_its_command_exited(sqlite_url, tender, worker_pid, 0, go)
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, f"the task done; log:\n{tender.log[-3000:]}")
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (1, 0)
    assert "its tender recorded the result" in (row.log or ""), row.log
    wait_for(lambda: jobs_in(beanstalkd) == 0, 20, "the job to be gone")
    assert (counts(runs, "start", task_id), counts(runs, "done", task_id)) == (1, 1)


def test_an_attempt_whose_lease_a_claim_takes_over_keeps_a_log_entry(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A worker not under a tender dies with kill -9; beanstalkd hands the job out again, and the next worker's
    claim takes the stale lease over. The task used to end with `attempts` 2 and no word of attempt 1."""
    flag = tmp_path / "first-ran"
    write_config(tmp_path, commands={"once": ["sh", "-c", f"if [ -e {flag} ]; then exit 0; fi; touch {flag}; "
                                                          "exec sleep 15"]})  # runs until killed
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("once"), ttr=1)
    first = start_worker([], make_env(db_url))
    first.wait_line(f"BUSY {task_id}")
    wait_for(flag.exists, 10, "the first attempt's command to start")
    first.signal(signal.SIGKILL)
    first.wait()
    second = start_worker(["--stop-when-drained"], make_env(db_url))
    assert second.wait(60) == 0, second.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.DONE, 2), second.log
    assert row.log is not None
    holder = f"{socket.gethostname()}:{first.process.pid}"
    assert f"--- attempt 1: its worker ({holder}) stopped renewing its lease" in row.log, row.log
    assert row.log.index("--- attempt 1:") < row.log.index("--- attempt 2 on ")
