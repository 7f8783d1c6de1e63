"""Batches: tasks planned together, maybe in chunks over time, with progress and completion callbacks.

    with service.create_batch("nightly import", then=Report(), catch=Alert(), finally_=Cleanup()) as batch:
        batch.add_many(ImportRow(n) for n in range(50_000))   # planned 500 at a time
    print(service.batch(batch.id).progress())

A batch is open until `close()` (the `with` block closes it); then it finishes once each of its tasks has
ended. `then` is queued when every task is done, `catch` at the first task that fails (or ends
`upstream_failed`), `finally` when the batch finishes, whatever happened. A batch whose `catch` was queued
never gets `then`, even when regenerated tasks make every task done later. Progress is counted by the
database from an index, so a batch of any size is reported without reading its rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol

from pheanq.description import TaskDescription
from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput, NotFound
from pheanq.limits import PAGE_SIZE
from pheanq.producer.cancel import cancel_batch
from pheanq.producer.options import QueueKeywords, Unpack
from pheanq.status import FAILURES, PENDING, Status
from pheanq.storage.workflows import CALLBACKS

# How many running tasks' progress a batch's progress carries.
RUNNING_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class BatchProgress:
    id: int
    name: str | None
    state: str                      # open, running, finished
    total: int
    done: int
    failed: int                     # failed or upstream_failed
    cancelled: int
    pending: int                    # not ended yet
    created: dt.datetime
    closed: dt.datetime | None
    finished: dt.datetime | None
    cancelled_by: str | None
    callbacks: dict[str, int | None]   # which -> the callback task's id once queued (only those set)
    # The progress its running Python tasks report (the first RUNNING_SHOWN): task id -> {done, total, message}.
    running: dict[int, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for key in ("created", "closed", "finished"):
            values[key] = None if values[key] is None else values[key].isoformat(sep=" ") + " UTC"
        return values

    def summary(self) -> str:
        share = f"{100 * (self.total - self.pending) / self.total:.1f}%" if self.total else "empty"
        return f"batch {self.id}{f' ({self.name})' if self.name else ''}: {self.state}, {share} ended: " \
               f"{self.done} done, {self.failed} failed, {self.cancelled} cancelled, {self.pending} pending " \
               f"of {self.total}"


class Queue(Protocol):
    """What a batch queues its tasks through: a `TaskQueueService`."""

    @property
    def dispatch(self) -> Dispatcher: ...

    def queue_task(self, description: TaskDescription, **options: Unpack[QueueKeywords]) -> int: ...

    def queue_many(self, descriptions: Iterable[TaskDescription], **options: Unpack[QueueKeywords]) -> list[int]: ...


class Batch:
    """A handle on one batch. Made by `TaskQueueService.create_batch` or `TaskQueueService.batch(id)`."""

    def __init__(self, queue: Queue, batch_id: int) -> None:
        self.queue = queue
        self.dispatch = queue.dispatch
        self.id = batch_id

    def add(self, description: TaskDescription, **options: Unpack[QueueKeywords]) -> int:
        """Queue one task into the batch; the options as for `queue_task`. Returns its id."""
        return self.queue.queue_task(description, **self._joining(options))

    def add_many(self, descriptions: Iterable[TaskDescription], **options: Unpack[QueueKeywords]) -> int:
        """Queue tasks into the batch PAGE_SIZE at a time (one transaction each), reading `descriptions`
        lazily; returns how many were queued. The options as for `queue_task`, without `after`."""
        joining = self._joining(options)
        added = 0
        iterator = iter(descriptions)
        while chunk := list(itertools.islice(iterator, PAGE_SIZE)):
            added += len(self.queue.queue_many(chunk, **joining))
        return added

    def close(self) -> None:
        """No more tasks join; the batch finishes once all of its tasks have ended."""
        if not self.dispatch.close_batch(self.id):
            raise NotFound(f"batch {self.id} does not exist")

    def cancel(self, by: str | None = None) -> int:
        """Close the batch and cancel each of its tasks that has not ended; returns how many were cancelled."""
        return cancel_batch(self.dispatch, self.id, by)

    def progress(self) -> BatchProgress:
        row = self.dispatch.store.workflows.find_batch(self.id)
        if row is None:
            raise NotFound(f"batch {self.id} does not exist")
        state = "finished" if row.finished else "running" if row.closed else "open"
        callbacks = {which: getattr(row, f"{which}_id") for which in CALLBACKS
                     if getattr(row, f"{which}_task") is not None}
        if row.finished:
            # Its counters: task-cleanup may have deleted the done rows of a finished batch.
            done, failed, pending = row.done, row.failures, 0
            cancelled = row.total - done - failed
        else:
            counts = self.dispatch.store.workflows.count_batch(self.id)  # its rows are all kept while it runs
            done, failed = counts.get(Status.DONE, 0), sum(counts.get(status, 0) for status in FAILURES)
            cancelled, pending = counts.get(Status.CANCELLED, 0), sum(counts.get(status, 0) for status in PENDING)
        running = {} if row.finished else {
            task_id: json.loads(progress) for task_id, _, _, progress in
            self.dispatch.store.tasks.progress_of_working(RUNNING_SHOWN, self.id)}
        return BatchProgress(row.id, row.name, state, row.total, done, failed, cancelled, pending, row.created,
                             row.closed, row.finished, row.cancelled_by, callbacks, running)

    def _joining(self, options: QueueKeywords) -> QueueKeywords:
        if "batch" in options:
            raise InvalidInput(f"batch {self.id}'s add and add_many take no batch=: the task joins this batch")
        return {**options, "batch": self.id}

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Closed even when planning failed part way: the tasks already queued run, and the batch can finish.
        self.close()
