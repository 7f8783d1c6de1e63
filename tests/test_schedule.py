"""Delays and schedules, against a real beanstalkd and real databases: the delay is kept on the row as
run_at, so every put of the job carries it — the first, one after beanstalkd was down, and a reconciler's
re-put — and a job that comes early is put back unrun."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from pathlib import Path

import greenstalk
import pytest
from support import Beanstalkd, WorkerProcess, pheanq

from pheanq import InvalidInput, Status, TaskDescription, TaskPendingWarning
from pheanq.body import encode_body
from pheanq.limits import MAX_BEANSTALKD_SECONDS
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.run_at import put_delay, run_at_of

MakeService = Callable[..., TaskQueueService]
TUBE = "pheanq"
TASK = TaskDescription("work", [1])


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def job_stats(server: Beanstalkd, job_id: int) -> dict[str, object]:
    with greenstalk.Client(server.address, encoding=None) as client:
        return dict(client.stats_job(job_id))


def test_the_schedule_rule() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    assert run_at_of(0, None, now) is None and put_delay(None, now) == 0
    assert run_at_of(90, None, now) == now + dt.timedelta(seconds=90)
    paris = dt.timezone(dt.timedelta(hours=1))
    assert run_at_of(0, dt.datetime(2026, 1, 1, 14, 0, tzinfo=paris), now) == dt.datetime(2026, 1, 1, 13, 0)
    assert put_delay(now + dt.timedelta(seconds=10.2), now) == 11
    assert put_delay(now - dt.timedelta(hours=1), now) == 0
    # Further off than beanstalkd takes in one delay: put with its limit, and put back again when it comes.
    assert put_delay(now + dt.timedelta(days=365 * 200), now) == MAX_BEANSTALKD_SECONDS
    with pytest.raises(InvalidInput, match="not both"):
        run_at_of(5, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), now)
    with pytest.raises(InvalidInput, match="timezone-aware"):
        run_at_of(0, dt.datetime(2026, 1, 1), now)
    with pytest.raises(InvalidInput, match="must be a datetime"):
        run_at_of(0, "tomorrow", now)  # type: ignore[arg-type]


def test_delay_and_run_at_are_kept_on_the_row_and_put_as_beanstalkds_delay(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    before = utc_now()
    delayed = service.queue_task(TASK, delay=3600)
    scheduled = service.queue_task(TASK, run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    for task_id, seconds in ((delayed, 3600), (scheduled, 7200)):
        row = service.find_task(task_id)
        assert row.run_at is not None and before + dt.timedelta(seconds=seconds - 5) < row.run_at
        assert row.run_at < utc_now() + dt.timedelta(seconds=seconds + 5)
        assert row.job_id is not None
        stats = job_stats(beanstalkd, row.job_id)
        assert stats["state"] == "delayed" and seconds - 5 <= int(str(stats["time-left"])) <= seconds


def test_a_delay_survives_a_pending_put_and_a_reconcilers_re_put(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    beanstalkd.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskPendingWarning)
        pending = service.queue_task(TASK, delay=600)
    beanstalkd.start()
    assert reconcile(service.dispatch, min_age=0).sent_again == 1
    job_id = service.find_task(pending).job_id
    assert job_id is not None
    stats = job_stats(beanstalkd, job_id)
    assert stats["state"] == "delayed" and 590 <= int(str(stats["time-left"])) <= 600


def test_a_job_that_comes_before_its_tasks_run_at_is_put_back_unrun(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: Callable[..., dict[str, str]],
    beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    example = TaskDescription("example-task-worker", [0])  # a command every worker knows
    task_id = service.queue_task(example, delay=300)
    # Another client puts the task's job with no delay (as a re-put would when the wait is past beanstalkd's limit).
    with greenstalk.Client(beanstalkd.address, encoding=None, use=TUBE) as client:
        early = client.put(encode_body(task_id, example, nonce=service.find_task(task_id).nonce))
    worker = WorkerProcess(["--stop-when-empty"], make_env(sqlite_url), tmp_path)
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.NEW, 0)
    assert f"task {task_id} may not run before" in worker.log
    stats = job_stats(beanstalkd, early)
    assert stats["state"] == "delayed" and 290 <= int(str(stats["time-left"])) <= 300


def test_add_example_task_takes_a_delay(sqlite_url: str, tmp_path: Path, make_service: MakeService,
                                        make_env: Callable[..., dict[str, str]], beanstalkd: Beanstalkd) -> None:
    queued = pheanq(["add-example-task", "--delay", "120"], make_env(sqlite_url), tmp_path)
    assert queued.returncode == 0, queued.stderr
    row = make_service(sqlite_url).find_task(int(queued.stdout.split("id ")[1]))
    assert row.run_at is not None and row.job_id is not None
    assert job_stats(beanstalkd, row.job_id)["state"] == "delayed"
