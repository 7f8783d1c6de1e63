"""Job ids written in groups, off the caller's path (pheanq.dispatch.job_ids): queue_task commits once per task,
the ids still reach every row (at once for this process's own reads, within moments otherwise, at close and at
exit), a late write never replaces a newer job id, and a producer killed before its ids were written loses
nothing and runs nothing twice. Real beanstalkd, real databases, real processes and a real SIGKILL.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import greenstalk
import pytest
import sqlalchemy as sa
from support import Beanstalkd, WorkerProcess, jobs_per_task, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.dispatch.job_ids import FLUSH_SECONDS
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.storage.tables import task_table

TASK = TaskDescription("work", [1])
MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def job_ids_on_rows(url: str) -> dict[int, int | None]:
    """task id -> job id, read through a store of its own (not the producer's)."""
    store = Store(url)
    try:
        with store.database.transaction() as conn:
            return {int(row.id): row.job_id for row in conn.execute(sa.select(task_table.c.id, task_table.c.job_id))}
    finally:
        store.close()


def test_queue_task_commits_once_on_the_callers_thread_and_every_job_id_is_written_soon_after(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    service.queue_task(TASK)  # the first connection, and the recorder's thread, exist before counting
    commits: list[int] = []
    sa.event.listen(service.store.database.engine, "commit", lambda _conn: commits.append(threading.get_ident()))
    task_ids = [service.queue_task(TASK) for _ in range(30)]
    caller = threading.get_ident()
    assert commits.count(caller) == 30  # the insert's commit only: no second commit for the job id
    wait_for(lambda: all(job_ids_on_rows(db_url)[task_id] is not None for task_id in task_ids), 5 + FLUSH_SECONDS,
             "every job id written by the recorder")
    assert len([thread for thread in commits if thread != caller]) < 30  # written in groups
    rows = job_ids_on_rows(db_url)
    with greenstalk.Client(beanstalkd.address, encoding=None) as client:
        for task_id in task_ids:
            job_id = rows[task_id]
            assert job_id is not None
            assert json.loads(client.peek(job_id).body)["task_id"] == task_id


def test_the_process_reads_its_own_job_ids_and_cancels_a_just_queued_task_with_its_job(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(TASK)
    assert service.find_task(task_id).job_id is not None
    follower = service.queue_task(TASK)
    assert service.cancel_task(follower, by="bob").cancelled
    assert jobs_per_task(beanstalkd) == {task_id: 1}  # the cancelled task's job is deleted at once, not left behind


def test_a_late_job_id_never_replaces_a_newer_one_nor_lands_on_a_task_that_moved_on(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    sent, claimed, cancelled = (service.queue_task(TASK) for _ in range(3))
    service.dispatch.job_ids.flush()
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == claimed)
                     .values(status=Status.WORKING.value, job_id=777))
        conn.execute(task_table.update().where(task_table.c.id == cancelled)
                     .values(status=Status.CANCELLED.value, job_id=None))
    before = job_ids_on_rows(db_url)
    service.store.tasks.record_job_ids([(sent, 901), (claimed, 902), (cancelled, 903)])
    assert job_ids_on_rows(db_url) == before
    assert before[claimed] == 777 and before[cancelled] is None and before[sent] not in (None, 901)


def test_close_and_the_interpreters_exit_write_what_is_left(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd, tmp_path: Path,
) -> None:
    service = make_service(db_url)
    task_ids = [service.queue_task(TASK) for _ in range(50)]
    service.close()
    assert [job_ids_on_rows(db_url)[task_id] is not None for task_id in task_ids] == [True] * 50

    script = tmp_path / "queue_and_exit.py"
    script.write_text(textwrap.dedent(QUEUE_THEN) + "sys.exit(0)  # no close: the exit writes the ids\n")
    child = subprocess.run([sys.executable, str(script), db_url, beanstalkd.address_text, "50"], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""
    queued = [int(line) for line in child.stdout.split()]
    rows = job_ids_on_rows(db_url)
    assert len(queued) == 50 and all(rows[task_id] is not None for task_id in queued)


QUEUE_THEN = """
    import os, signal, sys
    from pheanq import TaskDescription, TaskQueueService, load_settings

    database_url, beanstalkd, count = sys.argv[1:]
    service = TaskQueueService(load_settings({"database_url": database_url, "beanstalkd": beanstalkd}, environ={}))
    for _ in range(int(count)):
        print(service.queue_task(TaskDescription("record", ["once"])), flush=True)
"""


def test_a_producer_killed_before_its_job_ids_were_written_loses_nothing_and_runs_nothing_twice(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    script = tmp_path / "queue_and_die.py"
    # A recorder that waits long: the kill surely comes before the ids are written, however loaded the machine.
    script.write_text("import pheanq.dispatch.job_ids as job_ids; job_ids.FLUSH_SECONDS = 60\n"
                      + textwrap.dedent(QUEUE_THEN) + "os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, str(script), db_url, beanstalkd.address_text, "40"], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == -9, child.stderr
    queued = [int(line) for line in child.stdout.split()]
    assert len(queued) == 40
    unwritten = [task_id for task_id, job_id in job_ids_on_rows(db_url).items() if job_id is None]
    assert sorted(unwritten) == sorted(queued)
    assert jobs_per_task(beanstalkd) == {task_id: 1 for task_id in queued}

    service = make_service(db_url)
    # The reconciler cannot tell an unwritten id from a lost put: it sends those tasks again.
    assert reconcile(service.dispatch, min_age=0).sent_again == len(unwritten)
    assert sum(jobs_per_task(beanstalkd).values()) == 40 + len(unwritten)
    runs = tmp_path / "runs.txt"
    record = tmp_path / "record.py"
    record.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(os.environ["PHEANQ_TASK_ID"] + "\\n")
    """))
    write_config(tmp_path, commands={"record": [sys.executable, str(record), str(runs)]})
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    assert sorted(int(line) for line in runs.read_text().split()) == sorted(queued)  # each exactly once
    assert {service.find_task(task_id).status for task_id in queued} == {Status.DONE}
    assert jobs_per_task(beanstalkd) == {}  # the second jobs were refused by the claim and deleted


def test_the_ids_of_a_fast_bulk_enqueue_are_written_as_fast_as_they_come(
    db_url: str, make_service: MakeService, caplog: pytest.LogCaptureFixture,
) -> None:
    """20,000 tasks queued 500 at a time put their jobs faster than one statement a task can note their ids
    (PyMySQL sends an executemany of UPDATEs one by one): the ids are written a page a statement, so none is
    given up for falling behind (the recorder keeps at most 10,000 unwritten)."""
    service = make_service(db_url)
    with caplog.at_level(logging.WARNING, logger="pheanq.dispatch"):
        for _ in range(40):
            service.queue_many([TASK] * 500)
        service.close()
    assert not [record for record in caplog.records if "could not be written" in record.getMessage()]
    assert None not in set(job_ids_on_rows(db_url).values())
