"""`TaskQueueService`: the one place that writes to both the task table and beanstalkd."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pheanq.after_commit import send_after_commit
from pheanq.clock import utc_now
from pheanq.config import Settings, check_tube_name, load_settings
from pheanq.description import (
    MalformedBody,
    TaskDescription,
    decode_body,
    decode_data,
    encode_body,
    encode_data,
)
from pheanq.errors import (
    InvalidInput,
    NotFound,
    StoreUnavailable,
    TaskNotSent,
    TaskPendingWarning,
    TubeUnavailable,
    WrongStatus,
    check_whole_number,
)
from pheanq.lease import stale_after
from pheanq.retry import Retry, after_failure
from pheanq.schedule import put_delay, run_at_of
from pheanq.service_flow import WorkflowService
from pheanq.status import Status
from pheanq.store import ClaimOutcome, NewTask, Store
from pheanq.tables import BuriedRow, PoolRow, TaskRow
from pheanq.tube import JobInfo, ReservedJob, Tube

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("pheanq.service")

# After a put that failed slowly (a timeout, not a refused connection), how long queue_task records tasks as
# pending without trying beanstalkd again.
PUT_RETRY_SECONDS = 5.0
SLOW_FAILURE_SECONDS = 0.5
# At most this many of its own pending tasks a service remembers, to send them itself once a put works again.
MAX_OWN_PENDING = 10_000
# How long a job whose task is held under a live lease waits before it is looked at again.
HELD_RECHECK_SECONDS = 3

DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 60
MAX_PRIORITY = 2**32 - 1
MAX_TIMEOUT = 2**31 - 1
MAX_UNIQUE_KEY = 191
# A job with this id can never exist; it sizes a body before the real id is known.
_LARGEST_ID = 2**63 - 1
# How much of a buried job's body is kept beside its reason.
BURIED_BODY_PREVIEW = 2000


@dataclasses.dataclass(frozen=True)
class WorkPackage:
    """A claimed task: the reserved job, the row as claimed and the description to run."""

    job_id: int
    row: TaskRow
    description: TaskDescription

    @property
    def task_id(self) -> int:
        return self.row.id

    @property
    def attempt(self) -> int:
        return self.row.attempts


@dataclasses.dataclass(frozen=True)
class PlannedJob:
    """A recorded task's job, as it is to be put into its tube."""

    task_id: int
    description: TaskDescription
    tube: str
    priority: int
    run_at: dt.datetime | None
    ttr: int
    timeout: int | None = None

    @classmethod
    def of(cls, row: TaskRow) -> PlannedJob:
        return cls(row.id, decode_data(row.data), row.tube, row.priority, row.run_at, row.ttr, row.timeout)


class TaskQueueService(WorkflowService):
    def __init__(self, settings: Settings, store: Store | None = None, tube: Tube | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.tube = tube or Tube(settings.beanstalkd)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._tube_down_until = 0.0
        self._tube_down_reason = ""
        self._own_pending: list[PlannedJob] = []
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        self.tube.close()
        self.store.close()

    def queue_task(self, description: TaskDescription, tube: str | None = None, priority: int = DEFAULT_PRIORITY,
                   delay: int = 0, ttr: int = DEFAULT_TTR, session: Session | None = None,
                   timeout: int | None = None, run_at: dt.datetime | None = None, retry: Retry | None = None,
                   unique_key: str | None = None, after: Iterable[int] = (), batch: int | None = None) -> int:
        """Record the task as `new`, then put its job; returns the task id.

        `timeout`: seconds the command may run; then its worker stops it and the attempt fails.
        `delay` (seconds) or `run_at` (a timezone-aware datetime): not to run before then.
        `retry`: how many attempts, and the backoff between them (see pheanq.retry).
        `unique_key`: while a task queued with this key has not ended, its id is returned instead.
        `after`: ids of tasks that must all be done first; the task is `waiting` until then.
        `batch`: the id of an open batch (see pheanq.batch) the task joins.

        With `session`, the row is written in that SQLAlchemy session's transaction and the job is put
        only after it commits (a rollback sends nothing). When beanstalkd does not take the job, the
        task is kept as `new` with no job, a `TaskPendingWarning` is issued, and the reconciler sends it
        later: a task whose id was returned is never lost.
        """
        job, task = self._plan(description, tube, priority, delay, ttr, timeout, run_at, retry, unique_key, after,
                               batch)
        if session is not None:
            if after or batch is not None:
                raise InvalidInput("queue_task(session=...) cannot be combined with after= or batch=")
            return send_after_commit(self, session, job, task)
        return self._send_inserted(job, self.store.insert_task(task))

    def _plan(self, description: TaskDescription, tube: str | None = None, priority: int = DEFAULT_PRIORITY,
              delay: int = 0, ttr: int = DEFAULT_TTR, timeout: int | None = None, run_at: dt.datetime | None = None,
              retry: Retry | None = None, unique_key: str | None = None, after: Iterable[int] = (),
              batch: int | None = None) -> tuple[PlannedJob, NewTask]:
        """Check what queue_task was given; the job to put and the row to insert."""
        if not isinstance(description, TaskDescription):
            raise InvalidInput(f"queue_task takes a TaskDescription, not {type(description).__name__}")
        tube = check_tube_name(tube or description.tube or self.settings.default_tube)
        check_whole_number("priority", priority, 0, MAX_PRIORITY)
        check_whole_number("delay", delay, 0, MAX_PRIORITY)
        check_whole_number("ttr", ttr, 1, MAX_PRIORITY)
        if timeout is not None:
            check_whole_number("timeout", timeout, 1, MAX_TIMEOUT)
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInput(f"retry must be a pheanq.Retry, not {type(retry).__name__}")
        after = tuple(after)
        for parent in after:
            check_whole_number("a task id to wait for", parent, 1, _LARGEST_ID)
        if batch is not None:
            check_whole_number("batch", batch, 1, _LARGEST_ID)
        if unique_key is not None and (not isinstance(unique_key, str) or not 0 < len(unique_key) <= MAX_UNIQUE_KEY):
            raise InvalidInput(f"unique_key must be a text of 1 to {MAX_UNIQUE_KEY} characters, not {unique_key!r}")
        self._encode(_LARGEST_ID, description)  # too big a body is refused before anything is written
        job = PlannedJob(0, description, tube, priority, run_at_of(delay, run_at, utc_now()), ttr, timeout)
        return job, NewTask(description.command, encode_data(description), tube, priority, ttr, timeout, job.run_at,
                            None if retry is None else retry.to_json(), unique_key, batch, after)

    def send(self, job: PlannedJob) -> bool:
        """Put the job of a recorded task; False, with a TaskPendingWarning, when beanstalkd did not take it.

        After a put that failed slowly (an unreachable host costs the connect timeout), beanstalkd is left
        alone for PUT_RETRY_SECONDS and tasks are recorded as pending meanwhile, so an application queueing
        many tasks is not held up for each. Once a put works again, the service sends the tasks it left
        pending itself, without waiting for the reconciler.
        """
        reason = self._tube_down_reason if time.monotonic() < self._tube_down_until else None
        if reason is None:
            started = time.monotonic()
            try:
                job_id = self._put(job)
            except TubeUnavailable as error:
                reason = str(error)
                if time.monotonic() - started >= SLOW_FAILURE_SECONDS:
                    self._tube_down_until = time.monotonic() + PUT_RETRY_SECONDS
                    self._tube_down_reason = f"{reason}; not retried for {PUT_RETRY_SECONDS:g}s"
            except InvalidInput:
                # The server's job size limit is below pheanq's: the task can never be sent, so it is taken back.
                self.store.delete_unsent(job.task_id)
                raise
            else:
                self._record_job_id(job.task_id, job_id)
                self._send_own_pending()
                return True
        with self._pending_lock:
            if len(self._own_pending) < MAX_OWN_PENDING:
                self._own_pending.append(job)
        log.warning("task %d is pending: %s", job.task_id, reason)
        warnings.warn(TaskPendingWarning(job.task_id, reason), stacklevel=3)
        return False

    def _send_own_pending(self) -> None:
        """Send the tasks this service left pending, unless the reconciler already has; the row keeps one job."""
        with self._pending_lock:
            if not self._own_pending:
                return
            jobs, self._own_pending = self._own_pending, []
        try:
            unsent = self.store.unsent_task_ids([job.task_id for job in jobs])
            for job in jobs:
                if job.task_id in unsent:
                    job_id = self._put(job)
                    if not self.store.record_job_if(job.task_id, Status.NEW, None, job_id):
                        self.tube.delete(job_id)
        except (StoreUnavailable, TubeUnavailable) as error:
            log.warning("tasks left pending were not all sent (%s); the reconciler will send them", error)

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
        while True:
            job = self.tube.reserve(watched, timeout)
            if job is None:
                return None
            if not still_wanted():
                self.tube.close()  # beanstalkd releases a reserved job, with its own priority, on disconnect
                return None
            try:
                package = self._claim(job)
            except StoreUnavailable:
                # Dropping the connection hands the job back to beanstalkd with its own priority.
                self.tube.close()
                raise
            if package is not None:
                return package

    def mark_done(self, package: WorkPackage, log_text: str | None, exit_code: int = 0) -> bool:
        return self._finish(package, Status.DONE, exit_code, log_text)

    def mark_failed(self, package: WorkPackage, log_text: str | None, exit_code: int | None = None) -> bool:
        """Record a failed attempt: `retrying` after a backoff delay when its retry policy allows another
        attempt, else `failed`."""
        step = after_failure(package.row.retry, package.attempt, exit_code)
        entry = (log_text or "") + step.note or None
        if step.wait is None:
            return self._finish(package, Status.FAILED, exit_code, entry)
        recorded = self.store.retry_task(package.task_id, package.attempt, exit_code, entry or "",
                                         utc_now() + dt.timedelta(seconds=step.wait))
        if not recorded:
            self._drop_job_of_lost_attempt(package)
        elif not self.tube.release(package.job_id, package.row.priority, step.wait):
            # Not reserved by this worker any more: whoever reserves the job finds the task early and delays it.
            log.warning("task %d: retrying, but its job %d was not reserved by this worker any more",
                        package.task_id, package.job_id)
        return recorded

    def release_task(self, package: WorkPackage, log_text: str) -> bool:
        """Give a claimed task back: the row returns to `new` and the job to its tube."""
        recorded = self.store.release_task(package.task_id, package.attempt, log_text)
        if not recorded:
            self._drop_job_of_lost_attempt(package)
        elif not self.tube.release(package.job_id, package.row.priority):
            # Not reserved by this worker any more: another worker may have delayed it while the lease was held.
            self.tube.kick_job(package.job_id)
        return recorded

    def drop_cancelled(self, package: WorkPackage, log_text: str) -> bool:
        """The worker stopped the command of a task cancelled while it ran: note how the attempt ended and
        delete the job."""
        self.store.append_log(package.task_id, Status.CANCELLED, log_text)
        self.tube.delete(package.job_id)
        return True

    def touch(self, package: WorkPackage) -> bool:
        """Renew the job's reservation; False when this worker no longer holds it."""
        return self.tube.touch(package.job_id)

    def live_job_of(self, row: TaskRow) -> JobInfo | None:
        """The task's recorded job if beanstalkd still holds it (in any state) and it is this task's."""
        if row.job_id is None:
            return None
        info = self.tube.inspect(row.job_id)
        if info is None or info.tube != row.tube:
            return None
        try:
            # With a secret, a forged or unsigned body at this id is no job of the task's: it is sent again.
            body = decode_body(info.body, self.settings.secret)
        except MalformedBody:
            return None
        return info if body.task_id == row.id else None

    def send_again(self, row: TaskRow) -> int | None:
        """Put a new job for a task whose job is gone (a `working` one is marked `stalled` first); the new
        job id, or None when the task moved on meanwhile (then no job is left behind)."""
        if row.status is Status.WORKING:
            entry = f"--- attempt {row.attempts}: stalled: its job is gone from beanstalkd and its worker " \
                    f"({row.worker}) stopped renewing its lease; the task is sent again\n"
            if not self.store.stall_task(row.id, row.attempts, entry):
                return None
            status = Status.STALLED
        else:
            status = row.status
        job_id = self._put(PlannedJob.of(row))
        if not self.store.record_job_if(row.id, status, row.job_id, job_id):
            self.tube.delete(job_id)
            return None
        return job_id

    def renew_lease(self, package: WorkPackage) -> bool:
        """Renew the attempt's lease on its row; False when the attempt no longer holds the task."""
        return self.store.renew_lease(package.task_id, package.attempt)

    def regenerate_task(self, task_id: int) -> int:
        """Put a failed task back into its tube as `restarted`; returns the new job id.

        A task left `restarted` without a job (beanstalkd was away when it was regenerated) is sent again.
        """
        row = self.store.restart_task(task_id)
        if row is None:
            found = self.store.find_task(task_id)
            if found is None:
                raise NotFound(f"task {task_id} does not exist")
            if found.status is not Status.RESTARTED or found.job_id is not None:
                raise WrongStatus(f"task {task_id} is {found.status}; only failed tasks can be regenerated")
            row = found
        job = PlannedJob(task_id, decode_data(row.data), row.tube, row.priority, None, row.ttr)  # at once
        try:
            job_id = self._put(job)
        except TubeUnavailable as error:
            raise TaskNotSent(task_id, str(error), Status.RESTARTED.value) from None
        self._record_job_id(task_id, job_id)
        return job_id

    def clean_up_tasks(self, period_seconds: int) -> int:
        """Delete `done` tasks that finished more than `period_seconds` ago; returns how many."""
        check_whole_number("period", period_seconds, 0, 2**40)
        now = utc_now()
        return self.store.delete_done_before(now - dt.timedelta(seconds=period_seconds))

    def status_of(self, task_id: int) -> Status | None:
        row = self.store.find_task(task_id)
        return None if row is None else row.status

    def find_task(self, task_id: int) -> TaskRow:
        row = self.store.find_task(task_id)
        if row is None:
            raise NotFound(f"task {task_id} does not exist")
        return row

    def report_pool(self, host: str, tender_pid: int, rows: list[PoolRow]) -> None:
        """Replace what a worker-tender last reported of its pool (an empty list removes it)."""
        self.store.replace_pool(host, tender_pid, rows)

    def list_pool(self) -> list[PoolRow]:
        return self.store.list_pool()

    def _record_job_id(self, task_id: int, job_id: int) -> None:
        """Note the job id on the row. The job is already out: failing here must not make the caller
        queue the task again, and the worker that claims the job records the id anyway."""
        try:
            self.store.set_job_id(task_id, job_id)
        except StoreUnavailable as error:
            log.warning("task %d was sent as job %d, but the job id was not recorded: %s", task_id, job_id, error)

    def _claim(self, job: ReservedJob) -> WorkPackage | None:
        try:
            body = decode_body(job.body, self.settings.secret)
        except MalformedBody as error:
            self.bury(job, str(error))
            return None
        if body.description.command not in self.settings.registry():
            # Kept, not failed: after the command is registered (or on a worker that has it), a kick runs it.
            self.bury(job, f"task {body.task_id}: command {body.description.command!r} is not registered on "
                           f"this worker (known: {', '.join(sorted(self.settings.registry())) or 'none'})")
            return None
        claim = self.store.claim_task(body.task_id, job.id, self.worker_name)
        if claim.outcome is ClaimOutcome.MISSING:
            self.bury(job, f"task {body.task_id} has no row in the table")
            return None
        assert claim.row is not None
        if claim.outcome is ClaimOutcome.EARLY:
            wait = put_delay(claim.row.run_at, utc_now())
            log.info("job %d: task %d may not run before %s UTC; the job waits %ds more", job.id, body.task_id,
                     claim.row.run_at, wait)
            self.tube.release(job.id, claim.row.priority, wait)
            return None
        if claim.outcome is ClaimOutcome.HELD_ALIVE:
            # Not the whole lease: the holder's tender may settle the task any moment (it died), and then the
            # job should not sit delayed for long.
            wait = min(HELD_RECHECK_SECONDS, _seconds_until_stale(claim.row))
            log.info("job %d: task %d is still held by %s, whose lease is renewed; the job waits %ds", job.id,
                     body.task_id, claim.row.worker, wait)
            self.tube.release(job.id, claim.row.priority, wait)
            return None
        if claim.outcome is not ClaimOutcome.CLAIMED:
            log.info("deleting job %d without running it: task %d is %s%s", job.id, body.task_id,
                     claim.row.status, f" under job {claim.row.job_id}"
                     if claim.outcome is ClaimOutcome.HELD_ELSEWHERE else "")
            self.tube.delete(job.id)
            return None
        try:
            description = decode_data(claim.row.data)
        except InvalidInput as error:
            self._finish(WorkPackage(job.id, claim.row, body.description), Status.FAILED, None,
                         f"pheanq: the stored description cannot be read: {error}\n")
            return None
        return WorkPackage(job.id, claim.row, description)

    def bury(self, job: ReservedJob, reason: str) -> None:
        """Bury a job that must not run, and note why (the worker carries on)."""
        log.warning("burying job %d: %s", job.id, reason)
        info = self.tube.inspect(job.id)
        self.tube.bury(job.id)
        if info is None:
            return
        try:
            self.store.record_buried(BuriedRow(self.tube.name, info.tube, job.id, reason[:1000],
                                               job.body[:BURIED_BODY_PREVIEW].decode("utf-8", "replace")
                                               .replace("\x00", "\ufffd"), utc_now()))
        except StoreUnavailable as error:
            log.warning("job %d: buried, but its reason was not recorded: %s", job.id, error)

    def _put(self, job: PlannedJob) -> int:
        """Put a recorded task's job, delayed until its run_at (see pheanq.schedule)."""
        return self.tube.put(job.tube, self._encode(job.task_id, job.description), job.priority,
                             put_delay(job.run_at, utc_now()), job.ttr)

    def _drop_job_of_lost_attempt(self, package: WorkPackage) -> None:
        """The attempt no longer owns its task (cancelled, settled by a tender, taken over): delete the job
        rather than leave it reserved until its TTR. A job reserved by whoever took the task over is theirs,
        and beanstalkd refuses to delete it."""
        log.info("task %d: attempt %d no longer owns the task; its job %d is deleted", package.task_id,
                 package.attempt, package.job_id)
        self.tube.delete(package.job_id)

    def _encode(self, task_id: int, description: TaskDescription) -> bytes:
        return encode_body(task_id, description, self.settings.secret)

    def _finish(self, package: WorkPackage, status: Status, exit_code: int | None, log_text: str | None) -> bool:
        settled = self.store.finish_task(package.task_id, package.attempt, status, exit_code, log_text)
        recorded = settled is not None
        if not recorded:
            log.warning("task %d: attempt %d no longer owns the task (taken over); its result (%s) is not "
                        "recorded", package.task_id, package.attempt, status)
        try:
            try:
                self.tube.delete(package.job_id)
            except TubeUnavailable:
                self.tube.delete(package.job_id)  # once more on a new connection: the old one may just have broken
        except TubeUnavailable as error:
            # The row is final; if the job comes back, the claim finds it finished and deletes it unrun.
            log.warning("task %d: recorded as %s, but its job %d was not deleted: %s", package.task_id, status,
                        package.job_id, error)
        if settled is not None:
            self.send_released(settled.released)
        return recorded


_default: tuple[int, TaskQueueService] | None = None
_default_lock = threading.Lock()


def default_service() -> TaskQueueService:
    """The service `pheanq.queue_task()` uses, made from the environment and pheanq.toml on first use."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():  # a forked process gets its own connections
            _default = (os.getpid(), TaskQueueService(load_settings()))
        return _default[1]


def queue_task(description: TaskDescription, tube: str | None = None, priority: int = DEFAULT_PRIORITY,
               delay: int = 0, ttr: int = DEFAULT_TTR, session: Session | None = None,
               timeout: int | None = None, run_at: dt.datetime | None = None, retry: Retry | None = None,
               unique_key: str | None = None, after: Iterable[int] = (), batch: int | None = None) -> int:
    """Queue a task with the default service; see `TaskQueueService.queue_task`."""
    return default_service().queue_task(description, tube=tube, priority=priority, delay=delay, ttr=ttr,
                                        session=session, timeout=timeout, run_at=run_at, retry=retry,
                                        unique_key=unique_key, after=after, batch=batch)


def _seconds_until_stale(row: TaskRow) -> int:
    last = row.heartbeat or row.modified
    return max(1, math.ceil(stale_after(row.ttr) - (utc_now() - last).total_seconds()) + 1)
