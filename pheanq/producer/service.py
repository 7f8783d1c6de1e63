"""`TaskQueueService`: what application code calls — queue tasks, chains and batches, cancel, regenerate, look
tasks up. Each call checks what it was given, writes the rows, and hands their jobs to the dispatcher
(pheanq.dispatch), the only code that writes a row together with its job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pheanq.beanstalkd import BeanstalkdConnection, BeanstalkdServers
from pheanq.body import encode_body, encode_data, new_nonce
from pheanq.clock import utc_now
from pheanq.config import Settings, check_tube_name, load_settings
from pheanq.description import Chain, TaskDescription
from pheanq.dispatch import Dispatcher, PlannedJob
from pheanq.errors import InvalidInput, NotFound, WrongStatus
from pheanq.limits import MAX_NAME, MAX_TASK_ID, check_whole_number
from pheanq.producer.after_commit import send_after_commit
from pheanq.producer.batch import Batch
from pheanq.producer.cancel import CancelResult, cancel_task
from pheanq.producer.django_enqueue import send_after_django_commit
from pheanq.producer.options import QueueKeywords, QueueOptions, Unpack
from pheanq.status import FINAL, Status
from pheanq.storage import Store
from pheanq.storage.tables import TaskRow
from pheanq.storage.tasks import NewTask
from pheanq.storage.workflows import CALLBACKS, CallbackTask

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The longest retention task-cleanup takes (about 35,000 years): a bound that keeps the arithmetic in range.
MAX_CLEANUP_PERIOD = 2**40


class TaskQueueService:
    """The application's handle on pheanq: one database and one beanstalkd connection (see `dispatch`)."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 beanstalkd: BeanstalkdConnection | BeanstalkdServers | None = None) -> None:
        self.dispatch = Dispatcher(settings, store, beanstalkd)

    @property
    def settings(self) -> Settings:
        return self.dispatch.settings

    @property
    def store(self) -> Store:
        return self.dispatch.store

    @property
    def beanstalkd(self) -> BeanstalkdServers:
        return self.dispatch.beanstalkd

    def close(self) -> None:
        self.dispatch.close()

    def queue_task(self, description: TaskDescription, *, session: Session | None = None,
                   django_db: str | None = None, **options: Unpack[QueueKeywords]) -> int:
        """Record the task as `new`, then put its job; returns the task id. The options are those of
        `QueueOptions` (pheanq.producer.options): tube, priority, delay, ttr, timeout, run_at, retry,
        unique_key, after, batch, limit_key.

        With `session`, the row is written in that SQLAlchemy session's transaction and the job is put
        only after it commits (a rollback sends nothing). With `django_db` (a name in Django's DATABASES), the
        same in the transaction Django has open on that database, or at once in Django's autocommit mode (see
        pheanq.producer.django_enqueue). When beanstalkd does not take the job, the
        task is kept as `new` with no job, a `TaskPendingWarning` is issued, and the reconciler sends it
        later: a task whose id was returned is never lost.
        """
        _check_description(description)
        checked = QueueOptions.of(options)
        job, task = self._plan(description, checked)
        if session is not None or django_db is not None:
            which = "session" if django_db is None else "django_db"
            if session is not None and django_db is not None:
                raise InvalidInput("queue_task takes session= or django_db=, not both: a task joins one transaction")
            if checked.after or checked.batch is not None:
                raise InvalidInput(f"queue_task({which}=...) cannot be combined with after= or batch=")
            if django_db is not None:
                return send_after_django_commit(self.dispatch, django_db, job, task)
            assert session is not None
            return send_after_commit(self.dispatch, session, job, task)
        return self.dispatch.send_inserted(job, self.store.tasks.insert_task(task))

    def queue_chain(self, chain: Chain, **options: Unpack[QueueKeywords]) -> list[int]:
        """Queue `a.then(b).then(c)` in one transaction: each step waits for the one before to be done (the
        first for the tasks in `after`). The options apply to every step. Returns the ids in order."""
        if not isinstance(chain, Chain) or not len(chain):
            raise InvalidInput(f"queue_chain takes a chain made with TaskDescription.then, not {type(chain).__name__}")
        checked = _options_without_session("queue_chain", options)
        if checked.unique_key is not None:
            raise InvalidInput("queue_chain takes no unique_key: a key names one task, not a chain of them")
        later = dataclasses.replace(checked, after=())
        planned = [self._plan(step, checked if n == 0 else later) for n, step in enumerate(chain)]
        inserted = self.store.tasks.insert_chain([task for _, task in planned])
        return [self.dispatch.send_inserted(job, done) for (job, _), done in zip(planned, inserted, strict=True)]

    def queue_many(self, descriptions: Iterable[TaskDescription], **options: Unpack[QueueKeywords]) -> list[int]:
        """Queue tasks in one transaction (a batch's chunk); the options apply to every task, without `after`
        or `unique_key`. Their job ids are recorded together, not one transaction each."""
        checked = _options_without_session("queue_many", options)
        if checked.after or checked.unique_key is not None:
            raise InvalidInput("queue_many takes neither after= nor unique_key=; use queue_task for those")
        planned = [self._plan(description, checked) for description in descriptions]
        ids = self.store.tasks.insert_tasks([task for _, task in planned])
        self.dispatch.send_many([dataclasses.replace(job, task_id=task_id)
                                 for (job, _), task_id in zip(planned, ids, strict=True)])
        return ids

    def create_batch(self, name: str | None = None, then: TaskDescription | None = None,
                     catch: TaskDescription | None = None, finally_: TaskDescription | None = None) -> Batch:
        """Open a batch (see pheanq.producer.batch); each callback is queued as a task of its own when its time
        comes."""
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
            raise InvalidInput(f"a batch name is a text of at most {MAX_NAME} characters, not {name!r}")
        callbacks: dict[str, CallbackTask] = {}
        for which, description in zip(CALLBACKS, (then, catch, finally_), strict=True):
            if description is not None:
                _, task = self._plan(description, QueueOptions())
                callbacks[which] = CallbackTask(task.command, task.data, task.tube, task.priority, task.ttr)
        return Batch(self, self.store.workflows.create_batch(name, callbacks))

    def batch(self, batch_id: int) -> Batch:
        """A handle on an existing batch; NotFound when there is none with that id."""
        if self.store.workflows.find_batch(batch_id) is None:
            raise NotFound(f"batch {batch_id} does not exist")
        return Batch(self, batch_id)

    def cancel_task(self, task_id: int, by: str | None = None) -> CancelResult:
        """Cancel a task that has not ended (see pheanq.producer.cancel); `by` names who, for the log."""
        return cancel_task(self.dispatch, task_id, by)

    def regenerate_task(self, task_id: int) -> int:
        """Put a failed task back into its tube as `restarted`; returns the new job id."""
        return self.dispatch.regenerate(task_id)

    def clean_up_tasks(self, period_seconds: int) -> int:
        """Delete `done` tasks that finished more than `period_seconds` ago; returns how many."""
        check_whole_number("period", period_seconds, 0, MAX_CLEANUP_PERIOD)
        return self.store.tasks.delete_done_before(utc_now() - dt.timedelta(seconds=period_seconds))

    def status_of(self, task_id: int) -> Status | None:
        row = self.store.tasks.find_task(task_id)
        return None if row is None else row.status

    def result(self, task_id: int, wait: float = 0) -> Any:
        """A Python task's return value, once it is `done` (None when it returned None or a value that could
        not be stored: its log says which). With `wait`, waits up to that many seconds for the task to end.
        NotFound when there is no such task; WrongStatus when it has not ended `done` (by then)."""
        deadline = time.monotonic() + wait
        while True:
            row = self.find_task(task_id)
            if row.status is Status.DONE:
                return None if row.result is None else json.loads(row.result)
            if row.status in FINAL or time.monotonic() >= deadline:
                ended = "ended" if row.status in FINAL else "is"
                raise WrongStatus(f"task {task_id} {ended} {row.status.value}: it has no result")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def find_task(self, task_id: int) -> TaskRow:
        self.dispatch.job_ids.flush()  # this process reads the job ids of its own puts
        row = self.store.tasks.find_task(task_id)
        if row is None:
            raise NotFound(f"task {task_id} does not exist")
        return row

    def plan(self, description: TaskDescription, **options: Unpack[QueueKeywords]) -> tuple[PlannedJob, NewTask]:
        """The row a task would be inserted as and the job to put once it has an id, without writing either (a
        scheduler inserts the row with its slot's, pheanq.storage.schedules); InvalidInput for a bad task."""
        return self._plan(description, QueueOptions.of(options))

    def _plan(self, description: TaskDescription, options: QueueOptions) -> tuple[PlannedJob, NewTask]:
        """The row to insert for a task and the job to put once it has an id; InvalidInput for a bad task."""
        _check_description(description)
        options = options.with_defaults(description.queue_defaults)
        tube = check_tube_name(options.tube or description.tube or self.settings.default_tube)
        nonce = new_nonce()
        data = encode_data(description)
        # Too big a body is refused before any write.
        encode_body(MAX_TASK_ID, description, self.settings.secret, nonce, data)
        run_at = options.runs_from(utc_now())
        task = NewTask(description.command, data, tube, options.priority, options.ttr,
                       options.timeout, run_at, None if options.retry is None else options.retry.to_json(),
                       options.unique_key, options.batch, options.after, nonce, limit_key=options.limit_key)
        return PlannedJob(0, description, tube, options.priority, run_at, options.ttr, nonce, data), task


_default: tuple[int, TaskQueueService] | None = None
_default_lock = threading.Lock()


def default_service() -> TaskQueueService:
    """The service `pheanq.queue_task()` uses, made from the environment and pheanq.toml on first use."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():  # a forked process gets its own connections
            _default = (os.getpid(), TaskQueueService(load_settings()))
        return _default[1]


def queue_task(description: TaskDescription, *, session: Session | None = None, django_db: str | None = None,
               **options: Unpack[QueueKeywords]) -> int:
    """Queue a task with the default service; see `TaskQueueService.queue_task`."""
    return default_service().queue_task(description, session=session, django_db=django_db, **options)


def _check_description(description: object) -> None:
    if not isinstance(description, TaskDescription):
        raise InvalidInput(f"queue_task takes a TaskDescription, not {type(description).__name__}")


def _options_without_session(what: str, options: QueueKeywords) -> QueueOptions:
    """The options of a call that writes in a transaction of its own: `session=` is named, not just unknown."""
    for keyword in ("session", "django_db"):
        if keyword in options:
            raise InvalidInput(f"{what} takes no {keyword}=: queue the tasks with queue_task({keyword}=...) one by one")
    return QueueOptions.of(options)
