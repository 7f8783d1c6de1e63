"""Every status a task can have and every move between them, in one table.

The store derives its compare-and-set conditions from this table, and the
README shows the same table; a new status or move is added here first.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    NEW = "new"
    WORKING = "working"
    DONE = "done"
    FAILED = "failed"
    RESTARTED = "restarted"
    STALLED = "stalled"
    WAITING = "waiting"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"

    def __str__(self) -> str:
        return self.value


# (from, to) -> why the move happens. A move not listed here never happens.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Status.NEW, Status.WORKING): "a worker claimed the task",
    (Status.RESTARTED, Status.WORKING): "a worker claimed the regenerated task",
    (Status.STALLED, Status.WORKING): "a worker claimed the stalled task",
    (Status.WORKING, Status.WORKING): "a worker took over a task whose holder stopped renewing its lease",
    (Status.WORKING, Status.DONE): "the command exited with code 0",
    (Status.WORKING, Status.FAILED): "the command exited non-zero, was killed, ran past its timeout, or is not "
                                     "registered",
    (Status.WORKING, Status.NEW): "the worker was interrupted (SIGINT) or lost its reservation; job released",
    (Status.WORKING, Status.STALLED): "the worker holding the task died, or its lease went stale and its job is "
                                      "gone; the task is sent again",
    (Status.STALLED, Status.DONE): "the stalled attempt's result arrived late, before another claim: exit code 0",
    (Status.STALLED, Status.FAILED): "the stalled attempt's result arrived late, before another claim: it failed",
    (Status.FAILED, Status.RESTARTED): "regenerate-failed-task put the task back into its tube",
    (Status.WORKING, Status.RETRYING): "the command failed with attempts left and an exit code not declared "
                                       "non-retryable; its job waits out the backoff delay",
    (Status.STALLED, Status.RETRYING): "the stalled attempt's result arrived late: it failed with attempts left",
    (Status.RETRYING, Status.WORKING): "a worker claimed the task for its next attempt",
    (Status.WAITING, Status.NEW): "every task it waits for is done; its job is put into its tube",
    (Status.WAITING, Status.UPSTREAM_FAILED): "a task it waits for failed, was cancelled or could not run; "
                                              "the log names it",
    **{(source, Status.CANCELLED): "pheanq cancel (or cancel_task, cancel_batch)" for source in (
        Status.NEW, Status.WAITING, Status.RETRYING, Status.RESTARTED, Status.STALLED)},
    (Status.WORKING, Status.CANCELLED): "its worker stopped the command after a cancel was requested, or the "
                                        "attempt ended otherwise (failed, stalled, handed back) after one was",
}

# Statuses in which a task still has to run: a job for it may be claimed.
CLAIMABLE: frozenset[Status] = frozenset(
    source for (source, target) in TRANSITIONS if target is Status.WORKING and source is not Status.WORKING
)

# Statuses a task never leaves by itself; only cleanup or a person acts on them.
FINAL: frozenset[Status] = frozenset(
    status for status in Status if not any(source is status for (source, _) in TRANSITIONS)
) | {Status.FAILED}


# Statuses in which a task has not ended: it holds its unique key and counts as pending in its batch.
PENDING: frozenset[Status] = frozenset(Status) - FINAL

# The ends that count as a failure: a dependant of such a task never runs, and a batch runs its `catch`.
FAILURES: frozenset[Status] = frozenset({Status.FAILED, Status.UPSTREAM_FAILED})


def can_move(source: Status, target: Status) -> bool:
    return (source, target) in TRANSITIONS


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses from which a task may move to `target`."""
    return frozenset(source for (source, to) in TRANSITIONS if to is target)
