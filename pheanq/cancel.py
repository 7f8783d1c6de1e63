"""Cancelling tasks: `pheanq cancel ID…`, `cancel_task`, `cancel_batch`, and the watch a worker keeps on
the task it runs.

A task that has not started is moved to `cancelled` and its job deleted (a job reserved by a worker at
that moment is deleted by the worker, whose claim finds the task cancelled). A running task is moved to
`cancelled` at once; its worker reads the task's status every CHECK_SECONDS while the command runs and
stops the command when it sees the cancel. Either way the log says who cancelled it and when, and the
task's end releases or fails what waits on it like any other end.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import socket
import time
from typing import TYPE_CHECKING

from pheanq.clock import utc_now
from pheanq.errors import NotFound, StoreUnavailable, TubeUnavailable
from pheanq.status import PENDING, Status

if TYPE_CHECKING:
    from pheanq.service import TaskQueueService, WorkPackage
    from pheanq.store_flow import Cancelled

log = logging.getLogger("pheanq.cancel")

# How often a worker looks whether the task it runs was cancelled.
CHECK_SECONDS = 1.0
# What a worker says of the command it stopped because its task was cancelled.
CANCELLED = "the task was cancelled"
# A batch is cancelled this many tasks per transaction.
PAGE_SIZE = 500


@dataclasses.dataclass(frozen=True)
class CancelResult:
    task_id: int
    cancelled: bool
    was: Status          # the status the task had when the cancel came
    message: str


def who_cancels() -> str:
    """`user@host`, for the log line of a cancel made without `by=`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cancel_task(service: TaskQueueService, task_id: int, by: str | None = None) -> CancelResult:
    """Cancel one task that has not ended; NotFound when it does not exist."""
    by = by or who_cancels()
    now = utc_now()
    entry = f"--- cancelled by {by} at {now:%Y-%m-%d %H:%M:%S} UTC\n"
    found = _cancel_page(service, [task_id], entry)
    if not found:
        raise NotFound(f"task {task_id} does not exist")
    row = found[0].row
    if not found[0].took:
        return CancelResult(task_id, False, row.status, f"task {task_id} is {row.status}: it has ended, "
                                                        "nothing to cancel")
    if row.status is Status.WORKING:
        return CancelResult(task_id, True, row.status,
                            f"task {task_id} cancelled; its worker ({row.worker}) stops the running command")
    return CancelResult(task_id, True, row.status, f"task {task_id} cancelled (it was {row.status})")


def _cancel_page(service: TaskQueueService, task_ids: list[int], entry: str) -> list[Cancelled]:
    """Cancel the tasks in one transaction; delete the jobs of those not running (a running one's worker
    deletes its own) and send what their ends released."""
    page = service.store.cancel_tasks(task_ids, entry)
    for result in page.results:
        if result.took and result.row.status is not Status.WORKING and result.row.job_id is not None:
            _delete_job(service, result.row.id, result.row.job_id)
    service.send_released(page.settled.released)
    return page.results


def _delete_job(service: TaskQueueService, task_id: int, job_id: int) -> None:
    try:
        service.tube.delete(job_id)
    except TubeUnavailable as error:
        # If the job comes back, the claim finds the task cancelled and deletes it unrun.
        log.warning("task %d: cancelled, but its job %d was not deleted: %s", task_id, job_id, error)


class CancelWatch:
    """For a worker running a task: says, at most every CHECK_SECONDS, whether the task was cancelled."""

    def __init__(self, service: TaskQueueService, package: WorkPackage) -> None:
        self.service = service
        self.package = package
        self.cancelled = False
        self._next = time.monotonic() + CHECK_SECONDS

    def reason_to_stop(self) -> str | None:
        if self.cancelled:
            return CANCELLED
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + CHECK_SECONDS
        try:
            status = self.service.status_of(self.package.task_id)
        except StoreUnavailable:
            return None  # the lease logic deals with outages
        self.cancelled = status is Status.CANCELLED
        return CANCELLED if self.cancelled else None


def cancel_batch(service: TaskQueueService, batch_id: int, by: str | None = None) -> int:
    """Close the batch and cancel each of its tasks that has not ended, page by page; returns how many were
    cancelled. The batch then finishes (its `finally` callback runs; `then` does not, as not all are done)."""
    by = by or who_cancels()
    if service.store.close_batch(batch_id, cancelled_by=by) is None:
        raise NotFound(f"batch {batch_id} does not exist")
    cancelled = 0
    after_id = 0
    while ids := service.store.batch_task_ids(batch_id, after_id, PAGE_SIZE, sorted(PENDING)):
        after_id = ids[-1]
        entry = f"--- cancelled with batch {batch_id} by {by} at {utc_now():%Y-%m-%d %H:%M:%S} UTC\n"
        cancelled += sum(result.took for result in _cancel_page(service, ids, entry))
    return cancelled
