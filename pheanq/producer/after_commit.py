"""Transactional enqueue: `queue_task(..., session=s)` writes the task's row in the application's own
transaction and puts its job only once that transaction has committed.

A rollback (or a rolled-back savepoint) sends nothing, because only rows that exist after the commit
are sent. If the process dies between the commit and the put, the row is there and the reconciler
sends it: the job is never lost, which publishing "after commit" alone cannot promise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from pheanq.config import mask_url
from pheanq.errors import InvalidInput, PheanqError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, SessionTransaction

    from pheanq.dispatch import Dispatcher, PlannedJob
    from pheanq.storage.tasks import NewTask

log = logging.getLogger("pheanq.producer")

# session.info key: the jobs waiting for this session's commit.
_PENDING = "pheanq.pending_jobs"


def send_after_commit(dispatch: Dispatcher, session: Session, job: PlannedJob, task: NewTask) -> int:
    """Insert the row on the session's connection; put the job after the session commits. Returns the id
    (of the task already holding the unique key, if the task has one and it is held)."""
    connection = session.connection()
    _check_same_database(dispatch, connection)
    inserted = dispatch.store.tasks.insert_task(task, conn=connection)
    task_id = inserted.task_id
    if not inserted.created:
        return task_id
    pending: list[tuple[Dispatcher, PlannedJob]] = session.info.setdefault(_PENDING, [])
    # Listening for the session's whole life: a listener removed while SQLAlchemy runs them breaks its loop.
    if not sa.event.contains(session, "after_commit", _send_pending):
        sa.event.listen(session, "after_commit", _send_pending)
        sa.event.listen(session, "after_transaction_end", _forget_pending)
    pending.append((dispatch, dataclasses.replace(job, task_id=task_id)))
    return task_id


def _send_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released: the rows are not committed yet
    pending: list[tuple[Dispatcher, PlannedJob]] = session.info.pop(_PENDING, None) or []
    # On SQLite, a rolled-back row's id can be given to a later task: the latest task queued under an id wins.
    latest = {(id(dispatch), job.task_id): (dispatch, job) for dispatch, job in pending}
    by_dispatcher: dict[int, tuple[Dispatcher, list[PlannedJob]]] = {}
    for dispatch, job in latest.values():
        by_dispatcher.setdefault(id(dispatch), (dispatch, []))[1].append(job)
    for dispatch, jobs in by_dispatcher.values():
        try:
            # Rows inserted in a savepoint that was rolled back are gone: only the rows still unsent go out.
            unsent = dispatch.store.tasks.unsent_task_ids([job.task_id for job in jobs])
        except PheanqError as error:
            log.warning("%d task(s) committed but not sent (%s); the reconciler will send them", len(jobs), error)
            continue
        for job in jobs:
            if job.task_id in unsent:
                try:
                    dispatch.send(job)
                except InvalidInput as error:
                    # Raising here would tell the application its commit failed, and it did not.
                    log.error("task %d cannot be sent and was taken back out of the table: %s", job.task_id, error)


def _forget_pending(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit (a rollback, or a close): its rows are gone."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def _check_same_database(dispatch: Dispatcher, connection: Any) -> None:
    """The row must land in the table pheanq reads: the session has to use pheanq's database."""
    theirs = connection.engine.url
    if not same_database(make_url(dispatch.store.database.url), theirs):
        raise InvalidInput(f"queue_task(session=...): the session uses {mask_url(theirs.render_as_string())}"
                           f" but pheanq's database is {dispatch.store.safe_url}; both must be the same database")


def same_database(mine: URL, theirs: URL) -> bool:
    """Whether two URLs name one database: the same kind of server, host, port (a default one written or
    not) and database; for SQLite, the same file."""

    def where(url: URL) -> tuple[Any, ...]:
        backend = "mysql" if url.get_backend_name() == "mariadb" else url.get_backend_name()
        database = url.database
        if backend == "sqlite" and database and database != ":memory:":
            database = os.path.realpath(database)
        return backend, url.host or None, url.port or _DEFAULT_PORTS.get(backend), database

    return where(mine) == where(theirs)


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
