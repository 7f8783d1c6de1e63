"""`pheanq tasks --cancel` and `--regenerate` on every database: they act on every task the filter selects and
on no other, say what they did, keep regenerate's guarantees (a task left without a job is sent by the
reconciler), ask on a terminal, and take 100,000 selected tasks in pages of short transactions."""

from __future__ import annotations

import datetime as dt
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from support import Beanstalkd, finish_next, pheanq

from pheanq import Status, TaskDescription
from pheanq.body import encode_data, new_nonce
from pheanq.clock import utc_now
from pheanq.ops.reconcile import reconcile
from pheanq.ops.selection import regenerate_selection
from pheanq.producer.service import TaskQueueService
from pheanq.storage.listings import TaskFilter
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
MANY = 100_000


def _job_alive(service: TaskQueueService, task_id: int) -> bool:
    job_id = service.find_task(task_id).job_id
    return job_id is not None and service.beanstalkd.inspect(job_id) is not None


def test_cancel_takes_the_selected_tasks_and_leaves_the_others(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    service.queue_task(TaskDescription("invoice", [1]), tube="billing")
    running = finish_next(service, "billing", Status.WORKING)
    service.queue_task(TaskDescription("invoice", [2]), tube="billing")
    failed = finish_next(service, "billing", Status.FAILED)
    queued = [service.queue_task(TaskDescription("invoice", [n]), tube="billing") for n in (3, 4)]
    other = service.queue_task(TaskDescription("invoice", [5]), tube="other")

    answer = pheanq(["tasks", "--tube", "billing", "--cancel", "--yes", "--by", "alice"], make_env(db_url), tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "cancelled 2 of 4 selected task(s); cancel requested for 1 running task(s): their " \
                            "workers stop them; skipped 1 that had ended\n"
    for task_id in queued:
        row = service.find_task(task_id)
        assert row.status is Status.CANCELLED and row.log is not None and "--- cancelled by alice" in row.log
        assert row.job_id is not None and service.beanstalkd.inspect(row.job_id) is None
    assert service.find_task(running).status is Status.WORKING
    assert service.find_task(running).cancel_requested_by == "alice"
    assert service.find_task(failed).status is Status.FAILED
    assert service.find_task(other).status is Status.NEW and _job_alive(service, other)


def test_regenerate_takes_the_selected_failed_tasks_and_says_which_it_refused(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    failed: list[int] = []
    for n in range(2):
        service.queue_task(TaskDescription("invoice", [n]), tube="billing")
        failed.append(finish_next(service, "billing", Status.FAILED))
    service.queue_task(TaskDescription("invoice", [2]), tube="billing")
    done = finish_next(service, "billing", Status.DONE)
    service.queue_task(TaskDescription("invoice", [3]), tube="billing", unique_key="K")
    keyed = finish_next(service, "billing", Status.FAILED)
    batch = service.create_batch("nightly")
    batch.add(TaskDescription("invoice", [4]), tube="billing")
    batch.close()
    in_finished_batch = finish_next(service, "billing", Status.FAILED)
    sharing = []  # two failed tasks with one free key: the newest takes it back
    for n in range(2):
        service.queue_task(TaskDescription("invoice", [7 + n]), tube="billing", unique_key="L")
        sharing.append(finish_next(service, "billing", Status.FAILED))
    holder = service.queue_task(TaskDescription("invoice", [5]), tube="billing", unique_key="K")
    service.queue_task(TaskDescription("invoice", [6]), tube="other")
    elsewhere = finish_next(service, "other", Status.FAILED)

    answer = pheanq(["tasks", "--tube", "billing", "--status", "failed,done", "--regenerate", "--yes"],
                    make_env(db_url), tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [
        "regenerated 3 of 7 selected task(s) (now restarted, back in their tubes); skipped 1 that were not failed",
        "not regenerated: 3 failed task(s) that may not run again",
        f"  task {keyed}: another task holds its unique key now",
        f"  task {in_finished_batch}: its batch {batch.id} has finished",
        f"  task {sharing[0]}: another task holds its unique key now",
    ]
    assert service.find_task(sharing[1]).status is Status.RESTARTED
    assert service.find_task(sharing[1]).unique_live == "L"
    for task_id in failed:
        row = service.find_task(task_id)
        assert row.status is Status.RESTARTED and row.finished is None and row.exit_code is None
        assert row.log is not None and row.log.endswith(f"--- regenerated: attempt 2 may run (a fresh allowance of "
                                                        f"its retry policy) at {row.modified:%Y-%m-%d %H:%M:%S} UTC\n")
        assert row.job_id is not None
        info = service.beanstalkd.inspect(row.job_id)
        assert info is not None and info.tube == "billing"
    assert [service.status_of(task_id) for task_id in (done, keyed, in_finished_batch, sharing[0], elsewhere,
                                                         holder)] == \
        [Status.DONE, Status.FAILED, Status.FAILED, Status.FAILED, Status.FAILED, Status.NEW]
    # The jobs are the tasks' own: a worker claims and runs them.
    claimed = {finish_next(service, "billing", Status.DONE) for _ in range(4)}
    assert claimed == {*failed, sharing[1], holder}
    assert all(service.status_of(task_id) is Status.DONE for task_id in failed)


def test_regenerated_tasks_whose_jobs_were_not_put_are_sent_by_the_reconciler(
    sqlite_url: str, beanstalkd: Beanstalkd, make_service: MakeService,
) -> None:
    service = make_service(sqlite_url)
    failed = []
    for n in range(3):
        service.queue_task(TaskDescription("invoice", [n]))
        failed.append(finish_next(service, "pheanq", Status.FAILED))
    beanstalkd.stop()
    outcome = regenerate_selection(service.dispatch, TaskFilter(statuses=(Status.FAILED,)))
    assert (outcome.acted, outcome.unsent) == (3, 3)
    assert "3 regenerated task(s) have no job yet" in outcome.report()[-1]
    assert "the reconciler sends them" in outcome.report()[-1]
    assert all(service.find_task(task_id).status is Status.RESTARTED and service.find_task(task_id).job_id is None
               for task_id in failed)
    beanstalkd.start()
    reconcile(service.dispatch, None, min_age=0)
    assert all(_job_alive(service, task_id) for task_id in failed)
    assert {finish_next(service, "pheanq", Status.DONE) for _ in failed} == set(failed)


def test_on_a_terminal_it_asks_with_the_count_and_does_nothing_unless_told_yes(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(sqlite_url)
    queued = [service.queue_task(TaskDescription("invoice", [n]), tube="billing") for n in range(2)]
    service.queue_task(TaskDescription("invoice", [9]))
    env = make_env(sqlite_url)

    def answer_on_a_terminal(reply: bytes) -> subprocess.CompletedProcess[str]:
        terminal, its_side = pty.openpty()
        try:
            process = subprocess.Popen([sys.executable, "-m", "pheanq", "tasks", "--tube", "billing", "--cancel"],
                                       stdin=its_side, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                       cwd=tmp_path, text=True)
            os.close(its_side)
            os.write(terminal, reply)
            out, err = process.communicate(timeout=60)
        finally:
            os.close(terminal)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    refused = answer_on_a_terminal(b"n\n")
    assert refused.stdout == "2 task(s) match --tube billing; cancel them? [y/N]: "
    assert (refused.returncode, refused.stderr) == (1, "nothing done: cancel not confirmed\n")
    assert [service.status_of(task_id) for task_id in queued] == [Status.NEW, Status.NEW]
    agreed = answer_on_a_terminal(b"y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert agreed.stdout.endswith("cancel them? [y/N]: cancelled 2 of 2 selected task(s)\n")
    assert [service.status_of(task_id) for task_id in queued] == [Status.CANCELLED, Status.CANCELLED]


def test_100000_selected_tasks_are_regenerated_then_cancelled_in_short_transactions(
    db_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    kept = service.queue_task(TaskDescription("invoice", [0]), tube="bulk")
    finish_next(service, "bulk", Status.FAILED)
    _insert_failed(service, "bulk", MANY)
    elsewhere = service.queue_task(TaskDescription("invoice", [0]), tube="other")
    finish_next(service, "other", Status.FAILED)
    env = make_env(db_url)
    selection = ["--tube", "bulk", "--created-after", (utc_now() - dt.timedelta(minutes=5)).isoformat()]

    regenerated = _timed_beside_a_producer(service, ["tasks", *selection, "--status", "failed", "--regenerate",
                                                     "--yes"], env, tmp_path)
    assert regenerated.stdout == f"regenerated {MANY + 1} of {MANY + 1} selected task(s) (now restarted, back in " \
                                 "their tubes)\n"
    with service.store.database.transaction() as conn:
        c = task_table.c
        assert conn.execute(sa.select(c.status, sa.func.count()).where(c.tube == "bulk", c.job_id.is_not(None))
                            .group_by(c.status)).all() == [(Status.RESTARTED.value, MANY + 1)]
    stats = service.beanstalkd.tube_stats("bulk")
    assert stats is not None and stats["current-jobs-ready"] == MANY + 1
    assert service.status_of(elsewhere) is Status.FAILED

    cancelled = _timed_beside_a_producer(service, ["tasks", *selection, "--cancel", "--yes"], env, tmp_path)
    assert cancelled.stdout == f"cancelled {MANY + 1} of {MANY + 1} selected task(s)\n"
    with service.store.database.transaction() as conn:
        assert conn.execute(sa.select(c.status, sa.func.count()).where(c.tube == "bulk")
                            .group_by(c.status)).all() == [(Status.CANCELLED.value, MANY + 1)]
    assert service.beanstalkd.tube_stats("bulk") is None  # every job deleted: the tube is gone
    assert service.status_of(kept) is Status.CANCELLED and service.status_of(elsewhere) is Status.FAILED


def _insert_failed(service: TaskQueueService, tube: str, count: int) -> None:
    """`count` failed tasks, written straight into the table in a few statements (queueing them one by one would
    cost minutes; what is tested is what happens to them next)."""
    now = utc_now()
    data = encode_data(TaskDescription("invoice", [7]))
    row = dict(command="invoice", data=data, tube=tube, status=Status.FAILED.value, priority=1024, ttr=60,
               attempts=1, exit_code=3, created=now, modified=now, finished=now, waiting_for=0)
    for start in range(0, count, 20_000):
        with service.store.database.transaction() as conn:
            conn.execute(task_table.insert(), [{**row, "nonce": new_nonce()}
                                               for _ in range(start, min(count, start + 20_000))])
    # A table that grew by so many rows is analyzed by the server itself soon after (PostgreSQL's autovacuum,
    # InnoDB's automatic statistics); at once here, so that the plans are those of a table in use.
    with service.store.database.transaction() as conn:
        conn.exec_driver_sql({"postgresql": "ANALYZE pheanq_task", "mysql": "ANALYZE TABLE pheanq_task"}.get(
            conn.dialect.name, "ANALYZE"))


def _timed_beside_a_producer(service: TaskQueueService, args: list[str], env: dict[str, str],
                             cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `pheanq ARGS` while this process queues tasks into another tube: no queueing may wait long for the
    locks the command takes (each page is a transaction of its own). Prints how long the command took."""
    waits: list[float] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            started = time.monotonic()
            service.queue_task(TaskDescription("invoice", [1]), tube="beside")
            waits.append(time.monotonic() - started)
            stop.wait(0.05)

    producer = threading.Thread(target=produce)
    started = time.monotonic()
    producer.start()
    try:
        answer = pheanq(args, env, cwd, timeout=300)
    finally:
        stop.set()
        producer.join(30)
    print(f"pheanq {' '.join(args[-2:])} on {MANY} tasks: {time.monotonic() - started:.1f}s; the longest queue_task "
          f"beside it took {max(waits):.2f}s")
    assert answer.returncode == 0, answer.stderr
    assert len(waits) >= 3 and max(waits) < 2.0, waits
    return answer


def test_delete_takes_the_selected_ended_tasks_and_spares_the_rest(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    service.queue_task(TaskDescription("invoice", [1]), tube="billing")
    done = finish_next(service, "billing", Status.DONE)
    service.queue_task(TaskDescription("invoice", [2]), tube="billing")
    failed = finish_next(service, "billing", Status.FAILED)
    queued = service.queue_task(TaskDescription("invoice", [3]), tube="billing")
    service.queue_task(TaskDescription("invoice", [4]), tube="other")
    other_done = finish_next(service, "other", Status.DONE)

    answer = pheanq(["tasks", "--tube", "billing", "--delete", "--yes"], make_env(db_url), tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == "deleted 2 of 3 selected task(s); skipped 1 that had not ended (or that a running " \
                            "batch or a waiting task still counts)\n"
    assert service.status_of(done) is None and service.status_of(failed) is None
    assert service.status_of(queued) is Status.NEW and _job_alive(service, queued)
    assert service.status_of(other_done) is Status.DONE
    assert {(tube, status): n for tube, status, n in service.store.tasks.count_tasks()} == {
        ("billing", Status.NEW): 1, ("other", Status.DONE): 1}
