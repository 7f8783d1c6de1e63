"""Deleting chosen tasks that have ended (the dashboard's delete): a page of ids at a time, each row checked again
in the statement that deletes it."""

from __future__ import annotations

import sqlalchemy as sa

from pheanq.status import Status
from pheanq.storage.engine import Database, any_of
from pheanq.storage.tables import batch_table, dependency_table, task_table

# Statuses a task may be deleted in: it has ended and no job of it is left to run. (restarted, retrying and the
# pending statuses still have a job; a running task is cancelled first.)
DELETABLE = (Status.DONE, Status.FAILED, Status.CANCELLED, Status.UPSTREAM_FAILED)


class RemovalStatements:
    """The delete of a page of ended tasks."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def delete_ended(self, task_ids: list[int]) -> int:
        """Delete those of `task_ids` that have ended, except those a batch still running counts and those a
        waiting task has not yet counted off (as task-cleanup spares them); how many were deleted."""
        c, b, d = task_table.c, batch_table.c, dependency_table.c
        running_batch = sa.select(b.id).where(b.id == c.batch_id, b.finished.is_(None)).exists()
        awaited = sa.select(d.task_id).where(d.parent_id == c.id, d.satisfied == sa.false()).exists()
        with self.database.transaction() as conn:
            deleted = int(conn.execute(task_table.delete().where(
                c.id.in_(task_ids), any_of(c.status, [status.value for status in DELETABLE]), ~running_batch,
                ~awaited)).rowcount)
            # A deleted task no longer holds up, or satisfies, anything: its own dependency rows go with it.
            conn.execute(dependency_table.delete().where(d.task_id.in_(task_ids),
                                                         ~sa.select(c.id).where(c.id == d.task_id).exists()))
            return deleted
