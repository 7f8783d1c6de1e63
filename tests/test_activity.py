"""The overview's series on every database: tasks ended per bucket land in the bucket of their end, by status and
tube; the queue waits' percentiles are those of the tasks' own times; the oldest waiting task is the one ready the
longest whose time to run has come."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa
from support import finish_next

from pheanq import Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.ops.activity import WINDOWS, activity, oldest_waiting
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]


def _set_times(service: TaskQueueService, task_id: int, created: dt.datetime, started: dt.datetime,
               finished: dt.datetime | None) -> None:
    with service.store.database.transaction() as conn:
        conn.execute(sa.update(task_table).where(task_table.c.id == task_id).values(
            created=created, started=started, finished=finished))


def test_ends_land_in_their_minute_by_status_and_tube_with_their_waits(db_url: str,
                                                                         make_service: MakeService) -> None:
    service = make_service(db_url)
    now = utc_now()
    minute = now.replace(second=0, microsecond=0)
    plan = [("billing", Status.DONE, 5, 2.0), ("billing", Status.DONE, 5, 4.0), ("billing", Status.FAILED, 5, 6.0),
            ("billing", Status.DONE, 30, 8.0), ("mail", Status.DONE, 5, 100.0), ("billing", Status.DONE, 90, 1.0)]
    for tube, status, minutes_ago, wait in plan:
        service.queue_task(TaskDescription("invoice", [1]), tube=tube)
        task_id = finish_next(service, tube, status)
        finished = minute - dt.timedelta(minutes=minutes_ago) + dt.timedelta(seconds=20)
        started = finished - dt.timedelta(seconds=1)
        _set_times(service, task_id, started - dt.timedelta(seconds=wait), started, finished)

    hour = activity(service.dispatch, WINDOWS["hour"])
    assert len(hour["times"]) == 60 and hour["times"][-1] >= minute.replace(tzinfo=dt.timezone.utc).timestamp()

    def bucket(minutes_ago: int) -> int:
        """The bucket of the ends `minutes_ago` minutes before `minute` (the window may have moved on a minute)."""
        start = (minute - dt.timedelta(minutes=minutes_ago)).replace(tzinfo=dt.timezone.utc).timestamp()
        return list(hour["times"]).index(start)

    five, thirty = bucket(5), bucket(30)
    assert [i for i, n in enumerate(hour["done"]) if n] == [thirty, five]
    assert hour["done"][five] == 3 and hour["done"][thirty] == 1 and sum(hour["failed"]) == 1
    assert hour["failed"][five] == 1
    assert hour["wait_p50"][five] == 4.0 and hour["wait_p95"][five] == 100.0 and hour["wait_p50"][thirty + 1] is None
    billing = activity(service.dispatch, WINDOWS["hour"], "billing")
    five = list(billing["times"]).index(hour["times"][five])
    assert billing["done"][five] == 2 and billing["wait_p95"][five] == 6.0
    day = activity(service.dispatch, WINDOWS["day"])
    assert sum(day["done"]) == 5 and sum(day["failed"]) == 1 and len(day["times"]) == 96


def test_the_oldest_waiting_task_is_the_longest_ready_one_whose_time_has_come(db_url: str,
                                                                              make_service: MakeService) -> None:
    service = make_service(db_url)
    now = utc_now()
    first = service.queue_task(TaskDescription("invoice", [1]), tube="billing")
    service.queue_task(TaskDescription("invoice", [2]), tube="billing")
    later = service.queue_task(TaskDescription("invoice", [3]), tube="billing", delay=3600)
    with service.store.database.transaction() as conn:
        conn.execute(sa.update(task_table).where(task_table.c.id == first).values(
            modified=now - dt.timedelta(seconds=600)))
        conn.execute(sa.update(task_table).where(task_table.c.id == later).values(
            modified=now - dt.timedelta(seconds=7200)))

    def counts() -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for tube, status, n in service.store.tasks.count_tasks():
            found.setdefault(tube, {})[status.value] = n
        return {**found, "mail": {}}

    ages = oldest_waiting(service.dispatch, counts())
    assert set(ages) == {"billing"} and 600 <= ages["billing"] < 660
    finish_next(service, "billing", Status.DONE)
    assert oldest_waiting(service.dispatch, counts())["billing"] < 60
