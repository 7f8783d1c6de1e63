"""What may stop a task's command while it runs, each asked every poll: the worker's holds on the task (its
lease and its job's reservation), the task's own time limit, and a cancel.

Each is a `reason_to_stop()` that returns None while the command may go on, or why it must stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pheanq.dispatch import WorkPackage
from pheanq.errors import StoreUnavailable, TubeUnavailable
from pheanq.lease import heartbeat_interval, holder_must_stop_after
from pheanq.status import Status
from pheanq.worker.claims import TaskClaims

log = logging.getLogger("pheanq.worker")

# How often a worker looks whether the task it runs was cancelled.
CANCEL_CHECK_SECONDS = 1.0
# What a worker says of the command it stopped because its task was cancelled.
CANCELLED = "the task was cancelled"

StopReason = Callable[[], str | None]


def lease_interval(package: WorkPackage) -> float:
    """How often the task's lease on its row is renewed and its job touched (see pheanq.lease)."""
    return heartbeat_interval(package.row.ttr)


class LeaseHold:
    """While the child runs: renew the task's lease and touch its job; say when the child must stop.

    Either hold keeps the task this attempt's: the lease on the row (no claim takes over a task
    whose lease is renewed) or the beanstalkd reservation (no other worker can get a reserved job,
    and the reconciler leaves a task whose job is alive alone). So a restarted beanstalkd, or a
    database outage, alone does not stop the child. Only when both holds fail for long enough is it
    stopped, in time for no other worker to start the task while this child still runs.
    """

    def __init__(self, claims: TaskClaims, package: WorkPackage, interrupted: Callable[[], bool]) -> None:
        self.claims = claims
        self.package = package
        self.interrupted = interrupted
        self.interval = lease_interval(package)
        self.deadline_after = holder_must_stop_after(package.row.ttr)
        self.next_renewal = time.monotonic() + self.interval
        self.renewed = self.reserved = time.monotonic()
        self.job_lost = False

    def reason_to_stop(self) -> str | None:
        if self.interrupted():
            return "the worker was interrupted (SIGINT)"
        now = time.monotonic()
        if now < self.next_renewal:
            return None
        self.next_renewal = now + self.interval
        lease_problem = None
        try:
            if not self.claims.renew_lease(self.package):
                return "the task is no longer held by this attempt (another worker took it over)"
            self.renewed = now
        except StoreUnavailable as error:
            lease_problem = str(error)
        # A reservation once lost never comes back, and a touch may not hold up the next renewal of the lease: a
        # server cut off by the network would make the lease go stale while this child still runs.
        if not self.job_lost:
            try:
                if self.claims.touch(self.package, within=self.interval / 2):
                    self.reserved = now
                else:
                    self._note_job_lost("beanstalkd no longer has it reserved for this worker")
            except TubeUnavailable as error:
                self._note_job_lost(str(error))
        if lease_problem is not None:
            held_for = now - max(self.renewed, self.reserved)
            if held_for >= self.deadline_after:
                return f"neither the task's lease ({lease_problem}) nor its job's reservation could be " \
                       f"renewed for {held_for:.0f}s, so another worker may take the task over"
            log.warning("task %d: lease not renewed (%s)%s", self.package.task_id, lease_problem,
                        "; its job is still reserved" if self.reserved == now else
                        f"; the child goes on for up to {self.deadline_after - held_for:.0f}s more")
        return None

    def _note_job_lost(self, why: str) -> None:
        if not self.job_lost:
            log.warning("task %d: lost the reservation of job %d (%s); the task's lease keeps it",
                        self.package.task_id, self.package.job_id, why)
        self.job_lost = True


class CancelWatch:
    """For a worker running a task: says, at most every CANCEL_CHECK_SECONDS, whether the task was cancelled."""

    def __init__(self, claims: TaskClaims, package: WorkPackage) -> None:
        self.claims = claims
        self.package = package
        self.cancelled = False
        self._next = time.monotonic() + CANCEL_CHECK_SECONDS

    def reason_to_stop(self) -> str | None:
        if self.cancelled:
            return CANCELLED
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + CANCEL_CHECK_SECONDS
        try:
            row = self.claims.dispatch.store.tasks.find_task(self.package.task_id)
        except StoreUnavailable:
            return None  # the lease logic deals with outages
        self.cancelled = row is not None and (row.cancel_requested_by is not None or row.status is Status.CANCELLED)
        return CANCELLED if self.cancelled else None


def with_time_limit(timeout: int | None, keep_running: StopReason) -> StopReason:
    """`keep_running` that also says stop once `timeout` seconds have passed (from now): a task's own time
    limit, ``queue_task(..., timeout=S)``. It is independent of the TTR, which only says how long a worker
    may hold the job between two renewals; the worker keeps renewing that while the command runs."""
    if timeout is None:
        return keep_running
    deadline = time.monotonic() + timeout
    reason = timed_out(timeout)

    def keep_running_in_time() -> str | None:
        return reason if time.monotonic() >= deadline else keep_running()

    return keep_running_in_time


def timed_out(timeout: int) -> str:
    """Why a command was stopped at its time limit (the log says it; execution recognises it)."""
    return f"timed out: the task may run {timeout}s"
