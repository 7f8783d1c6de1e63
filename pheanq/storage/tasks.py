"""A task's own statements: insert, the moves of an attempt, find, counts (its claim: pheanq.storage.claims).

Each write that changes a task's status is one compare-and-set UPDATE whose
condition comes from `status.TRANSITIONS`, so two workers (or a worker and a
person) can never both win the same task.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pheanq import retry, tasklog
from pheanq.body import new_nonce
from pheanq.clock import utc_now
from pheanq.errors import NotFound, StoreUnavailable, WrongStatus
from pheanq.lease import stale_after
from pheanq.limits import pages
from pheanq.status import CLAIMABLE, FINAL, Status, sources_of
from pheanq.storage import counts
from pheanq.storage.claims import is_stale
from pheanq.storage.engine import Database, any_of, same
from pheanq.storage.job_ids import note_job_ids
from pheanq.storage.tables import PENDING_ROW, TaskRow, batch_table, dependency_table, select_task, task_row, task_table
from pheanq.storage.workflows import Ends, Settled

# The statements of a task's hot path (queue, claim, end) are built once, their values bound at each execution:
# building a statement with the values in it costs more than running it on SQLite.
_c = task_table.c
# What an end needs to know: the task's batch, and whether a task waits for it (most have neither).
_END_FACTS = sa.select(
    _c.batch_id,
    sa.select(dependency_table.c.task_id).where(dependency_table.c.parent_id == _c.id,
                                                dependency_table.c.satisfied == sa.false()).exists().label("awaited"),
).where(_c.id == sa.bindparam("task"))


@functools.cache
def _move_statement(target: Status, names: tuple[str, ...], cancel_requested: bool = False) -> Any:
    """`UPDATE` of an attempt's task (`working` or `stalled`) to `target`, setting `names` from `new_<name>`
    parameters; a log entry is appended to the log, so an interruption or a takeover stays visible. With
    `cancel_requested`, only a task whose cancel was requested moves."""
    sources = [s.value for s in sources_of(target) if s in (Status.WORKING, Status.STALLED)]
    values: dict[str, Any] = {name: sa.bindparam(f"new_{name}") for name in names}
    if "log" in values:
        values["log"] = sa.func.coalesce(_c.log, "") + values["log"]
        if target is Status.DONE:
            values["log"] = values["log"] + sa.case((_c.cancel_requested_by.is_(None), ""),
                                                    else_=tasklog.CANCEL_CAME_TOO_LATE)
    where = [_c.id == sa.bindparam("task"), any_of(_c.status, sources), _c.attempts == sa.bindparam("attempt")]
    if target not in (Status.DONE, Status.CANCELLED):
        # A cancel requested while the attempt ran ends the task instead (see TaskStatements._move_settled).
        where.append(_c.cancel_requested_by.is_(None))
    if cancel_requested:
        where.append(_c.cancel_requested_by.is_not(None))
    return (task_table.update().where(*where)
            .values(status=target.value, modified=sa.bindparam("modified_at"), **values))


@dataclasses.dataclass(frozen=True)
class Moved:
    """Where the move of an attempt took its task, and what that set in motion."""

    status: Status
    settled: Settled
    # The move had been written by an earlier try of this same write, whose answer the database connection lost
    # (it died after the COMMIT reached the server): what it released is found again, unsent.
    answer_lost: bool = False


@dataclasses.dataclass(frozen=True)
class NewTask:
    """A task to insert: its row's values, and the tasks it waits for."""

    command: str
    data: str
    tube: str
    priority: int
    ttr: int
    timeout: int | None = None
    run_at: dt.datetime | None = None
    retry: str | None = None
    unique_key: str | None = None
    batch_id: int | None = None
    after: tuple[int, ...] = ()
    nonce: str = dataclasses.field(default_factory=new_nonce)
    scheduled_for: dt.datetime | None = None    # the schedule's slot (UTC) that queued it
    limit_key: str | None = None                # the key its key limits count it under


@dataclasses.dataclass(frozen=True)
class Inserted:
    task_id: int
    created: bool           # False: a task holding the same unique key exists, and this is its id
    status: Status


class TaskStatements:
    """The statements of a task's own life."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def insert_task(self, task: NewTask, conn: Connection | None = None) -> Inserted:
        """Insert a task, `new` (or `waiting` when it waits for others), on `conn` (an application's
        transaction) when given, else in its own. With a unique key held by a task that has not ended,
        nothing is inserted and that task's id is returned."""
        for _ in range(5):
            try:
                if conn is None:
                    with self.database.transaction() as own:
                        return self._insert(own, task)
                if task.unique_key is None:
                    return self._insert(conn, task)
                if conn.dialect.name == "sqlite":
                    # pysqlite's savepoints do not nest in a transaction SQLAlchemy began; SQLite has one writer
                    # at a time anyway, so looking first is enough.
                    return self._unique_holder(conn, task.unique_key) or self._insert(conn, task)
                with conn.begin_nested():
                    return self._insert(conn, task)
            except IntegrityError:
                if task.unique_key is None:
                    raise
            # Another producer holds the key (or this transaction does). Read whose task it is; if that one ended
            # meanwhile, try again.
            if conn is not None:
                holder = self._unique_holder(conn, task.unique_key)
            else:
                with self.database.transaction() as own:
                    holder = self._unique_holder(own, task.unique_key)
            if holder is not None:
                return holder
        raise StoreUnavailable(f"unique key {task.unique_key!r}: the task holding it kept changing; try again")

    def insert_chain(self, tasks: list[NewTask]) -> list[Inserted]:
        """Insert tasks in one transaction, each after the first waiting for the one before it."""
        inserted: list[Inserted] = []
        with self.database.transaction() as conn:
            for task in tasks:
                if inserted:
                    task = dataclasses.replace(task, after=(*task.after, inserted[-1].task_id))
                holder = None if task.unique_key is None else self._unique_holder(conn, task.unique_key)
                inserted.append(holder or self._insert(conn, task))
        return inserted

    def insert_tasks(self, tasks: list[NewTask]) -> list[int]:
        """Insert `new` tasks without keys or dependencies (a batch's chunk) in one transaction and one
        statement; their ids in order."""
        if not tasks:
            return []
        with self.database.transaction() as conn:
            rows = [_row_values(task, Status.NEW, 0) for task in tasks]
            if conn.dialect.insert_executemany_returning:
                inserted = conn.execute(task_table.insert().returning(task_table.c.id, sort_by_parameter_order=True),
                                        rows)
                ids = [int(task_id) for task_id in inserted.scalars()]
            else:  # MySQL, and MariaDB before 10.5: no INSERT ... RETURNING
                ids = [_inserted_id(conn.execute(task_table.insert().values(**row))) for row in rows]
            for batch_id, joining in sorted(collections.Counter(task.batch_id for task in tasks
                                                                if task.batch_id is not None).items()):
                _join_batch(conn, batch_id, joining)
            return ids

    def record_job_ids(self, pairs: list[tuple[int, int]]) -> None:
        """Note (task id, job id) pairs in one transaction, each on a row that is still `new` with no job id
        (one that moved on, or whose claim recorded the id, keeps what it has)."""
        if pairs:
            with self.database.transaction() as conn:
                note_job_ids(conn, pairs, Status.NEW)

    @staticmethod
    def _unique_holder(conn: Connection, key: str) -> Inserted | None:
        c = task_table.c
        # A locking read: it sees the latest committed holder even inside an older snapshot (MariaDB).
        holder = conn.execute(sa.select(c.id, c.status).where(c.unique_live == key).with_for_update(read=True)).first()
        return None if holder is None else Inserted(int(holder.id), False, Status(holder.status))

    def _insert(self, conn: Connection, task: NewTask) -> Inserted:
        c = task_table.c
        parents = sorted(set(task.after))
        if parents:
            found = set(conn.execute(sa.select(c.id).where(c.id.in_(parents))).scalars())
            if missing := [parent for parent in parents if parent not in found]:
                raise NotFound(f"task(s) {', '.join(map(str, missing))} to wait for do not exist")
        status = Status.WAITING if parents else Status.NEW
        # The values as parameters of one constant statement: compiled once, not coerced and cache-keyed each time.
        key = conn.execute(task_table.insert(), _row_values(task, status, len(parents))).inserted_primary_key
        assert key is not None
        task_id = int(key[0])
        if parents:
            conn.execute(dependency_table.insert(), [{"task_id": task_id, "parent_id": parent, "satisfied": False}
                                                     for parent in parents])
        if task.batch_id is not None:
            _join_batch(conn, task.batch_id, 1)  # the batch row last, as every writer takes it (see storage.workflows)
        return Inserted(task_id, True, status)

    def unsent_task_ids(self, task_ids: list[int]) -> set[int]:
        """Those of `task_ids` that exist with no job recorded."""
        c = task_table.c
        found: set[int] = set()
        with self.database.transaction() as conn:
            for page in pages(task_ids):
                found.update(conn.execute(sa.select(c.id).where(c.id.in_(page), c.job_id.is_(None))).scalars())
        return found

    def delete_unsent(self, task_id: int) -> None:
        """Take back a task whose job beanstalkd refused for good, before anyone could see it run."""
        c = task_table.c
        with self.database.transaction() as conn:
            conn.execute(task_table.delete().where(c.id == task_id, c.status == Status.NEW.value,
                                                   c.job_id.is_(None)))

    def stall_task(self, task_id: int, attempt: int, log: str) -> Moved | None:
        """`working` → `stalled` for an attempt whose worker is gone; None when the attempt no longer
        holds the task (it finished, or someone else already acted)."""
        return self._move_settled(task_id, attempt, Status.STALLED, log=log, worker=None)

    def finish_task(self, task_id: int, attempt: int, status: Status, exit_code: int | None,
                    log: str | None, result: str | None = None) -> Moved | None:
        """Record the end of an attempt (`done`, `failed` or `cancelled`), and what it sets in motion (see
        pheanq.storage.workflows); None when the attempt no longer owns the task.

        A `stalled` task still belongs to its last attempt until another worker claims it, so a result
        that arrives late (after a database outage) is kept rather than run again."""
        now = utc_now()
        stored = {} if result is None else {"result": result}
        return self._move_settled(task_id, attempt, status, exit_code=exit_code, log=log, finished=now, **stored)

    def retry_task(self, task_id: int, attempt: int, exit_code: int | None, log: str,
                   run_at: dt.datetime) -> Moved | None:
        """A failed attempt with attempts left: `retrying` until `run_at`; None when the attempt no longer
        owns the task."""
        return self._move_settled(task_id, attempt, Status.RETRYING, exit_code=exit_code, log=log, run_at=run_at,
                                  worker=None)

    def release_task(self, task_id: int, attempt: int, log: str) -> Moved | None:
        """Hand a claimed task back (`working` → `new`) so another worker runs it."""
        return self._move_settled(task_id, attempt, Status.NEW, log=log, worker=None)

    def append_attempt_log(self, task_id: int, entry: str) -> None:
        """Add the entry of an attempt that no longer holds the task to its log, whatever the task's status:
        every attempt that started keeps its entry."""
        c = task_table.c
        with self.database.transaction() as conn:
            conn.execute(task_table.update().where(c.id == task_id).values(log=sa.func.coalesce(c.log, "") + entry))

    def append_log(self, task_id: int, status: Status, entry: str) -> None:
        """Add to the log of a task while it is still in `status`."""
        c = task_table.c
        with self.database.transaction() as conn:
            conn.execute(task_table.update().where(c.id == task_id, c.status == status.value)
                         .values(log=sa.func.coalesce(c.log, "") + entry))

    def restart_task(self, task_id: int) -> TaskRow | None:
        """Move a task to `restarted` for regeneration; None when its status does not allow it.

        The task takes its unique key back (WrongStatus when another task holds it now), counts as
        pending in its batch again (WrongStatus when the batch has finished), and gets a fresh allowance of
        its retry policy, counted from its next attempt (the log says which attempts may run)."""
        c, b = task_table.c, batch_table.c
        now = utc_now()
        try:
            with self.database.transaction() as conn:
                changed = conn.execute(
                    task_table.update()
                    .where(c.id == task_id, c.status.in_([s.value for s in sources_of(Status.RESTARTED)]))
                    .values(status=Status.RESTARTED.value, job_id=None, worker=None, exit_code=None,
                            started=None, finished=None, run_at=None, modified=now, unique_live=c.unique_key)
                ).rowcount
                row = select_task(conn, task_id) if changed == 1 else None
                if row is None:
                    return None
                caught_by = None
                if row.batch_id is not None:
                    if conn.execute(
                        batch_table.update().where(b.id == row.batch_id, b.finished.is_(None))
                        .values(unfinished=b.unfinished + 1, failures=b.failures - 1)
                    ).rowcount == 0:
                        raise WrongStatus(f"task {task_id} belongs to batch {row.batch_id}, which has finished")
                    caught_by = conn.execute(sa.select(b.catch_id).where(b.id == row.batch_id)).scalar_one()
                policy = retry.regenerated(row.retry, row.attempts)
                entry = tasklog.regenerated(*retry.allowed_attempts(policy), now,
                                            None if caught_by is None else row.batch_id)
                conn.execute(task_table.update().where(c.id == task_id)
                             .values(retry=policy, log=sa.func.coalesce(c.log, "") + entry))
                return select_task(conn, task_id)
        except IntegrityError:
            raise WrongStatus(f"task {task_id}: another task holds its unique key now") from None

    def find_task(self, task_id: int) -> TaskRow | None:
        with self.database.transaction() as conn:
            return select_task(conn, task_id)

    def count_tasks(self) -> list[tuple[str, Status, int]]:
        """(tube, status, count) for every tube and status that has tasks, from the counts the database keeps
        (pheanq.storage.counts): a few rows read, however long the table."""
        return counts.count_tasks(self.database)

    def finished_since(self, since: dt.datetime) -> list[tuple[str, Status, int]]:
        """(tube, status, count) of the tasks that ended done or failed since `since` (see pheanq.storage.counts)."""
        return counts.finished_since(self.database, since)

    def fold_counts(self) -> None:
        """Fold the changes of the task counts noted since the last fold (see pheanq.storage.counts)."""
        counts.fold(self.database)

    def progress_of_working(self, limit: int, batch_id: int | None = None) -> list[tuple[int, str, str, str]]:
        """(id, command, tube, progress JSON) of at most `limit` working tasks (of the batch, if given) that report
        progress, oldest first."""
        c = task_table.c
        # PENDING_ROW lets SQLite read the partial index ix_pheanq_task_pending in id order; without it, it scans
        # the whole table for `ORDER BY id LIMIT` (1.3 s on 10 M rows).
        query = sa.select(c.id, c.command, c.tube, c.progress).where(
            PENDING_ROW, c.status == Status.WORKING.value, c.progress.is_not(None)).order_by(c.id).limit(limit)
        if batch_id is not None:
            query = query.where(c.batch_id == batch_id)
        with self.database.transaction() as conn:
            return [(int(task_id), command, tube, progress) for task_id, command, tube, progress in conn.execute(query)]

    def delete_done_before(self, cutoff: dt.datetime) -> int:
        """Delete done tasks finished before `cutoff`, except those a batch still running counts, and those a
        waiting task has not yet counted off."""
        c, b, d = task_table.c, batch_table.c, dependency_table.c
        running_batch = sa.select(b.id).where(b.id == c.batch_id, b.finished.is_(None)).exists()
        awaited = sa.select(d.task_id).where(d.parent_id == c.id, d.satisfied == sa.false()).exists()
        with self.database.transaction() as conn:
            return int(conn.execute(
                task_table.delete().where(c.status == Status.DONE.value, c.finished < cutoff, ~running_batch,
                                          ~awaited)
            ).rowcount)

    def tasks_to_reconcile(self, tube: str | None, after_id: int, limit: int, settled_before: dt.datetime,
                           now: dt.datetime, sent_before: dt.datetime | None = None) -> list[TaskRow]:
        """The next `limit` tasks after `after_id` that should have a live job: waiting ones last changed
        before `settled_before` (a younger one's put may be in flight) — with `sent_before`, also younger
        ones whose job id is recorded (their put is done) last changed before it — and `working` ones whose lease
        is stale."""
        c = task_table.c
        beat = sa.func.coalesce(c.heartbeat, c.modified)
        settled = c.modified < settled_before
        if sent_before is not None:
            settled = sa.or_(settled, sa.and_(c.job_id.is_not(None), c.modified < sent_before))
        stale = beat < now - dt.timedelta(seconds=stale_after(0))
        # One branch per status, each read in id order from ix_pheanq_task_pending and cut at `limit`, then merged:
        # a page reads at most `limit` rows of each status, never the history (done, failed, ...) before them.
        branches = []
        for status in sorted(CLAIMABLE | {Status.WORKING}):
            branch = sa.select(task_table).where(PENDING_ROW, c.status == status.value, c.id > after_id,
                                                 stale if status is Status.WORKING else settled)
            if tube is not None:
                branch = branch.where(c.tube == tube)
            branches.append(sa.select(branch.order_by(c.id).limit(limit).subquery()))
        merged = sa.union_all(*branches).subquery()
        query = sa.select(merged).order_by(merged.c.id).limit(limit)
        with self.database.transaction() as conn:
            rows = [task_row(found) for found in conn.execute(query).mappings()]
        return [row for row in rows if row.status is not Status.WORKING or is_stale(row, now)]

    def record_job_if(self, task_id: int, status: Status, old_job_id: int | None, new_job_id: int) -> bool:
        """Note a re-sent job on a row still as the reconciler found it; False when it changed meanwhile."""
        c = task_table.c
        with self.database.transaction() as conn:
            return conn.execute(
                task_table.update().where(c.id == task_id, c.status == status.value, same(c.job_id, old_job_id))
                .values(job_id=new_job_id)
            ).rowcount == 1

    def _move_settled(self, task_id: int, attempt: int, target: Status, **values: Any) -> Moved | None:
        """Move an attempt's task (`working` or `stalled`) to `target`; None when the attempt no longer
        owns it. A move to an end runs what that end sets in motion in the same transaction.

        A cancel requested while the attempt ran turns every move but `done` into `cancelled`: no other
        attempt follows it (a retry, a hand-back, a stalled task run again). `done` stays `done`: the command
        completed before it could be stopped, and its log says the cancel came too late."""
        if values.get("log") is None:
            values.pop("log", None)  # no entry: the log so far stays
        now = utc_now()
        with self.database.transaction() as conn:
            moved = self._move_row(conn, task_id, attempt, target, values, now)
            if moved is None and target not in (Status.DONE, Status.CANCELLED):
                ending = {"log": values.get("log", "") + tasklog.ended_by_cancel(attempt), "finished": now,
                          "exit_code": values.get("exit_code")}
                # Only for a cancel: a move refused because the task moved on (a `stalled` task whose cut-off
                # worker comes back to hand it back) must not end it.
                moved = self._move_row(conn, task_id, attempt, Status.CANCELLED, ending, now, cancel_requested=True)
            if moved is None:
                return _written_before(conn, task_id, attempt, target, values.get("log"))
            ends = Ends()
            if moved in FINAL:
                batch_id, has_dependants = conn.execute(_END_FACTS, {"task": task_id}).one()
                ends.ended(conn, task_id, moved, batch_id, None if has_dependants else [])
            return Moved(moved, ends.close(conn))

    @staticmethod
    def _move_row(conn: Connection, task_id: int, attempt: int, target: Status, values: dict[str, Any],
                  now: dt.datetime, cancel_requested: bool = False) -> Status | None:
        if target in FINAL:
            values = {**values, "unique_live": None}  # an ended task frees its unique key
        changed = conn.execute(
            _move_statement(target, tuple(sorted(values)), cancel_requested),
            {"task": task_id, "attempt": attempt, "modified_at": now,
             **{f"new_{name}": value for name, value in values.items()}},
        ).rowcount
        return target if changed == 1 else None


def _written_before(conn: Connection, task_id: int, attempt: int, target: Status, entry: str | None) -> Moved | None:
    """The move of `attempt` to `target` that an earlier try of this same write committed, though its answer was
    lost (the worker writes again until the database answers); None when someone else moved the task.

    The row is as that write left it: the same attempt, in `target` (or `cancelled` instead, see
    TaskStatements._move_settled), its log ending with the write's entry. What that write released is sent
    again: the tasks that wait for this one and the callbacks of its batch that are `new` and have no job."""
    row = select_task(conn, task_id)
    if row is None or row.attempts != attempt:
        return None
    if entry is None:
        endings = [""]
    elif target is Status.DONE:
        endings = [entry, entry + tasklog.CANCEL_CAME_TOO_LATE]
    else:
        endings = [entry]
    if row.status is target:
        left = any((row.log or "").endswith(ending) for ending in endings)
    elif row.status is Status.CANCELLED and target is not Status.DONE:
        left = (row.log or "").endswith((entry or "") + tasklog.ended_by_cancel(attempt))
    else:
        left = False
    if not left:
        return None
    released: list[int] = []
    if row.status in FINAL:
        c, d, b = task_table.c, dependency_table.c, batch_table.c
        dependants = sa.select(d.task_id).where(d.parent_id == task_id)
        batch = None if row.batch_id is None else \
            conn.execute(sa.select(b.then_id, b.catch_id, b.finally_id).where(b.id == row.batch_id)).first()
        callbacks = [int(callback) for callback in batch or () if callback is not None]
        released = sorted(int(found) for found in conn.execute(
            sa.select(c.id).where(sa.or_(c.id.in_(dependants), c.id.in_(callbacks)),
                                  c.status == Status.NEW.value, c.job_id.is_(None))).scalars())
    return Moved(row.status, Settled(released), answer_lost=True)


def _inserted_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _join_batch(conn: Connection, batch_id: int, joining: int) -> None:
    """Count tasks into an open batch; NotFound or WrongStatus when it is missing or closed."""
    b = batch_table.c
    if conn.execute(batch_table.update().where(b.id == batch_id, b.closed.is_(None))
                    .values(total=b.total + joining, unfinished=b.unfinished + joining)).rowcount == 0:
        if conn.execute(sa.select(b.id).where(b.id == batch_id)).first() is None:
            raise NotFound(f"batch {batch_id} does not exist")
        raise WrongStatus(f"batch {batch_id} is closed (or cancelled): no task can join it any more")


def _row_values(task: NewTask, status: Status, waiting_for: int) -> dict[str, Any]:
    now = utc_now()
    return dict(command=task.command, data=task.data, tube=task.tube, status=status.value, priority=task.priority,
                ttr=task.ttr, timeout=task.timeout, run_at=task.run_at, retry=task.retry, unique_key=task.unique_key,
                unique_live=task.unique_key, waiting_for=waiting_for, batch_id=task.batch_id, attempts=0,
                created=now, modified=now, nonce=task.nonce, scheduled_for=task.scheduled_for,
                limit_key=task.limit_key)
