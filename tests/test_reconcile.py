"""The reconciler against a real beanstalkd and real databases: lost jobs come back, live ones stay single."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import greenstalk
import pytest
import sqlalchemy as sa
from support import Beanstalkd, TenderProcess, claims, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription, TaskPendingWarning
from pheanq.beanstalkd import ServerIdentity
from pheanq.clock import utc_now
from pheanq.ops.reconcile import LOCK_NAME, reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

TASK = TaskDescription("work", [1])


def live_jobs_of(server: Beanstalkd, tube: str = "pheanq") -> dict[int, int]:
    """task id -> number of live jobs pointing at it, read with a plain client (ready, delayed, buried)."""
    counts: dict[int, int] = {}
    with greenstalk.Client(server.address, encoding=None, use=tube, watch=tube) as client:
        stats = dict(client.stats_tube(tube))
        total = sum(int(str(stats[f"current-jobs-{state}"])) for state in ("ready", "delayed", "buried", "reserved"))
        for job_id in range(1, int(client.stats()["total-jobs"]) + 1):
            try:
                body = client.peek(job_id).body
            except greenstalk.NotFoundError:
                continue
            task_id = int(body.split(b'"task_id":')[1].split(b",")[0])
            counts[task_id] = counts.get(task_id, 0) + 1
    assert sum(counts.values()) == total
    return counts


def set_row(service: TaskQueueService, task_id: int, **values: object) -> None:
    """Change the row by hand, once the job ids of the service's puts are written (as they are long before a
    task could get into the states these tests make up)."""
    service.dispatch.job_ids.flush()
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(**values))


def ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=seconds)


def test_a_task_queued_while_beanstalkd_was_down_is_pending_then_sent_once(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    beanstalkd.stop()
    with pytest.warns(TaskPendingWarning) as caught:
        task_id = service.queue_task(TASK)
    assert caught[0].message.task_id == task_id  # type: ignore[union-attr]
    row = service.find_task(task_id)
    assert (row.status, row.job_id) == (Status.NEW, None)

    beanstalkd.start()
    young = reconcile(service.dispatch, min_age=30)
    assert (young.checked, young.sent_again) == (0, 0)  # its put may still be in flight: left alone
    report = reconcile(service.dispatch, min_age=0)
    assert (report.checked, report.alive, report.sent_again, report.stalled) == (1, 0, 1, 0)
    assert live_jobs_of(beanstalkd) == {task_id: 1}
    again = reconcile(service.dispatch, min_age=0)
    assert (again.checked, again.alive, again.sent_again) == (1, 1, 0)
    assert live_jobs_of(beanstalkd) == {task_id: 1}


def test_after_a_restart_without_binlog_every_waiting_task_is_sent_again_even_when_job_ids_are_reused(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    lost = [service.queue_task(TASK) for _ in range(3)]
    beanstalkd.stop()
    beanstalkd.start()
    service.beanstalkd.close()
    # Job ids start again from 1: this task's job gets the id the first lost task's row still names.
    fresh = service.queue_task(TASK)
    assert service.find_task(fresh).job_id == service.find_task(lost[0]).job_id

    report = reconcile(service.dispatch, min_age=0)
    assert (report.checked, report.alive, report.sent_again) == (4, 1, 3)
    assert live_jobs_of(beanstalkd) == {task_id: 1 for task_id in [*lost, fresh]}


def test_a_working_task_whose_job_and_worker_are_gone_is_stalled_and_sent_again(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    stale, fresh = service.queue_task(TASK, ttr=3), service.queue_task(TASK, ttr=3)
    for task_id in (stale, fresh):
        set_row(service, task_id, status="working", attempts=1, worker="gone:1", job_id=999,
                heartbeat=ago(60 if task_id == stale else 0))
    with greenstalk.Client(beanstalkd.address, encoding=None, watch="pheanq") as client:
        for _ in range(2):
            client.delete(client.reserve(timeout=1))

    dry = reconcile(service.dispatch, dry_run=True, min_age=0)
    assert (dry.checked, dry.stalled) == (1, 1)
    assert service.find_task(stale).status is Status.WORKING  # a dry run changes nothing

    report = reconcile(service.dispatch, min_age=0)
    assert (report.checked, report.stalled, report.sent_again) == (1, 1, 0)
    row = service.find_task(stale)
    assert row.status is Status.STALLED and row.job_id != 999
    assert "stalled: its job is gone" in (row.log or "")
    assert service.find_task(fresh).status is Status.WORKING  # its holder still renews its lease
    assert live_jobs_of(beanstalkd) == {stale: 1}


def test_a_stale_working_task_whose_job_is_still_there_is_left_to_the_worker_that_gets_the_job(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TASK, ttr=3)
    set_row(service, task_id, status="working", attempts=1, heartbeat=ago(60))
    report = reconcile(service.dispatch, min_age=0)
    assert (report.checked, report.alive, report.stalled) == (1, 1, 0)
    assert service.find_task(task_id).status is Status.WORKING


def test_one_reconciler_at_a_time_across_machines_and_a_dead_holders_lock_expires(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service, other = make_service(db_url), make_service(db_url)
    other.dispatch.worker_name = "other-host:1"
    beanstalkd.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskPendingWarning)
        task_id = service.queue_task(TASK)
    beanstalkd.start()

    assert other.store.admin.take_lock(LOCK_NAME, other.dispatch.worker_name, 60)
    blocked = reconcile(service.dispatch, min_age=0)
    assert blocked.locked_by is not None and blocked.locked_by.startswith("other-host:1")
    assert "another reconciler is running" in blocked.summary()
    assert service.find_task(task_id).job_id is None

    with service.store.database.transaction() as conn:
        conn.execute(sa.text("UPDATE pheanq_lock SET expires = :t"), {"t": ago(1)})
    assert reconcile(service.dispatch, min_age=0).sent_again == 1
    assert service.store.admin.take_lock(LOCK_NAME, "third:1", 60)  # freed at the end of the pass


def test_pheanq_reconcile_on_the_command_line(sqlite_url: str, tmp_path: Path, beanstalkd: Beanstalkd,
                                             make_service: Callable[..., TaskQueueService]) -> None:
    service = make_service(sqlite_url)
    beanstalkd.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskPendingWarning)
        task_id = service.queue_task(TASK, tube="mail")
    beanstalkd.start()
    write_config(tmp_path)
    env = {"PHEANQ_DATABASE_URL": sqlite_url, "PHEANQ_BEANSTALKD": beanstalkd.address_text,
           "PHEANQ_CONFIG": str(tmp_path / "pheanq.toml")}

    dry = pheanq(["reconcile", "--dry-run", "--min-age", "0"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert f"task {task_id} (new, job None): job gone; would send it again" in dry.stdout
    assert "dry run: checked 1 task(s)" in dry.stdout

    other_tube = pheanq(["reconcile", "--use-tube", "default", "--min-age", "0"], env, tmp_path)
    assert "checked 0 task(s)" in other_tube.stdout

    done = pheanq(["reconcile", "--use-tube", "mail", "--min-age", "0"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sent again 1 (0 of them stalled)" in done.stdout
    assert live_jobs_of(beanstalkd, "mail") == {task_id: 1}

    bad = pheanq(["reconcile", "--min-age", "-1"], env, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--min-age" in bad.stderr


def test_a_worker_tender_reconciles_its_tube_on_its_own(
    sqlite_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_env: Callable[..., dict[str, str]],
    make_service: Callable[..., TaskQueueService],
) -> None:
    service = make_service(sqlite_url)
    beanstalkd.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskPendingWarning)
        task_id = service.queue_task(TaskDescription("work", []))
    beanstalkd.start()
    set_row(service, task_id, modified=ago(120))  # older than --min-age: no put of its own can be in flight
    write_config(tmp_path, commands={"work": ["/bin/true"]})
    # The tender's worker waits for `go` before it starts: a worker that claimed the re-sent job before the
    # reconciler noted it would make that pass count the task as "moved on", and log nothing.
    go = tmp_path / "go"
    # The shell polls for `go` (the test's own deadline bounds the wait), then becomes the worker.
    worker = f"sh -c 'until [ -e {go} ]; do sleep 0.05; done; exec {sys.executable} -m pheanq task-worker \"$@\"' w"
    tender = TenderProcess(["--min-workers", "1", "--max-workers", "1", "--spare-workers", "0",
                            "--reconcile-interval", "0.5", "--worker-command", worker],
                           {**make_env(sqlite_url), "PHEANQ_RUN_DIR": str(tmp_path / "run")}, tmp_path)
    try:
        wait_for(lambda: "reconciled tube pheanq" in tender.log, 20, "the tender's reconciler to send the task")
        go.touch()
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 20,
                 f"the re-sent task done; log:\n{tender.log[-3000:]}")
    finally:
        tender.stop()


def test_after_a_restart_a_young_task_whose_put_was_done_is_sent_again_but_one_that_may_be_mid_put_waits(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    sent = service.queue_task(TASK)  # put, and its job id recorded: lost in the restart
    beanstalkd.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskPendingWarning)
        pending = service.queue_task(TASK)  # no job id: as far as anyone can tell, its put may be in flight
    beanstalkd.start()
    assert service.find_task(pending).job_id is None

    assert reconcile(service.dispatch, min_age=60).checked == 0  # a plain pass leaves both young ones alone
    report = reconcile(service.dispatch, min_age=60, after_restart=True)
    assert (report.checked, report.alive, report.sent_again) == (1, 0, 1)
    assert live_jobs_of(beanstalkd) == {sent: 1}
    assert service.find_task(pending).job_id is None


def test_after_a_restart_a_task_changed_since_the_server_started_is_left_to_the_plain_passes(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    """A tender's first look owes a pass (the server may have restarted unseen); under load that pass would send
    again tasks whose jobs workers just deleted. A task changed after the server's start cannot have lost its
    job to that start."""
    service = make_service(db_url)
    before = service.queue_task(TASK)
    service.dispatch.job_ids.flush()
    started = utc_now()
    after = service.queue_task(TASK)
    service.dispatch.job_ids.flush()
    beanstalkd.stop()
    beanstalkd.start()  # both jobs lost (no binlog)
    service.dispatch.beanstalkd.close()  # its connection went with the old run
    report = reconcile(service.dispatch, min_age=60, after_restart=True, restarted_at=started)
    assert (report.checked, report.sent_again) == (1, 1)
    assert live_jobs_of(beanstalkd) == {before: 1}
    # The plain pass takes the other once it is older than min_age.
    report = reconcile(service.dispatch, min_age=0)
    assert report.sent_again == 1 and live_jobs_of(beanstalkd) == {before: 1, after: 1}


def test_a_server_identity_tells_a_restarted_beanstalkd_from_the_same_one() -> None:
    seen = ServerIdentity("a1", 100, 50, 7)
    assert not ServerIdentity("a1", 100, 52, 9).restarted_since(seen)
    assert ServerIdentity("b2", 100, 52, 9).restarted_since(seen)   # a new id (beanstalkd 1.10 and later)
    assert ServerIdentity("", 101, 52, 9).restarted_since(ServerIdentity("", 100, 50, 7))   # a new pid
    assert ServerIdentity("", 100, 3, 9).restarted_since(ServerIdentity("", 100, 50, 7))    # uptime went back
    assert ServerIdentity("", 100, 52, 1).restarted_since(ServerIdentity("", 100, 50, 7))   # its counter too


def test_a_tender_reconciles_at_once_when_beanstalkd_restarts_without_binlog_and_work_resumes_within_2s(
    db_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_env: Callable[..., dict[str, str]],
    make_service: Callable[..., TaskQueueService],
) -> None:
    service = make_service(db_url)
    write_config(tmp_path, commands={"work": ["/bin/true"]})
    # A junk job buried with its reason recorded, which the restart loses: the tender forgets its record.
    with greenstalk.Client(beanstalkd.address, encoding=None, use="pheanq") as client:
        client.put(b"junk")
    assert claims(service).reserve_task("pheanq", timeout=0) is None
    assert len(service.store.admin.list_buried(service.beanstalkd.server, "pheanq")) == 1
    # The tender's worker waits for `go` before it starts, so that the tasks' jobs wait in beanstalkd.
    go = tmp_path / "go"
    # The shell polls for `go` (the test's own deadline bounds the wait), then becomes the worker.
    worker = f"sh -c 'until [ -e {go} ]; do sleep 0.02; done; exec {sys.executable} -m pheanq task-worker \"$@\"' w"
    # The default --reconcile-interval (30 s) and --min-age (20 s): only the restart explains a quick return.
    tender = TenderProcess(["--min-workers", "1", "--max-workers", "1", "--spare-workers", "0",
                            "--worker-command", worker],
                           {**make_env(db_url), "PHEANQ_RUN_DIR": str(tmp_path / "run")}, tmp_path)
    try:
        task_ids = [service.queue_task(TaskDescription("work", [n])) for n in range(3)]
        wait_for(lambda: "watching beanstalkd at" in tender.log, 15, f"the tender's watch; log:\n{tender.log}")
        beanstalkd.stop(signal.SIGKILL)  # in memory: every job is gone
        go.touch()
        # The worker finds beanstalkd away and keeps trying: an outage of a few tries, not of a fixed time.
        wait_for(lambda: tender.log.count("is unreachable") >= 4, 15, f"the worker's tries; log:\n{tender.log}")
        back = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # just before: the figure is an upper bound
        beanstalkd.start()
        wait_for(lambda: all(service.status_of(task_id) is Status.DONE for task_id in task_ids), 20,
                 f"the lost tasks done; log:\n{tender.log[-3000:]}")
        starts = [service.find_task(task_id).started for task_id in task_ids]
        took = min((started - back).total_seconds() for started in starts if started is not None)
        print(f"\nthe first lost task started {took:.2f}s after beanstalkd came back")
        assert took < 2.0, tender.log[-3000:]
        assert "restarted" in tender.log and "reconciling now" in tender.log
        wait_for(lambda: service.store.admin.list_buried(service.beanstalkd.server, "pheanq") == [], 5,
                 "the lost buried job's record forgotten")
    finally:
        tender.stop()


def test_a_tender_that_starts_after_beanstalkd_lost_its_jobs_sends_them_again_at_its_first_look(
    sqlite_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_env: Callable[..., dict[str, str]],
    make_service: Callable[..., TaskQueueService],
) -> None:
    service = make_service(sqlite_url)
    write_config(tmp_path, commands={"work": ["/bin/true"]})
    task_id = service.queue_task(TaskDescription("work", []))
    beanstalkd.stop()
    beanstalkd.start()  # no binlog: the job is gone, and no tender saw the server before
    # The default --reconcile-interval (30 s) and --min-age (20 s).
    tender = TenderProcess(["--min-workers", "1", "--max-workers", "1", "--spare-workers", "0"],
                           {**make_env(sqlite_url), "PHEANQ_RUN_DIR": str(tmp_path / "run")}, tmp_path)
    try:
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 10,
                 f"the lost task done; log:\n{tender.log[-3000:]}")
    finally:
        tender.stop()


def test_a_task_whose_stored_description_cannot_be_read_does_not_stop_the_reconciler(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    """A row pheanq cannot read back (written by hand, or by a producer that got past its checks) used to stop
    every pass at that row: no later task of the table was sent again, however long beanstalkd had lost
    their jobs."""
    service = make_service(db_url)
    broken = service.queue_task(TaskDescription("work", ["broken"]))
    lost = service.queue_task(TaskDescription("work", ["lost"]))
    for task_id in (broken, lost):
        job_id = service.find_task(task_id).job_id
        assert job_id is not None
        service.beanstalkd.delete(job_id)  # beanstalkd lost both jobs
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == broken).values(data="{not json"))
    lost_job = service.find_task(lost).job_id

    result = pheanq(["reconcile", "--min-age", "0"], make_env(db_url), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 task(s) not sent: their stored description cannot be read" in result.stdout
    assert service.find_task(lost).job_id not in (None, lost_job)
