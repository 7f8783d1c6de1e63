"""What may stop a task's command while it runs, each asked every poll: the worker's holds on the task (its
lease and its job's reservation), the task's own time limit, and a cancel.

Each is a `reason_to_stop()` that returns None while the command may go on, or why it must stop.
"""

from __future__ import annotations

import logging
import threading
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

    Each hold is renewed on a thread of its own, and `reason_to_stop` only reads what they found: on a link cut
    silently (a pulled cable), a renewal waits on TCP for up to the connection's timeout, and the child must be
    stopped by the clock meanwhile, not when the renewal gives up; nor may a touch of a server cut off hold up the
    lease.
    """

    def __init__(self, claims: TaskClaims, package: WorkPackage, interrupted: Callable[[], bool]) -> None:
        self.claims = claims
        self.package = package
        self.interrupted = interrupted
        self.interval = lease_interval(package)
        self.deadline_after = holder_must_stop_after(package.row.ttr)
        self.renewed = self.reserved = time.monotonic()
        self.job_lost = False
        self.taken_over = False
        self.lease_problem: str | None = None
        self._renewals = [_Repeating(self.interval, self._renew_lease, f"pheanq-lease-{package.task_id}"),
                          _Repeating(self.interval, self._touch_job, f"pheanq-touch-{package.task_id}")]

    def reason_to_stop(self) -> str | None:
        for renewals in self._renewals:
            renewals.poke()
        if self.interrupted():
            return "the worker was interrupted (SIGINT)"
        if self.taken_over:
            return "the task is no longer held by this attempt (another worker took it over)"
        held_for = time.monotonic() - max(self.renewed, self.reserved)
        if held_for >= self.deadline_after:
            return f"neither the task's lease ({self.lease_problem or 'the database did not answer'}) nor its " \
                   f"job's reservation could be renewed for {held_for:.0f}s, so another worker may take the task over"
        return None

    def close(self) -> None:
        """The attempt ended: no more renewals (one under way is left to end on its own)."""
        for renewals in self._renewals:
            renewals.stop()

    def _renew_lease(self) -> bool:
        """Renew the lease on the row, on its thread; False once the task is no longer this attempt's."""
        started = time.monotonic()
        try:
            if not self.claims.renew_lease(self.package):
                self.taken_over = True
                return False
        except StoreUnavailable as error:
            self.lease_problem = str(error)
            held_for = time.monotonic() - max(self.renewed, self.reserved)
            still_reserved = not self.job_lost and time.monotonic() - self.reserved < 2 * self.interval
            log.warning("task %d: lease not renewed (%s)%s", self.package.task_id, self.lease_problem,
                        "; its job is still reserved" if still_reserved else
                        f"; the child goes on for up to {max(0.0, self.deadline_after - held_for):.0f}s more")
            return True
        self.renewed = started
        self.lease_problem = None
        return True

    def _touch_job(self) -> bool:
        """Touch the job, on a thread of its own (a server cut off makes a touch wait); False once the reservation
        is lost, which never comes back."""
        started = time.monotonic()
        try:
            if self.claims.touch(self.package):
                self.reserved = started
                return True
            self._note_job_lost("beanstalkd no longer has it reserved for this worker")
        except TubeUnavailable as error:
            self._note_job_lost(str(error))
        return False

    def _note_job_lost(self, why: str) -> None:
        if not self.job_lost:
            log.warning("task %d: lost the reservation of job %d (%s); the task's lease keeps it",
                        self.package.task_id, self.package.job_id, why)
        self.job_lost = True


class CancelWatch:
    """For a worker running a task: says whether the task was cancelled, looked up every CANCEL_CHECK_SECONDS on a
    thread of its own (a lookup that hangs on a cut link must not hold up the lease's clock)."""

    def __init__(self, claims: TaskClaims, package: WorkPackage) -> None:
        self.claims = claims
        self.package = package
        self.cancelled = False
        self._lookups = _Repeating(CANCEL_CHECK_SECONDS, self._look, f"pheanq-cancel-{package.task_id}")

    def reason_to_stop(self) -> str | None:
        self._lookups.poke()
        return CANCELLED if self.cancelled else None

    def close(self) -> None:
        self._lookups.stop()

    def _look(self) -> bool:
        try:
            row = self.claims.dispatch.store.tasks.find_task(self.package.task_id)
        except StoreUnavailable:
            return True  # the lease logic deals with outages
        self.cancelled = row is not None and (row.cancel_requested_by is not None or row.status is Status.CANCELLED)
        return not self.cancelled


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


class _Repeating:
    """`step()` every `interval` seconds on a daemon thread, until it returns False or `stop()` is called. The
    thread starts at the first `poke()` after one interval: a task shorter than that costs no thread at all."""

    def __init__(self, interval: float, step: Callable[[], bool], name: str) -> None:
        self._interval = interval
        self._step = step
        self._name = name
        self._due = time.monotonic() + interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        if self._thread is None and time.monotonic() >= self._due and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception as error:  # a thread's error must not pass silently, nor end the holds' clock
                log.error("%s: %s: %s", self._name, type(error).__name__, error)
            if self._stopped.wait(self._interval):
                return
