"""The service's workflow methods: chains, many tasks at once, batches, cancel, and sending the tasks
that a task's end released. Mixed into `TaskQueueService` (pheanq.service), whose helpers they use."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from pheanq.batch import Batch
from pheanq.cancel import CancelResult, cancel_task
from pheanq.chain import Chain
from pheanq.errors import (
    InvalidInput,
    NotFound,
    PheanqError,
    StoreUnavailable,
    TaskPendingWarning,
    TubeUnavailable,
)
from pheanq.status import Status
from pheanq.store_flow import CALLBACKS, CallbackTask

if TYPE_CHECKING:
    from pheanq.config import Settings
    from pheanq.description import TaskDescription
    from pheanq.retry import Retry
    from pheanq.service import PlannedJob, TaskQueueService
    from pheanq.store import Inserted, NewTask, Store
    from pheanq.tables import TaskRow
    from pheanq.tube import Tube

log = logging.getLogger("pheanq.service")


class WorkflowService:
    settings: Settings
    store: Store
    tube: Tube

    if TYPE_CHECKING:
        def _plan(self, description: TaskDescription, tube: str | None = None, priority: int = ...,
                  delay: int = 0, ttr: int = ..., timeout: int | None = None, run_at: dt.datetime | None = None,
                  retry: Retry | None = None, unique_key: str | None = None, after: Iterable[int] = (),
                  batch: int | None = None) -> tuple[PlannedJob, NewTask]: ...

        def _put(self, job: PlannedJob) -> int: ...

        def send(self, job: PlannedJob) -> bool: ...

        def send_again(self, row: TaskRow) -> int | None: ...

    def queue_chain(self, chain: Chain, after: Iterable[int] = (), **options: Any) -> list[int]:
        """Queue `a.then(b).then(c)` in one transaction: each step waits for the one before to be done (the
        first for the tasks in `after`). `options` as for `queue_task`, applied to every step. Returns the
        ids in order."""
        if not isinstance(chain, Chain) or not len(chain):
            raise InvalidInput(f"queue_chain takes a chain made with TaskDescription.then, not {type(chain).__name__}")
        if "unique_key" in options:
            raise InvalidInput("queue_chain takes no unique_key: a key names one task, not a chain of them")
        _no_session("queue_chain", options)
        planned = [self._plan(step, **options, after=after if n == 0 else ()) for n, step in enumerate(chain)]
        inserted = self.store.insert_chain([task for _, task in planned])
        return [self._send_inserted(job, done) for (job, _), done in zip(planned, inserted, strict=True)]

    def queue_many(self, descriptions: Iterable[TaskDescription], **options: Any) -> list[int]:
        """Queue tasks in one transaction (a batch's chunk); `options` as for `queue_task`, without `after`
        or `unique_key`. Their job ids are recorded together, not one transaction each."""
        _no_session("queue_many", options)
        planned = [self._plan(description, **options) for description in descriptions]
        if any(task.after or task.unique_key for _, task in planned):
            raise InvalidInput("queue_many takes neither after= nor unique_key=; use queue_task for those")
        ids = self.store.insert_tasks([task for _, task in planned])
        sent: list[tuple[int, int]] = []
        for (job, _), task_id in zip(planned, ids, strict=True):
            try:
                sent.append((task_id, self._put(dataclasses.replace(job, task_id=task_id))))
            except TubeUnavailable as error:
                unsent = len(ids) - len(sent)
                log.warning("%d task(s) are pending: %s", unsent, error)
                warnings.warn(TaskPendingWarning(task_id, f"{error}; {unsent} task(s) of this chunk are pending"),
                              stacklevel=2)
                break
        self.store.set_job_ids(sent)
        return ids

    def create_batch(self, name: str | None = None, then: TaskDescription | None = None,
                     catch: TaskDescription | None = None, finally_: TaskDescription | None = None) -> Batch:
        """Open a batch (see pheanq.batch); each callback is queued as a task of its own when its time comes."""
        if name is not None and (not isinstance(name, str) or len(name) > 255):
            raise InvalidInput(f"a batch name is a text of at most 255 characters, not {name!r}")
        callbacks: dict[str, CallbackTask] = {}
        for which, description in zip(CALLBACKS, (then, catch, finally_), strict=True):
            if description is not None:
                job, task = self._plan(description)
                callbacks[which] = CallbackTask(task.command, task.data, job.tube, job.priority, job.ttr)
        return Batch(cast("TaskQueueService", self), self.store.create_batch(name, callbacks))

    def batch(self, batch_id: int) -> Batch:
        """A handle on an existing batch; NotFound when there is none with that id."""
        if self.store.find_batch(batch_id) is None:
            raise NotFound(f"batch {batch_id} does not exist")
        return Batch(cast("TaskQueueService", self), batch_id)

    def cancel_task(self, task_id: int, by: str | None = None) -> CancelResult:
        """Cancel a task that has not ended (see pheanq.cancel); `by` names who, for the log."""
        return cancel_task(cast("TaskQueueService", self), task_id, by)

    def send_released(self, task_ids: Iterable[int]) -> None:
        """Put the jobs of tasks that a write moved to `new` (released dependants, batch callbacks). What is
        not sent now (beanstalkd or the database away) is sent by the reconciler: the rows are `new`."""
        for task_id in task_ids:
            try:
                row = self.store.find_task(task_id)
                if row is not None and row.status is Status.NEW and row.job_id is None:
                    self.send_again(row)
            except (StoreUnavailable, TubeUnavailable) as error:
                log.warning("task %d is ready but not sent yet (%s); the reconciler will send it", task_id, error)

    def _send_inserted(self, job: PlannedJob, inserted: Inserted) -> int:
        if inserted.created and inserted.status is Status.NEW:
            self.send(dataclasses.replace(job, task_id=inserted.task_id))
        elif inserted.created:
            try:
                self.send_released(self.store.settle_waiting(inserted.task_id).released)
            except PheanqError as error:
                # The task is committed: its id must reach the caller. The reconciler settles it.
                log.warning("task %d is waiting; settling it failed (%s); the reconciler will", inserted.task_id,
                            error)
        return inserted.task_id


def _no_session(what: str, options: dict[str, Any]) -> None:
    if "session" in options:
        raise InvalidInput(f"{what} takes no session=: queue the tasks with queue_task(session=...) one by one")
