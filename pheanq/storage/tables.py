"""pheanq's tables, the rows read from them, and the one read every statement group shares (a task by id).

Migrations freeze each revision's own copy of these definitions; a change here needs a new revision.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from pheanq.body import new_nonce
from pheanq.status import PENDING, Status

metadata = sa.MetaData()

# A task that has not ended, as SQL text: the condition of the partial index ix_pheanq_task_pending, and a term a
# query adds to use it (SQLite uses a partial index only for a query that repeats its condition word for word).
PENDING_ROW = sa.text("status IN (" + ", ".join(f"'{status.value}'" for status in sorted(PENDING)) + ")")

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class _Timestamp(sa.types.TypeDecorator[dt.datetime]):
    """DateTime; on MySQL and MariaDB their DATETIME(6), which keeps microseconds."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # lazy: the MySQL dialect's types cost a process ~1 MB; only a process on MySQL or MariaDB needs them
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return super().load_dialect_impl(dialect)


class _LongText(sa.types.TypeDecorator[str]):
    """Text; on MySQL and MariaDB their MEDIUMTEXT (up to 16 MB, where TEXT ends at 64 KB)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # lazy: as in _Timestamp
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.MEDIUMTEXT())
        return super().load_dialect_impl(dialect)


task_table = sa.Table(
    "pheanq_task",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("command", sa.String(255), nullable=False),
    sa.Column("data", _LongText, nullable=False),
    sa.Column("tube", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.BigInteger(), nullable=False),
    sa.Column("ttr", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.BigInteger(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("log", _LongText, nullable=True),
    sa.Column("worker", sa.String(255), nullable=True),
    sa.Column("created", _Timestamp, nullable=False),
    sa.Column("started", _Timestamp, nullable=True),
    sa.Column("finished", _Timestamp, nullable=True),
    sa.Column("modified", _Timestamp, nullable=False),
    # The holder's last renewal of its lease while the task is `working` (see pheanq.lease).
    sa.Column("heartbeat", _Timestamp, nullable=True),
    # Seconds the command may run before its worker stops it and the attempt fails; NULL: no limit.
    sa.Column("timeout", sa.Integer(), nullable=True),
    # From when the task may run (UTC); NULL: at once. Every put of its job is delayed until then.
    sa.Column("run_at", _Timestamp, nullable=True),
    # The retry policy as JSON (see pheanq.retry); NULL: one attempt.
    sa.Column("retry", sa.String(500), nullable=True),
    # While the task has not ended, `unique_live` repeats `unique_key`: the unique index lets one such task
    # exist per key, and clearing it when the task ends frees the key.
    sa.Column("unique_key", sa.String(191), nullable=True),
    sa.Column("unique_live", sa.String(191), nullable=True),
    # How many of the tasks it waits for (pheanq_dependency) are not done yet, while it is `waiting`.
    sa.Column("waiting_for", sa.Integer(), nullable=False, server_default="0"),
    # The batch the task belongs to; a batch's callback task names its batch in `callback_of` instead.
    sa.Column("batch_id", sa.BigInteger(), nullable=True),
    sa.Column("callback_of", sa.BigInteger(), nullable=True),
    # Random, fixed at insert; every job of the task carries it, so a job names this row and no later one with the
    # same id. NULL in rows from before revision 0008 (their jobs carry none).
    sa.Column("nonce", sa.String(32), nullable=True, default=new_nonce),
    # Who asked to cancel the task while it was `working`: its worker stops the command and ends the task
    # (`cancelled`, or `done` when the command had already completed); no other attempt follows.
    sa.Column("cancel_requested_by", sa.String(255), nullable=True),
    # A Python task's return value as JSON, once it is done (NULL: none, or not storable; its log says which).
    sa.Column("result", _LongText, nullable=True),
    # The last progress a Python task reported, as JSON {"done", "total", "message"}.
    sa.Column("progress", sa.String(600), nullable=True),
    # The slot (UTC) of the schedule that queued the task (pheanq_schedule_run); NULL: not queued by a schedule.
    sa.Column("scheduled_for", _Timestamp, nullable=True),
    # The key the task's key limits count it under (e.g. "tenant:42"); NULL: none.
    sa.Column("limit_key", sa.String(191), nullable=True),
    # `status` and `show` group and filter by these; cleanup scans done rows by age.
    sa.Index("ix_pheanq_task_tube_status", "tube", "status"),
    sa.Index("ix_pheanq_task_status_finished", "status", "finished"),
    sa.Index("uq_pheanq_task_unique_live", "unique_live", unique=True),
    sa.Index("ix_pheanq_task_batch_status", "batch_id", "status"),
    # The unended tasks in id order per status, without the history: the reconciler's listing. Revision 0010 makes
    # it partial (WHERE PENDING_ROW) on PostgreSQL and SQLite; every row on MariaDB/MySQL, which have no partial
    # indexes. Its condition is not declared here: a postgresql_where would load the PostgreSQL dialect into every
    # process (tests/test_footprint.py); tests/test_listing_plans.py checks what the migration made.
    sa.Index("ix_pheanq_task_pending", "status", "id"),
    # A batch's tasks in id order, for the newest page of one batch's list; partial (WHERE batch_id IS NOT NULL)
    # on PostgreSQL and SQLite by revision 0013, for the same reason as the pending index's condition is not here.
    sa.Index("ix_pheanq_task_batch_id", "batch_id", "id"),
    # The tasks of each limit key by status, for the number waiting on a key limit; partial (WHERE limit_key IS NOT
    # NULL) on PostgreSQL and SQLite by revision 0015.
    sa.Index("ix_pheanq_task_limit_key", "limit_key", "status"),
    # SQLite otherwise hands out the id of the newest row again once that row is deleted.
    sqlite_autoincrement=True,
)


# An edge of the dependency graph: `task_id` waits for `parent_id` to be done. `satisfied` is set once, by
# whoever sees the parent done first, so the child's `waiting_for` counts each parent down exactly once.
dependency_table = sa.Table(
    "pheanq_dependency",
    metadata,
    sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("parent_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("satisfied", sa.Boolean(), nullable=False),
    sa.Index("ix_pheanq_dependency_parent", "parent_id"),
)


# A group of tasks planned over time. `unfinished` counts its tasks that have not ended, `done` and `failures`
# how they ended; once the batch is closed (no more tasks) and `unfinished` reaches 0, the batch is finished and
# its callbacks are queued.
batch_table = sa.Table(
    "pheanq_batch",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("unfinished", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created", _Timestamp, nullable=False),
    sa.Column("closed", _Timestamp, nullable=True),
    sa.Column("finished", _Timestamp, nullable=True),
    sa.Column("cancelled_by", sa.String(255), nullable=True),
    # Each callback: the task description as JSON with its tube, and the id of the task once it was queued.
    sa.Column("then_task", sa.Text(), nullable=True),
    sa.Column("catch_task", sa.Text(), nullable=True),
    sa.Column("finally_task", sa.Text(), nullable=True),
    sa.Column("then_id", sa.BigInteger(), nullable=True),
    sa.Column("catch_id", sa.BigInteger(), nullable=True),
    sa.Column("finally_id", sa.BigInteger(), nullable=True),
    sqlite_autoincrement=True,
)


# What each worker-tender last reported of its pool: one row for the tender, one per worker.
worker_table = sa.Table(
    "pheanq_worker",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("tender_pid", sa.Integer(), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tubes", sa.String(1024), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("task_id", sa.BigInteger(), nullable=True),
    sa.Column("started", _Timestamp, nullable=False),
    sa.Column("heartbeat", _Timestamp, nullable=False),
    sa.Column("memory_mb", sa.Float(), nullable=True),   # the worker's and its children's resident memory
    sa.Index("ix_pheanq_worker_host_tender", "host", "tender_pid"),
)


# One row per named lock; the holder renews `expires` while it works. A lock past `expires` is free.
lock_table = sa.Table(
    "pheanq_lock",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires", _Timestamp, nullable=False),
)

# The numbers of the beanstalkd servers of an installation with several (pheanq.beanstalkd): a task's job id is its
# server's number and that server's own id of the job in one integer. Number 0 is the first server registered, and
# the one server of an installation with one (whose job ids are beanstalkd's own).
beanstalkd_server_table = sa.Table(
    "pheanq_beanstalkd",
    metadata,
    sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("address", sa.String(255), nullable=False, unique=True),
    sa.Column("added", _Timestamp, nullable=False),
)

# Why a worker buried a job: beanstalkd keeps the job but has nowhere to keep the reason.
buried_table = sa.Table(
    "pheanq_buried",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("beanstalkd", sa.String(255), nullable=False),
    sa.Column("tube", sa.String(200), nullable=False),
    sa.Column("job_id", sa.BigInteger(), nullable=False),
    sa.Column("reason", sa.String(1000), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("buried", _Timestamp, nullable=False),
    sa.Index("ix_pheanq_buried_tube_job", "beanstalkd", "tube", "job_id"),
)


# Tubes paused with `pheanq pause`, until `paused_until` (UTC) or `pheanq resume`.
tube_table = sa.Table(
    "pheanq_tube",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("paused_until", _Timestamp, nullable=False),
    sa.Column("paused_by", sa.String(255), nullable=False),
    sa.Column("paused_at", _Timestamp, nullable=False),
)

# Every action taken from the dashboard (pheanq.web): who, in which role, did what to what, and what came of it.
audit_table = sa.Table(
    "pheanq_audit",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("at", _Timestamp, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(1000), nullable=False),
    sa.Column("outcome", sa.String(1000), nullable=False),
    sqlite_autoincrement=True,
)

# The number of tasks per tube and status, kept by triggers on pheanq_task (revision 0011): each insert, delete
# and move adds its +1 and -1 to pheanq_count_change, and pheanq.storage.counts folds those into pheanq_count.
count_table = sa.Table(
    "pheanq_count",
    metadata,
    sa.Column("tube", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger(), nullable=False),
)

count_change_table = sa.Table(
    "pheanq_count_change",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("tube", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("n", sa.BigInteger(), nullable=False),
    # Revision 0014. On the row of a task entering a status (an insert, a move): its command, which the fold adds
    # to pheanq_status_total; NULL on the -1 rows and on a change of tube alone.
    sa.Column("command", sa.String(255), nullable=True),
    # On the move that ends an attempt with a verdict: how long it ran; on a claim: how long the task had been
    # ready before it (both in seconds, computed by the database; see pheanq.storage.totals).
    sa.Column("run_seconds", sa.Double(), nullable=True),
    sa.Column("wait_seconds", sa.Double(), nullable=True),
)

# How many times a task of each tube and command entered each status since revision 0014, folded from
# pheanq_count_change; only ever added to, so deleting tasks never lowers it (the metrics' counters).
status_total_table = sa.Table(
    "pheanq_status_total",
    metadata,
    sa.Column("tube", sa.String(200), primary_key=True),
    sa.Column("command", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger(), nullable=False),
)

# Histograms of durations per tube and command (`metric` "run" or "wait"): per bucket (`le`, its upper bound in
# seconds as Prometheus writes it, "+Inf" for the last) how many observations fell into it, not below, and their
# sum. Folded from pheanq_count_change, only ever added to.
duration_table = sa.Table(
    "pheanq_duration",
    metadata,
    sa.Column("tube", sa.String(200), primary_key=True),
    sa.Column("command", sa.String(255), primary_key=True),
    sa.Column("metric", sa.String(8), primary_key=True),
    sa.Column("le", sa.String(16), primary_key=True),
    sa.Column("n", sa.BigInteger(), nullable=False),
    sa.Column("seconds", sa.Double(), nullable=False),
)


# Per recurring schedule (pheanq.schedules): every slot at or before `decided_until` (UTC) has been decided.
schedule_table = sa.Table(
    "pheanq_schedule",
    metadata,
    sa.Column("name", sa.String(191), primary_key=True),
    sa.Column("decided_until", _Timestamp, nullable=False),
    sa.Column("modified", _Timestamp, nullable=False),
)

# One row per decided slot of a schedule: `queued` (with its task) or `skipped` (with the reason). The primary key
# makes a slot's task exactly one: the row is inserted in the transaction that inserts the task.
schedule_run_table = sa.Table(
    "pheanq_schedule_run",
    metadata,
    sa.Column("schedule", sa.String(191), primary_key=True),
    sa.Column("slot", _Timestamp, primary_key=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("task_id", sa.BigInteger(), nullable=True),
    sa.Column("reason", sa.String(255), nullable=True),
    sa.Column("created", _Timestamp, nullable=False),
)

# The places of the cluster-wide limits (pheanq.task_limits), per scope ("command:NAME", "tube:NAME", "key:KEY")
# and kind ("concurrency" or "rate"). A concurrency place is held by one attempt (task_id, attempt) while the task
# is `working` in that attempt under a lease that is not stale (pheanq.lease); a rate place was last used at `taken`
# and serves again one period later. A claim takes its places by compare-and-set in its own transaction.
limit_slot_table = sa.Table(
    "pheanq_limit_slot",
    metadata,
    sa.Column("scope", sa.String(300), primary_key=True),
    sa.Column("kind", sa.String(12), primary_key=True),
    sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("task_id", sa.BigInteger(), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=True),
    sa.Column("taken", _Timestamp, nullable=True),
)


@dataclasses.dataclass(frozen=True)
class WorkerRow:
    """A row of `pheanq_worker`: a worker-tender, or one of its workers, as the tender last reported it."""

    host: str
    tender_pid: int
    pid: int
    kind: str               # "tender" or "worker"
    tubes: str              # comma-separated
    state: str
    task_id: int | None
    started: dt.datetime
    heartbeat: dt.datetime
    memory_mb: float | None = None


@dataclasses.dataclass(frozen=True)
class TaskRow:
    id: int
    command: str
    data: str
    tube: str
    status: Status
    priority: int
    ttr: int
    job_id: int | None
    attempts: int
    exit_code: int | None
    log: str | None
    worker: str | None
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    modified: dt.datetime
    heartbeat: dt.datetime | None = None
    timeout: int | None = None
    run_at: dt.datetime | None = None
    retry: str | None = None
    unique_key: str | None = None
    unique_live: str | None = None
    waiting_for: int = 0
    batch_id: int | None = None
    callback_of: int | None = None
    nonce: str | None = None
    cancel_requested_by: str | None = None
    result: str | None = None
    progress: str | None = None
    scheduled_for: dt.datetime | None = None
    limit_key: str | None = None


@dataclasses.dataclass(frozen=True)
class BatchRow:
    id: int
    name: str | None
    total: int
    unfinished: int
    failures: int
    done: int
    created: dt.datetime
    closed: dt.datetime | None
    finished: dt.datetime | None
    cancelled_by: str | None
    then_task: str | None
    catch_task: str | None
    finally_task: str | None
    then_id: int | None
    catch_id: int | None
    finally_id: int | None


@dataclasses.dataclass(frozen=True)
class BuriedRow:
    beanstalkd: str
    tube: str
    job_id: int
    reason: str
    body: str
    buried: dt.datetime


_SELECT_TASK = sa.select(task_table).where(task_table.c.id == sa.bindparam("task"))


def select_task(conn: Connection, task_id: int) -> TaskRow | None:
    found = conn.execute(_SELECT_TASK, {"task": task_id}).mappings().first()
    return None if found is None else task_row(found)


def task_row(found: Any) -> TaskRow:
    values = dict(found)
    values["status"] = Status(values["status"])
    return TaskRow(**values)
