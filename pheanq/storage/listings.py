"""Task listings: the tasks a filter selects, newest first, one keyset page at a time (`pheanq tasks`), and the
ids of all of them in pages, for the actions on a whole selection (pheanq.ops.selection).

A page is `id < before_id ORDER BY id DESC LIMIT n`: each page starts where the last one ended, whatever was
inserted or deleted meanwhile, so no task is listed twice or skipped, and a page costs the same at any depth.
Which index serves a filter: `(tube, status)`, `(status, finished)`, `(batch_id, status)`, the pending
`(status, id)` and the primary key; the created range, the unique key and the text match have no index of
their own and are checked on the rows the other conditions leave.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa

from pheanq.python_call import PREFIX as PYTHON_PREFIX
from pheanq.status import PENDING, Status
from pheanq.storage.engine import Database
from pheanq.storage.tables import PENDING_ROW, BatchRow, batch_table, dependency_table, task_table

_c = task_table.c


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    """Which tasks a listing or a bulk action selects: every condition given must hold (none: every task).

    Times are naive UTC, as the table keeps them; `after` bounds are inclusive, `before` bounds exclusive."""

    statuses: tuple[Status, ...] = ()
    tubes: tuple[str, ...] = ()
    # Registered command names or Python task names: a name matches a task whose command is the name itself
    # or the name of a Python task (`py:` and the name, see pheanq.python_call).
    commands: tuple[str, ...] = ()
    batch_id: int | None = None
    unique_key: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    finished_after: dt.datetime | None = None
    finished_before: dt.datetime | None = None
    # A text the task's stored description (the JSON of the `data` column) contains, ignoring case (on
    # SQLite, the case of ASCII letters only).
    match: str | None = None

    def conditions(self) -> list[Any]:
        """The filter as SQL conditions on pheanq_task."""
        found: list[Any] = []
        if self.statuses:
            found.append(_c.status.in_(sorted(status.value for status in self.statuses)))
            if set(self.statuses) <= PENDING:
                # Word for word the condition of the partial index ix_pheanq_task_pending, so SQLite may read it.
                found.append(PENDING_ROW)
        if self.tubes:
            found.append(_c.tube.in_(sorted(self.tubes)))
        if self.commands:
            found.append(_c.command.in_(sorted({*self.commands, *(PYTHON_PREFIX + name for name in self.commands)})))
        if self.batch_id is not None:
            found.append(_c.batch_id == self.batch_id)
        if self.unique_key is not None:
            found.append(_c.unique_key == self.unique_key)
        for column, after, before in ((_c.created, self.created_after, self.created_before),
                                      (_c.finished, self.finished_after, self.finished_before)):
            if after is not None:
                found.append(column >= after)
            if before is not None:
                found.append(column < before)
        if self.match is not None:
            found.append(_c.data.icontains(self.match, autoescape=True))
        return found


@dataclasses.dataclass(frozen=True)
class ListedTask:
    """A task as a listing shows it: what tells it apart, not its description or log."""

    id: int
    status: Status
    tube: str
    command: str
    attempts: int
    exit_code: int | None
    created: dt.datetime
    finished: dt.datetime | None
    batch_id: int | None
    unique_key: str | None


_LISTED = [_c.id, _c.status, _c.tube, _c.command, _c.attempts, _c.exit_code, _c.created, _c.finished, _c.batch_id,
           _c.unique_key]


class ListingStatements:
    """The reads of a selection of tasks."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def list_tasks(self, where: TaskFilter, before_id: int | None, limit: int) -> list[ListedTask]:
        """At most `limit` of the selected tasks, newest (highest id) first, those with an id below `before_id`
        when given."""
        query = self._newest_first(sa.select(*_LISTED), where, before_id, limit)
        with self.database.transaction() as conn:
            return [ListedTask(**{**found, "status": Status(found["status"])})
                    for found in conn.execute(query).mappings()]

    def task_ids(self, where: TaskFilter, before_id: int | None, limit: int) -> list[int]:
        """The ids of at most `limit` of the selected tasks, highest first, below `before_id` when given."""
        query = self._newest_first(sa.select(_c.id), where, before_id, limit)
        with self.database.transaction() as conn:
            return [int(task_id) for task_id in conn.execute(query).scalars()]

    def count_tasks(self, where: TaskFilter) -> int:
        """How many tasks the filter selects (it reads each of them: for a question asked once, not a page)."""
        with self.database.transaction() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(task_table)
                                    .where(*where.conditions())).scalar_one())

    @staticmethod
    def _newest_first(query: Any, where: TaskFilter, before_id: int | None, limit: int) -> Any:
        query = query.where(*where.conditions())
        if before_id is not None:
            query = query.where(_c.id < before_id)
        return query.order_by(_c.id.desc()).limit(limit)


@dataclasses.dataclass(frozen=True)
class TaskLinks:
    """What a task is tied to by dependencies: the tasks it waits for (and whether each is done) and those
    waiting for it. (A batch's callbacks are the batch's then/catch/finally ids.)"""

    parents: list[tuple[int, bool]]
    children: list[int]


class WorkflowListings:
    """The reads of the dashboard's batch list and of a task's links."""

    LINKS_SHOWN = 100

    def __init__(self, database: Database) -> None:
        self.database = database

    def list_batches(self, before_id: int | None, limit: int) -> list[BatchRow]:
        """At most `limit` batches, newest first, those with an id below `before_id` when given."""
        query = sa.select(batch_table).order_by(batch_table.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(batch_table.c.id < before_id)
        with self.database.transaction() as conn:
            return [BatchRow(**dict(row)) for row in conn.execute(query).mappings()]

    def links_of(self, task_id: int) -> TaskLinks:
        d = dependency_table.c
        with self.database.transaction() as conn:
            parents = conn.execute(sa.select(d.parent_id, d.satisfied).where(d.task_id == task_id)
                                   .order_by(d.parent_id).limit(self.LINKS_SHOWN)).all()
            children = conn.execute(sa.select(d.task_id).where(d.parent_id == task_id)
                                    .order_by(d.task_id).limit(self.LINKS_SHOWN)).scalars().all()
        return TaskLinks([(int(parent), bool(done)) for parent, done in parents], [int(i) for i in children])
