"""Cancelling tasks: `pheanq cancel ID…`, `cancel_task`, `cancel_batch`.

A task that has not started is moved to `cancelled` and its job deleted (a job reserved by a worker at
that moment is deleted by the worker, whose claim finds the task cancelled). For a running task the cancel
is requested: its worker reads the task's row every second while the command runs, stops the command when
it sees the request (pheanq.worker.holds) and ends the task `cancelled`, its attempt's entry and exit code
kept. A command that completed before it could be stopped did the work: the task ends `done`, and the log
says the cancel came too late. Either way the log says who cancelled it and when, and the task's end
releases or fails what waits on it like any other end.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket

from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput, NotFound
from pheanq.limits import MAX_NAME, PAGE_SIZE
from pheanq.status import PENDING, Status


@dataclasses.dataclass(frozen=True)
class CancelResult:
    task_id: int
    cancelled: bool
    was: Status          # the status the task had when the cancel came
    message: str


def canceller(by: str | None) -> str:
    """Who cancels, for the log and the batch row: `by`, checked, or `user@host`."""
    if by is None:
        return who_cancels()
    if not isinstance(by, str) or not 0 < len(by) <= MAX_NAME:
        raise InvalidInput(f"who cancels (--by) must be a text of 1 to {MAX_NAME} characters, not {by!r}")
    if not by.isprintable():
        # It goes into the task's log: a newline would start a line that reads as one of pheanq's entries.
        raise InvalidInput(f"who cancels (--by) must be printable text, without a newline or control "
                           f"character: {by!r}")
    return by


def who_cancels() -> str:
    """`user@host`, for the log line of a cancel made without `by=`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cancel_task(dispatch: Dispatcher, task_id: int, by: str | None = None) -> CancelResult:
    """Cancel one task that has not ended; NotFound when it does not exist."""
    found = dispatch.cancel_page([task_id], canceller(by))
    if not found:
        raise NotFound(f"task {task_id} does not exist")
    row = found[0].row
    if not found[0].took:
        return CancelResult(task_id, False, row.status, f"task {task_id} is {row.status}: it has ended, "
                                                        "nothing to cancel")
    if row.status is Status.WORKING:
        return CancelResult(task_id, True, row.status,
                            f"task {task_id}: cancel requested; its worker ({row.worker}) stops the running command "
                            "and ends the task cancelled (done, if the command completes first)")
    return CancelResult(task_id, True, row.status, f"task {task_id} cancelled (it was {row.status})")


def cancel_batch(dispatch: Dispatcher, batch_id: int, by: str | None = None) -> int:
    """Close the batch and cancel each of its tasks that has not ended, page by page; returns how many were
    cancelled. The batch then finishes (its `finally` callback runs; `then` does not, as not all are done)."""
    by = canceller(by)
    if not dispatch.close_batch(batch_id, cancelled_by=by):
        raise NotFound(f"batch {batch_id} does not exist")
    cancelled = 0
    after_id = 0
    while ids := dispatch.store.workflows.batch_task_ids(batch_id, after_id, PAGE_SIZE, sorted(PENDING)):
        after_id = ids[-1]
        cancelled += sum(result.took for result in dispatch.cancel_page(ids, by, batch_id))
    return cancelled
