"""Job ids noted on their tasks after the put, many at once: the statements behind pheanq.dispatch.job_ids (the ids
of `queue_task` and `queue_many`) and behind a page of regenerated tasks (pheanq.storage.restarts).

An id is noted only on a row still in the status it was put in (`new`, or `restarted`) with no job id, so a late
write never replaces a newer id nor lands on a task that moved on. A group is one statement on the server databases:
PyMySQL sends an executemany of UPDATEs one at a time, a round trip each, and the ids of a queue_many of 20,000 tasks
took longer to write than the tasks took to queue.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq.limits import PAGE_SIZE
from pheanq.status import Status
from pheanq.storage.tables import task_table

_c = task_table.c


def note_job_ids(conn: Connection, pairs: list[tuple[int, int]], status: Status) -> None:
    """Note (task id, job id) pairs on `conn`, each on a row still `status` with no job id."""
    if not pairs:
        return
    if conn.dialect.name == "sqlite":  # in-process: an executemany costs no round trip
        conn.execute(_one_at_a_time(status), [{"task": task_id, "job": job_id} for task_id, job_id in pairs])
        return
    if conn.dialect.name == "postgresql":
        # One statement for them all, over two arrays: its text never changes, so it is prepared once.
        conn.execute(_from_arrays(status), {"tasks": [task_id for task_id, _ in pairs],
                                            "jobs": [job_id for _, job_id in pairs]})
        return
    for start in range(0, len(pairs), PAGE_SIZE):
        page = dict(pairs[start:start + PAGE_SIZE])
        conn.execute(task_table.update()
                     .where(_c.id.in_(list(page)), _c.status == status.value, _c.job_id.is_(None))
                     .values(job_id=sa.case(page, value=_c.id)))


@functools.cache
def _one_at_a_time(status: Status) -> Any:
    return (task_table.update()
            .where(_c.id == sa.bindparam("task"), _c.status == status.value, _c.job_id.is_(None))
            .values(job_id=sa.bindparam("job")))


@functools.cache
def _from_arrays(status: Status) -> Any:
    """PostgreSQL: the pairs of two arrays (task ids, job ids), in one statement."""
    from sqlalchemy.dialects.postgresql import ARRAY  # lazy: the dialect of the database in use only

    pairs = sa.select(sa.func.unnest(sa.bindparam("tasks", type_=ARRAY(sa.BigInteger()))).label("task"),
                      sa.func.unnest(sa.bindparam("jobs", type_=ARRAY(sa.BigInteger()))).label("job")).subquery()
    return (task_table.update()
            .where(_c.id == pairs.c.task, _c.status == status.value, _c.job_id.is_(None))
            .values(job_id=pairs.c.job))
