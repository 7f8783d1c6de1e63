"""queue_many's puts in one round trip (BeanstalkdConnection.put_many): every job reaches the server with its own
body, priority and delay and its id reaches its row; a job the server refuses takes back only its own task; a
server that is gone leaves the whole chunk pending, and the reconciler sends each task once. Real beanstalkd
(one started with a small -z), real databases.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator

import greenstalk
import pytest
import sqlalchemy as sa
from support import Beanstalkd, jobs_per_task, settings_for

from pheanq import InvalidInput, Status, TaskDescription, TaskPendingWarning
from pheanq.beanstalkd.connection import PIPELINED_PUTS, BeanstalkdConnection, JobToPut
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]


def rows(service: TaskQueueService) -> dict[int, tuple[str, int | None]]:
    service.dispatch.job_ids.flush()
    with service.store.database.transaction() as conn:
        return {int(row.id): (row.status, row.job_id)
                for row in conn.execute(sa.select(task_table.c.id, task_table.c.status, task_table.c.job_id))}


def test_more_puts_than_one_write_holds_each_reach_the_server_in_order_with_their_own_values(
    beanstalkd: Beanstalkd,
) -> None:
    connection = BeanstalkdConnection(beanstalkd.address)
    jobs = [JobToPut(f"job {n}".encode(), 100 + n, 60 if n % 7 == 0 else 0, 30) for n in range(PIPELINED_PUTS + 250)]
    try:
        answers = connection.put_many("pipelined", jobs)
        assert connection.put("pipelined", b"after", 1, 0, 30) > 0  # the connection is in step afterwards
    finally:
        connection.close()
    ids = [answer for answer in answers if isinstance(answer, int)]
    assert len(ids) == len(jobs) and ids == sorted(ids)
    with greenstalk.Client(beanstalkd.address, encoding=None) as client:
        for job, job_id in zip(jobs, answers, strict=True):
            assert isinstance(job_id, int)
            stats = client.stats_job(job_id)
            assert (client.peek(job_id).body, stats["pri"], stats["state"]) == \
                (job.body, job.priority, "delayed" if job.delay else "ready")


@pytest.fixture
def small_beanstalkd() -> Iterator[Beanstalkd]:
    server = Beanstalkd(max_job_size=400).start()
    yield server
    server.stop()


def test_a_job_too_big_for_the_server_takes_back_only_its_task_and_the_others_of_the_chunk_are_sent(
    db_url: str, small_beanstalkd: Beanstalkd,
) -> None:
    service = TaskQueueService(settings_for(db_url, small_beanstalkd, commands={"work": ["/bin/true"]}))
    try:
        small, big = TaskDescription("work", ["x"]), TaskDescription("work", ["x" * 600])
        with pytest.raises(InvalidInput, match=r"refused the job\(s\) of 2 task\(s\) as too big"):
            service.queue_many([small, big, small, big, small])
        found = rows(service)
        assert len(found) == 3 and all(status == Status.NEW.value and job_id for status, job_id in found.values())
        assert jobs_per_task(small_beanstalkd) == {task_id: 1 for task_id in found}
    finally:
        service.close()


def test_a_server_gone_leaves_the_chunk_pending_and_the_reconciler_sends_each_task_once(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    service.queue_task(TaskDescription("work", [0]))  # the connection is open when the server goes
    beanstalkd.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = service.queue_many([TaskDescription("work", [n]) for n in range(1, 21)])
    pending = [w.message for w in caught if isinstance(w.message, TaskPendingWarning)]
    assert len(pending) == 1 and "20 task(s) of this chunk are pending" in str(pending[0])
    assert {rows(service)[task_id] for task_id in ids} == {(Status.NEW.value, None)}
    beanstalkd.start()
    assert reconcile(service.dispatch, min_age=0).sent_again == 21  # and the first task's, lost with the server
    counts = jobs_per_task(beanstalkd)
    assert {task_id: counts.get(task_id) for task_id in ids} == {task_id: 1 for task_id in ids}
    with greenstalk.Client(beanstalkd.address, encoding=None) as client:
        for task_id in ids:
            job_id = rows(service)[task_id][1]
            assert job_id is not None and json.loads(client.peek(job_id).body)["task_id"] == task_id

