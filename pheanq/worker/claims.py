"""A worker's side of its tasks: reserve a job, read its body, claim its task, and record how the attempt
ended. The writes themselves are the dispatcher's (pheanq.dispatch): this module decides which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from pheanq.beanstalkd import ReservedJob
from pheanq.body import decode_body
from pheanq.dispatch import Dispatcher, WorkPackage
from pheanq.errors import MalformedBody, StoreUnavailable, TubeUnavailable
from pheanq.status import Status

log = logging.getLogger("pheanq.worker")


class TaskClaims:
    """Reserve and claim tasks through one dispatcher, and record their attempts' ends."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch
        # A reserved job whose claim failed with the database: the claim may have been committed all the same
        # (only its answer was lost), so the job is kept and its claim tried again before any other.
        self._unresolved: tuple[ReservedJob, list[str]] | None = None

    def reserve_task(self, tubes: str | Iterable[str], timeout: int = 1,
                     still_wanted: Callable[[], bool] = lambda: True) -> WorkPackage | None:
        """Reserve and claim the next task, or None when no job came within `timeout` seconds.

        Jobs that must not run are dealt with on the way: a body that is not ours, or
        names no row, is buried; a job for a finished task, or a duplicate of a held
        one, is deleted without running anything. If `still_wanted()` turns false while
        a job is on its way (the worker got a stop signal), the job is handed back
        unclaimed: the task's row is not touched.
        """
        watched = [tubes] if isinstance(tubes, str) else list(tubes)
        beanstalkd = self.dispatch.beanstalkd
        if self._unresolved is not None:
            package = self.resolve_claim()
            if package is not None:
                return package
        while True:
            job = beanstalkd.reserve(watched, timeout)
            if job is None:
                return None
            if not still_wanted():
                beanstalkd.close()  # beanstalkd releases a reserved job, with its own priority, on disconnect
                return None
            self._unresolved = (job, watched)
            package = self.resolve_claim()
            if package is not None:
                return package

    def resolve_claim(self) -> WorkPackage | None:
        """Claim the task of the job whose claim is unresolved (the database failed during it), if any.

        Trying again is safe: a claim of this worker's that was committed is taken up as it is, the same
        attempt (see pheanq.storage.claims.claim_task); one that was not is made now. While the database is
        away (StoreUnavailable), the job stays reserved and the claim unresolved.
        """
        if self._unresolved is None:
            return None
        job, watched = self._unresolved
        try:
            package = self._claim(job, watched)
        except TubeUnavailable:
            # beanstalkd failed only after the claim was decided: no claim stands, and the reservation went
            # with the connection.
            self._unresolved = None
            raise
        self._unresolved = None
        return package

    def drop_unresolved(self) -> None:
        """Give up an unresolved claim's job (the worker stops while the database is away): beanstalkd gets it
        back when the connection closes. A claim that was committed is taken over once its lease is stale."""
        if self._unresolved is not None:
            self._unresolved = None
            self.dispatch.beanstalkd.close()

    def mark_done(self, package: WorkPackage, log_text: str | None, exit_code: int = 0,
                  result: str | None = None) -> bool:
        return self.dispatch.ends.finish(package, Status.DONE, exit_code, log_text, result=result)

    def mark_failed(self, package: WorkPackage, log_text: str | None, exit_code: int | None = None,
                    errors: Sequence[str] = ()) -> bool:
        """Record a failed attempt: `retrying` after a backoff delay when its retry policy allows another
        attempt (and does not name the Python exception's class in `errors` as not retried), else `failed`."""
        return self.dispatch.ends.fail(package, exit_code, log_text, errors=errors) is not None

    def record_progress(self, package: WorkPackage, progress: str) -> bool:
        """Write a Python task's progress (JSON) to its row while this attempt holds it."""
        return self.dispatch.store.claims.record_progress(package.task_id, package.attempt, progress)

    def release_task(self, package: WorkPackage, log_text: str) -> bool:
        """Give a claimed task back: the row returns to `new` and the job to its tube."""
        return self.dispatch.ends.release(package, log_text)

    def end_cancelled(self, package: WorkPackage, exit_code: int | None, log_text: str) -> bool:
        """The command of a task whose cancel was requested while it ran was stopped: the task ends
        `cancelled`, with the attempt's entry and exit code."""
        return self.dispatch.ends.end_cancelled(package, exit_code, log_text)

    def wake_waiting(self, package: WorkPackage) -> None:
        """The attempt ended: wake a job that waits for a concurrency place it held (pheanq.task_limits). Only
        an optimisation (the job comes back by itself after its backoff), so an outage is logged, not raised."""
        try:
            self.dispatch.wake_waiting(package.row)
        except (StoreUnavailable, TubeUnavailable) as error:
            log.info("task %d: a job waiting for its place was not woken: %s", package.task_id, error)

    def touch(self, package: WorkPackage) -> bool:
        """Renew the job's reservation; False when this worker no longer holds it."""
        return self.dispatch.beanstalkd.touch(package.job_id)

    def renew_lease(self, package: WorkPackage) -> bool:
        """Renew the attempt's lease on its row; False when the attempt no longer holds the task."""
        return self.dispatch.store.claims.renew_lease(package.task_id, package.attempt)

    def _claim(self, job: ReservedJob, tubes: list[str]) -> WorkPackage | None:
        try:
            body = decode_body(job.body, self.dispatch.settings.secret)
        except MalformedBody as error:
            self.dispatch.bury(job, str(error))
            return None
        # What runs is the row's command, not the body's: whether it may run here is decided on the row.
        return self.dispatch.claim(job, body, tubes)
