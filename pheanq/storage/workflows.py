"""The statements for workflows: what a task's end sets in motion, dependencies, batches, cancel pages.

Everything a task's end
causes — its dependants released or failed, its unique key freed, its batch counted down and finished,
the batch's callbacks queued — happens in the same transaction as the end itself, so no crash can
leave a dependant waiting forever or a batch unfinished. Counters are changed with UPDATEs (which lock
the row and read its latest value on every database), never with a count read earlier, so two tasks
ending at once on two workers cannot both miss the moment their batch or their dependant is complete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq import tasklog
from pheanq.clock import utc_now
from pheanq.status import FAILURES, FINAL, PENDING, Status, sources_of
from pheanq.storage.engine import Database
from pheanq.storage.tables import BatchRow, TaskRow, batch_table, dependency_table, select_task, task_row, task_table

CALLBACKS = ("then", "catch", "finally")


@dataclasses.dataclass(frozen=True)
class Settled:
    """What a write set in motion: tasks now `new` whose jobs must be put, and jobs to delete."""

    released: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Cancelled:
    took: bool                # False: the task had ended (`row` says how)
    row: TaskRow              # as it was before the cancel took, or as it ended


@dataclasses.dataclass(frozen=True)
class CancelPage:
    """What one transaction of cancels did: each task's answer, and what their ends set in motion."""

    results: list[Cancelled]
    settled: Settled


@dataclasses.dataclass(frozen=True)
class CallbackTask:
    """A batch callback as stored on the batch row until it is queued."""

    command: str
    data: str
    tube: str
    priority: int
    ttr: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CallbackTask:
        return cls(**json.loads(text))


class WorkflowStatements:
    """Statements for dependencies, batches and cancel pages."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def settle_waiting(self, task_id: int) -> Settled:
        """Count down, for a `waiting` task, the tasks it waits for that are done; release it when none is
        left, or end it as `upstream_failed` when one of them failed or was cancelled. Run after the task
        is inserted (a parent may have ended meanwhile) and by the reconciler; idempotent."""
        d, c = dependency_table.c, task_table.c
        ends = Ends()
        with self.database.transaction() as conn:
            waits_for = list(conn.execute(sa.select(d.parent_id).where(d.task_id == task_id,
                                                                       d.satisfied == sa.false())).scalars())
            # Locking reads, in id order: a parent whose end is being written is waited for, then seen as it ended.
            statuses = {parent_id: Status(status) for parent_id, status in conn.execute(
                sa.select(c.id, c.status).where(c.id.in_(waits_for)).order_by(c.id).with_for_update(read=True))}
            for parent_id in waits_for:
                # A parent whose row is gone was deleted by task-cleanup, which deletes only done tasks.
                status = statuses.get(parent_id, Status.DONE)
                if status is Status.DONE:
                    ends.satisfy(conn, task_id, parent_id)
                elif status in FAILURES | {Status.CANCELLED}:
                    ends.fail_dependants(conn, [task_id], parent_id, status)
            ends.release_if_ready(conn, task_id)
            return ends.close(conn)

    def settleable_task_ids(self, after_id: int, limit: int, changed_before: dt.datetime) -> list[int]:
        """Waiting tasks (changed before `changed_before`) that wait for a task that has ended or is gone:
        those a write may have missed settling."""
        c, d = task_table.c, dependency_table.c
        parent = task_table.alias("parent")
        query = (sa.select(c.id).distinct()
                 .join(dependency_table, sa.and_(d.task_id == c.id, d.satisfied == sa.false()))
                 .outerjoin(parent, parent.c.id == d.parent_id)
                 .where(c.id > after_id, c.status == Status.WAITING.value, c.modified < changed_before,
                        sa.or_(parent.c.id.is_(None), parent.c.status.in_([s.value for s in FINAL])))
                 .order_by(c.id).limit(limit))
        with self.database.transaction() as conn:
            return list(conn.execute(query).scalars())

    def cancel_tasks(self, task_ids: list[int], by: str, batch: int | None = None) -> CancelPage:
        """Cancel, in one transaction, each of the tasks that has not ended (one that has, or that ends
        while this runs, is left as it is); a task that does not exist is left out of the answer.

        A `working` task is not ended here: the cancel is requested (`cancel_requested_by`), and its worker
        stops the command and ends the task (see TaskStatements._move_settled), so the attempt keeps its log
        entry and exit code, and work that completed before the stop is recorded as done."""
        c, d = task_table.c, dependency_table.c
        now = utc_now()
        ends = Ends()
        with self.database.transaction() as conn:
            # The page is locked row by row, by primary key and in id order, before anything is decided: what is
            # read is what is changed, and no index range of other tasks is locked.
            before = {row.id: row for row in (task_row(found) for found in conn.execute(
                sa.select(task_table).where(c.id.in_(task_ids)).order_by(c.id).with_for_update()).mappings())}
            cancellable = sorted(task_id for task_id, row in before.items()
                                 if row.status in sources_of(Status.CANCELLED) and row.status is not Status.WORKING)
            running = sorted(task_id for task_id, row in before.items() if row.status is Status.WORKING)
            took: list[int] = []
            if cancellable:
                still = c.status.in_([status.value for status in sources_of(Status.CANCELLED)
                                      if status is not Status.WORKING])
                conn.execute(task_table.update().where(c.id.in_(cancellable), still)
                             .values(status=Status.CANCELLED.value, finished=now, modified=now, unique_live=None,
                                     log=sa.func.coalesce(c.log, "") + tasklog.cancelled(by, now, batch)))
                # SQLite takes no row locks and reads before its first write outside the transaction: a task may
                # have changed between the read and the write. What this UPDATE changed is read back after it, by
                # primary key (a condition on the status could make a planner walk that status's index instead).
                took = sorted(task_id for task_id, status, modified in conn.execute(
                    sa.select(c.id, c.status, c.modified).where(c.id.in_(cancellable)))
                    if status == Status.CANCELLED.value and modified == now)
                # One that a worker claimed meanwhile is running now: its cancel is requested like the others'.
                for task_id in sorted(set(cancellable) - set(took)):
                    found = select_task(conn, task_id)
                    if found is not None and found.status is Status.WORKING:
                        before[task_id] = found
                        running.append(task_id)
            requested = []
            for task_id in running:
                row = before[task_id]
                if row.cancel_requested_by is not None or conn.execute(
                    task_table.update().where(c.id == task_id, c.status == Status.WORKING.value,
                                              c.attempts == row.attempts, c.cancel_requested_by.is_(None))
                    .values(cancel_requested_by=by, modified=now, log=sa.func.coalesce(c.log, "")
                            + tasklog.cancel_requested(by, now, row.worker, batch))
                ).rowcount == 1:
                    requested.append(task_id)
            for task_id in set(cancellable + running) - set(took + requested):
                before[task_id] = select_task(conn, task_id) or before[task_id]
            parents = set(conn.execute(sa.select(d.parent_id).where(d.parent_id.in_(took),
                                                                    d.satisfied == sa.false())).scalars())
            for task_id in took:
                ends.ended(conn, task_id, Status.CANCELLED, before[task_id].batch_id,
                           None if task_id in parents else [])
            settled = ends.close(conn)
        done = set(took + requested)
        return CancelPage([Cancelled(task_id in done, before[task_id]) for task_id in task_ids if task_id in before],
                          settled)

    def batch_task_ids(self, batch_id: int, after_id: int, limit: int, statuses: Sequence[Status]) -> list[int]:
        c = task_table.c
        with self.database.transaction() as conn:
            return list(conn.execute(
                sa.select(c.id).where(c.batch_id == batch_id, c.id > after_id,
                                      c.status.in_([s.value for s in statuses])).order_by(c.id).limit(limit)
            ).scalars())

    def create_batch(self, name: str | None, callbacks: dict[str, CallbackTask]) -> int:
        now = utc_now()
        values = {f"{which}_task": callback.to_json() for which, callback in callbacks.items()}
        with self.database.transaction() as conn:
            key = conn.execute(batch_table.insert().values(name=name, created=now, **values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def close_batch(self, batch_id: int, cancelled_by: str | None = None) -> Settled | None:
        """No more tasks join the batch; it finishes once they have all ended. None: no such batch."""
        b = batch_table.c
        ends = Ends()
        values: dict[str, Any] = {"closed": sa.func.coalesce(b.closed, utc_now())}
        if cancelled_by is not None:
            values["cancelled_by"] = sa.func.coalesce(b.cancelled_by, cancelled_by)
        with self.database.transaction() as conn:
            if conn.execute(batch_table.update().where(b.id == batch_id).values(**values)).rowcount == 0:
                return None
            ends.finish_batch_if_done(conn, batch_id)
            return ends.close(conn)

    def find_batch(self, batch_id: int) -> BatchRow | None:
        with self.database.transaction() as conn:
            found = conn.execute(sa.select(batch_table).where(batch_table.c.id == batch_id)).mappings().first()
        return None if found is None else BatchRow(**dict(found))

    def count_batch(self, batch_id: int) -> dict[Status, int]:
        """How many of the batch's tasks are in each status (from the index, not the rows)."""
        c = task_table.c
        with self.database.transaction() as conn:
            return {Status(status): int(n) for status, n in conn.execute(
                sa.select(c.status, sa.func.count()).where(c.batch_id == batch_id).group_by(c.status))}

    def unfinished_batch_ids(self) -> list[int]:
        """Closed batches not marked finished: the reconciler finishes those whose tasks have all ended."""
        b = batch_table.c
        with self.database.transaction() as conn:
            return list(conn.execute(sa.select(b.id).where(b.closed.is_not(None), b.finished.is_(None))).scalars())

    def recount_batch(self, batch_id: int) -> Settled:
        """Set the batch's counter of unfinished tasks from its rows, then finish it if they have all ended."""
        b, c = batch_table.c, task_table.c
        ends = Ends()
        pending = sa.select(sa.func.count()).where(c.batch_id == batch_id, c.status.in_([s.value for s in PENDING]))
        with self.database.transaction() as conn:
            # One statement: the count and the write see the same rows on every database.
            conn.execute(batch_table.update().where(b.id == batch_id).values(unfinished=pending.scalar_subquery()))
            ends.finish_batch_if_done(conn, batch_id)
            return ends.close(conn)


class Ends:
    """What the ends written in one transaction set in motion. Dependants are settled as each end is
    noted; batches are counted down once, at `close`, after every task row the transaction touches: a
    transaction holds a batch row's lock only at its very end, so two of them never wait on each other."""

    def __init__(self) -> None:
        self.released: list[int] = []
        self._batches: dict[int, list[Status]] = {}

    def ended(self, conn: Connection, task_id: int, status: Status, batch_id: int | None,
              children: list[int] | None = None) -> None:
        """Note the end of `task_id` (just written on `conn`, its unique key cleared with it) and settle what
        waits for it, level by level (a worklist, not recursion: a chain may be thousands of steps long);
        `children`: the tasks waiting for it, when already known."""
        work = [(task_id, status, batch_id, children)]
        while work:
            ended_id, ended_status, ended_batch, waiting = work.pop()
            if waiting is None:
                waiting = self._waiting_for(conn, ended_id)
            if ended_status is Status.DONE:
                for child in waiting:
                    self.satisfy(conn, child, ended_id)
                    self.release_if_ready(conn, child)
            else:
                for child, child_batch in self._fail(conn, waiting, ended_id, ended_status):
                    work.append((child, Status.UPSTREAM_FAILED, child_batch, None))
            if ended_batch is not None:
                self._batches.setdefault(ended_batch, []).append(ended_status)

    def close(self, conn: Connection) -> Settled:
        for batch_id in sorted(self._batches):
            self._count_down_batch(conn, batch_id, self._batches[batch_id])
        self._batches.clear()
        return Settled(self.released)

    def satisfy(self, conn: Connection, child: int, parent: int) -> None:
        """Count the done parent off the child's wait, once: the edge is flipped by compare-and-set."""
        d, c = dependency_table.c, task_table.c
        flipped = conn.execute(dependency_table.update().where(d.task_id == child, d.parent_id == parent,
                                                               d.satisfied == sa.false()).values(satisfied=True))
        if flipped.rowcount == 1:
            conn.execute(task_table.update().where(c.id == child).values(waiting_for=c.waiting_for - 1))

    def release_if_ready(self, conn: Connection, child: int) -> None:
        c = task_table.c
        if conn.execute(task_table.update().where(c.id == child, c.status == Status.WAITING.value,
                                                  c.waiting_for <= 0)
                        .values(status=Status.NEW.value, modified=utc_now())).rowcount == 1:
            self.released.append(child)

    def fail_dependants(self, conn: Connection, children: list[int], parent: int, why: Status) -> None:
        """End waiting tasks of a task that will never be done, and what waits for them in turn."""
        for child, batch_id in self._fail(conn, children, parent, why):
            self.ended(conn, child, Status.UPSTREAM_FAILED, batch_id)

    @staticmethod
    def _waiting_for(conn: Connection, parent: int) -> list[int]:
        d = dependency_table.c
        return list(conn.execute(sa.select(d.task_id).where(d.parent_id == parent, d.satisfied == sa.false())
                                 .order_by(d.task_id)).scalars())

    @staticmethod
    def _fail(conn: Connection, children: list[int], parent: int, why: Status) -> list[tuple[int, int | None]]:
        """Move the waiting ones of `children` to `upstream_failed`; (id, batch id) of each one moved."""
        c = task_table.c
        now = utc_now()
        entry = tasklog.not_run(parent, "was cancelled" if why is Status.CANCELLED else f"ended {why}", now)
        moved = []
        for child in sorted(children):
            if conn.execute(
                task_table.update().where(c.id == child, c.status == Status.WAITING.value)
                .values(status=Status.UPSTREAM_FAILED.value, finished=now, modified=now, unique_live=None,
                        log=sa.func.coalesce(c.log, "") + entry)
            ).rowcount == 1:
                moved.append((child, conn.execute(sa.select(c.batch_id).where(c.id == child)).scalar_one_or_none()))
        return moved

    def finish_batch_if_done(self, conn: Connection, batch_id: int) -> None:
        b = batch_table.c
        if conn.execute(batch_table.update().where(b.id == batch_id, b.closed.is_not(None), b.finished.is_(None),
                                                   b.unfinished <= 0).values(finished=utc_now())).rowcount == 0:
            return
        batch = _lock_batch(conn, batch_id)
        assert batch is not None
        # The counter, not the rows: a read of the rows could see an older snapshot, and task-cleanup deletes them.
        # A batch whose `catch` was queued has failed for good: a regenerate that makes every task done later
        # does not also run `then` (one batch gets one of the two).
        if batch.then_task is not None and batch.done == batch.total and batch.catch_id is None:
            self._queue_callback(conn, batch, "then")
        if batch.finally_task is not None:
            self._queue_callback(conn, batch, "finally")

    def _count_down_batch(self, conn: Connection, batch_id: int, statuses: list[Status]) -> None:
        b = batch_table.c
        failures = sum(status in FAILURES for status in statuses)
        done = sum(status is Status.DONE for status in statuses)
        conn.execute(batch_table.update().where(b.id == batch_id)
                     .values(unfinished=b.unfinished - len(statuses), failures=b.failures + failures,
                             done=b.done + done))
        if failures:
            batch = _lock_batch(conn, batch_id)
            if batch is not None and batch.catch_task is not None and batch.catch_id is None:
                self._queue_callback(conn, batch, "catch")
        self.finish_batch_if_done(conn, batch_id)

    def _queue_callback(self, conn: Connection, batch: BatchRow, which: str) -> None:
        callback = CallbackTask.from_json(getattr(batch, f"{which}_task"))
        now = utc_now()
        entry = tasklog.callback_queued(which, batch.id, now)
        key = conn.execute(task_table.insert().values(
            command=callback.command, data=callback.data, tube=callback.tube, status=Status.NEW.value,
            priority=callback.priority, ttr=callback.ttr, attempts=0, created=now, modified=now, log=entry,
            callback_of=batch.id)).inserted_primary_key
        assert key is not None
        conn.execute(batch_table.update().where(batch_table.c.id == batch.id).values({f"{which}_id": int(key[0])}))
        self.released.append(int(key[0]))


def _lock_batch(conn: Connection, batch_id: int) -> BatchRow | None:
    found = conn.execute(sa.select(batch_table).where(batch_table.c.id == batch_id).with_for_update()) \
        .mappings().first()
    return None if found is None else BatchRow(**dict(found))

