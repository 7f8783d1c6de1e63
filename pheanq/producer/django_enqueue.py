"""Transactional enqueue in a Django project: `queue_task(..., django_db="default")` writes the task's row
through Django's own connection to that database, in the transaction Django has open on it, and puts the job
in `transaction.on_commit`.

The entry point is a keyword of `TaskQueueService.queue_task` (and of `PythonTask.options`), beside
`session=`, rather than a function of its own: queueing is one call whatever transaction it joins, and the
description, options and checks are those of every other task. This module holds what is Django's; Django is
imported only when `django_db=` is used, so pheanq does not depend on it.

Inside `transaction.atomic()`, a rollback (of the block, or of a savepoint the task was queued in) leaves no
row and sends nothing: Django discards the callbacks of what was rolled back. Outside `atomic()`, in Django's
autocommit mode, the row commits at once and the job is put at once. The insert always runs in an `atomic`
block of its own, which is a savepoint inside the application's transaction: a task that cannot be queued
raises without breaking the application's transaction. If the process dies between the commit and the put,
the row is there and the reconciler sends it, as with `session=` (pheanq.producer.after_commit).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, make_url

from pheanq.config import mask_url
from pheanq.errors import InvalidInput, PheanqError
from pheanq.producer.after_commit import same_database

if TYPE_CHECKING:
    from pheanq.dispatch import Dispatcher, PlannedJob
    from pheanq.storage.tasks import NewTask

log = logging.getLogger("pheanq.producer")


def send_after_django_commit(dispatch: Dispatcher, alias: str, job: PlannedJob, task: NewTask) -> int:
    """Insert the row on Django's connection `alias`; put the job once Django commits it. Returns the id (of
    the task already holding the unique key, if the task has one and it is held)."""
    try:
        from django.db import transaction
        from django.db.utils import ConnectionDoesNotExist
    except ImportError:
        raise InvalidInput("queue_task(django_db=...) needs Django, which is not installed") from None
    connection = _django_connection(alias, ConnectionDoesNotExist)
    _check_same_database(dispatch, alias, connection.vendor, connection.settings_dict)
    with transaction.atomic(using=alias):
        connection.ensure_connection()
        with dispatch.store.database.lent(connection.connection) as conn:
            inserted = dispatch.store.tasks.insert_task(task, conn=conn)
        if inserted.created:
            planned = dataclasses.replace(job, task_id=inserted.task_id)
            transaction.on_commit(functools.partial(_send, dispatch, planned), using=alias)
    return inserted.task_id


def _django_connection(alias: str, missing: type[Exception]) -> Any:
    from django.db import connections

    if not isinstance(alias, str):
        raise InvalidInput(f"django_db is the name of a database in Django's DATABASES, not {alias!r}")
    try:
        return connections[alias]
    except missing:
        raise InvalidInput(f"django_db={alias!r}: Django's DATABASES has no such database") from None


def _send(dispatch: Dispatcher, job: PlannedJob) -> None:
    """After Django's commit: raising here would tell the application its commit failed, and it did not."""
    try:
        dispatch.send(job)
    except InvalidInput as error:
        log.error("task %d cannot be sent and was taken back out of the table: %s", job.task_id, error)
    except PheanqError as error:
        log.warning("task %d committed but not sent (%s); the reconciler will send it", job.task_id, error)


def _check_same_database(dispatch: Dispatcher, alias: str, vendor: str, settings: dict[str, Any]) -> None:
    """The row must land in the table pheanq reads: Django's database has to be pheanq's."""
    theirs = django_url(vendor, settings)
    if not same_database(make_url(dispatch.store.database.url), theirs):
        raise InvalidInput(f"queue_task(django_db={alias!r}): Django's database is "
                           f"{mask_url(theirs.render_as_string())} but pheanq's is {dispatch.store.safe_url}; both "
                           "must be the same database")


def django_url(vendor: str, settings: dict[str, Any]) -> URL:
    """The URL of a database of Django's DATABASES: its kind (the connection's `vendor`: sqlite, postgresql,
    mysql), NAME, HOST, PORT and USER."""
    port = str(settings.get("PORT") or "")
    return URL.create(vendor, username=settings.get("USER") or None, host=settings.get("HOST") or None,
                      port=int(port) if port.isdigit() else None, database=str(settings.get("NAME") or "") or None)
