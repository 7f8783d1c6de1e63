"""The only code that writes a task's row together with its job.

Every change that must keep a task's row and its beanstalkd job in step is a method of `Dispatcher`:
putting the job of a recorded task and noting its id, sending again a task whose job is gone, sending
the tasks that a write released (dependants, batch callbacks), claiming a reserved job's task, ending an
attempt and deleting or releasing its job, cancelling, regenerating, and burying a job that must not run.
The order is always the row first (the truth), then the job; a job whose row write lost is deleted,
never left behind; a row whose job could not be put stays without one, and the reconciler sends it.

Other code reads the table and beanstalkd freely, and may run what touches only one of them (a lease's
heartbeat, a touch, a pause, a buried job's record), but never writes a task's row and its job together.
"""

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
from collections.abc import Iterable, Sequence
from typing import Protocol

from pheanq import tasklog
from pheanq.beanstalkd import BeanstalkdConnection, JobInfo, ReservedJob
from pheanq.body import JobBody, decode_body, decode_data, encode_body
from pheanq.clock import utc_now
from pheanq.config import Settings
from pheanq.description import TaskDescription
from pheanq.errors import (
    InvalidInput,
    MalformedBody,
    NotFound,
    PheanqError,
    StoreUnavailable,
    TaskNotSent,
    TaskPendingWarning,
    TubeUnavailable,
    WrongStatus,
)
from pheanq.lease import stale_after
from pheanq.limits import MAX_BURIED_REASON, MAX_BURIED_RECORDS, body_preview
from pheanq.retry import after_failure
from pheanq.run_at import put_delay
from pheanq.status import Status
from pheanq.storage import Store
from pheanq.storage.tables import BuriedRow, TaskRow
from pheanq.storage.tasks import ClaimOutcome, Inserted, Moved
from pheanq.storage.workflows import Cancelled

log = logging.getLogger("pheanq.dispatch")

# After a put that failed slowly (a timeout, not a refused connection), how long tasks are recorded as
# pending without trying beanstalkd again.
PUT_RETRY_SECONDS = 5.0
SLOW_FAILURE_SECONDS = 0.5
# At most this many of its own pending tasks a dispatcher remembers, to send them itself once a put works again.
MAX_OWN_PENDING = 10_000
# How long a job whose task is held under a live lease waits before it is looked at again.
HELD_RECHECK_SECONDS = 3


@dataclasses.dataclass(frozen=True)
class PlannedJob:
    """A recorded task's job, as it is to be put into its tube."""

    task_id: int
    description: TaskDescription
    tube: str
    priority: int
    run_at: dt.datetime | None
    ttr: int
    nonce: str | None

    @classmethod
    def of(cls, row: TaskRow) -> PlannedJob:
        return cls(row.id, decode_data(row.data), row.tube, row.priority, row.run_at, row.ttr, row.nonce)


class Attempt(Protocol):
    """One attempt at a task, as whoever ends it knows it: the job it held and the row as it was claimed."""

    @property
    def job_id(self) -> int | None: ...

    @property
    def row(self) -> TaskRow: ...


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


class Dispatcher:
    """The task table and beanstalkd of one process, and every write that changes both."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 beanstalkd: BeanstalkdConnection | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.beanstalkd = beanstalkd or BeanstalkdConnection(settings.beanstalkd)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._beanstalkd_down_until = 0.0
        self._beanstalkd_down_reason = ""
        self._own_pending: list[PlannedJob] = []
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        self.beanstalkd.close()
        self.store.close()

    # --- sending the jobs of recorded tasks -----------------------------------------------------------------

    def send(self, job: PlannedJob) -> bool:
        """Put the job of a recorded task; False, with a TaskPendingWarning, when beanstalkd did not take it.

        After a put that failed slowly (an unreachable host costs the connect timeout), beanstalkd is left
        alone for PUT_RETRY_SECONDS and tasks are recorded as pending meanwhile, so an application queueing
        many tasks is not held up for each. Once a put works again, the dispatcher sends the tasks it left
        pending itself, without waiting for the reconciler.
        """
        reason = self._beanstalkd_down_reason if time.monotonic() < self._beanstalkd_down_until else None
        if reason is None:
            started = time.monotonic()
            try:
                job_id = self._put(job)
            except TubeUnavailable as error:
                reason = str(error)
                if time.monotonic() - started >= SLOW_FAILURE_SECONDS:
                    self._beanstalkd_down_until = time.monotonic() + PUT_RETRY_SECONDS
                    self._beanstalkd_down_reason = f"{reason}; not retried for {PUT_RETRY_SECONDS:g}s"
            except InvalidInput:
                # The server's job size limit is below pheanq's: the task can never be sent, so it is taken back.
                self.store.tasks.delete_unsent(job.task_id)
                raise
            else:
                self._record_job_id(job.task_id, job_id)
                self._send_own_pending()
                return True
        with self._pending_lock:
            if len(self._own_pending) < MAX_OWN_PENDING:
                self._own_pending.append(job)
        log.warning("task %d is pending: %s", job.task_id, reason)
        # At the application's line: its call of queue_task or queue_chain, through send_inserted.
        warnings.warn(TaskPendingWarning(job.task_id, reason), stacklevel=4)
        return False

    def send_inserted(self, job: PlannedJob, inserted: Inserted) -> int:
        """After a task's insert: put its job if it is `new`, settle it if it waits for others; its id."""
        if inserted.created and inserted.status is Status.NEW:
            self.send(dataclasses.replace(job, task_id=inserted.task_id))
        elif inserted.created:
            try:
                self.settle_waiting(inserted.task_id)
            except PheanqError as error:
                # The task is committed: its id must reach the caller. The reconciler settles it.
                log.warning("task %d is waiting; settling it failed (%s); the reconciler will", inserted.task_id,
                            error)
        return inserted.task_id

    def send_many(self, jobs: list[PlannedJob]) -> None:
        """Put the jobs of tasks inserted together, and note their ids in one transaction. At the first put
        that fails, the rest are left pending (one TaskPendingWarning): the reconciler sends them."""
        sent: list[tuple[int, int]] = []
        for job in jobs:
            try:
                sent.append((job.task_id, self._put(job)))
            except TubeUnavailable as error:
                unsent = len(jobs) - len(sent)
                log.warning("%d task(s) are pending: %s", unsent, error)
                warnings.warn(TaskPendingWarning(job.task_id, f"{error}; {unsent} task(s) of this chunk are pending"),
                              stacklevel=3)
                break
        self.store.tasks.set_job_ids(sent)

    def send_released(self, task_ids: Iterable[int]) -> None:
        """Put the jobs of tasks that a write moved to `new` (released dependants, batch callbacks). What is
        not sent now (beanstalkd or the database away) is sent by the reconciler: the rows are `new`."""
        for task_id in task_ids:
            try:
                row = self.store.tasks.find_task(task_id)
                if row is not None and row.status is Status.NEW and row.job_id is None:
                    self.send_again(row)
            except (StoreUnavailable, TubeUnavailable) as error:
                log.warning("task %d is ready but not sent yet (%s); the reconciler will send it", task_id, error)

    def send_again(self, row: TaskRow) -> int | None:
        """Put a new job for a task whose job is gone (a `working` one is marked `stalled` first); the new
        job id, or None when the task moved on meanwhile (then no job is left behind)."""
        if row.status is Status.WORKING:
            moved = self.store.tasks.stall_task(row.id, row.attempts, tasklog.stalled(row.attempts, row.worker))
            if moved is None or moved.status is not Status.STALLED:
                if moved is not None:  # a cancel was requested while it ran: it ended instead
                    self._ended_instead(row.id, row.job_id, moved)
                return None
            status = Status.STALLED
        else:
            status = row.status
        job_id = self._put(PlannedJob.of(row))
        if not self.store.tasks.record_job_if(row.id, status, row.job_id, job_id):
            self.beanstalkd.delete(job_id)
            return None
        return job_id

    def live_job_of(self, row: TaskRow) -> JobInfo | None:
        """The task's recorded job if beanstalkd still holds it (in any state) and it is this task's."""
        if row.job_id is None:
            return None
        info = self.beanstalkd.inspect(row.job_id)
        if info is None or info.tube != row.tube:
            return None
        try:
            # With a secret, a forged or unsigned body at this id is no job of the task's: it is sent again.
            body = decode_body(info.body, self.settings.secret)
        except MalformedBody:
            return None
        return info if body.task_id == row.id and body.nonce == row.nonce else None

    def regenerate(self, task_id: int) -> int:
        """Put a failed task back into its tube as `restarted`; returns the new job id.

        A task left `restarted` without a job (beanstalkd was away when it was regenerated) is sent again.
        """
        row = self.store.tasks.restart_task(task_id)
        if row is None:
            found = self.store.tasks.find_task(task_id)
            if found is None:
                raise NotFound(f"task {task_id} does not exist")
            if found.status is not Status.RESTARTED or found.job_id is not None:
                raise WrongStatus(f"task {task_id} is {found.status}; only failed tasks can be regenerated")
            row = found
        job = dataclasses.replace(PlannedJob.of(row), run_at=None)  # at once
        try:
            job_id = self._put(job)
        except TubeUnavailable as error:
            raise TaskNotSent(task_id, str(error), Status.RESTARTED.value) from None
        self._record_job_id(task_id, job_id)
        return job_id

    # --- workflow writes that release tasks -----------------------------------------------------------------

    def settle_waiting(self, task_id: int) -> None:
        """Settle a `waiting` task whose parents may have ended unseen (see WorkflowStatements.settle_waiting)."""
        self.send_released(self.store.workflows.settle_waiting(task_id).released)

    def recount_batch(self, batch_id: int) -> None:
        """Count a batch's unfinished tasks from its rows; finish it (and queue its callbacks) if none is left."""
        self.send_released(self.store.workflows.recount_batch(batch_id).released)

    def close_batch(self, batch_id: int, cancelled_by: str | None = None) -> bool:
        """No more tasks join the batch; False when there is no such batch."""
        settled = self.store.workflows.close_batch(batch_id, cancelled_by)
        if settled is None:
            return False
        self.send_released(settled.released)
        return True

    def cancel_page(self, task_ids: list[int], by: str, batch: int | None = None) -> list[Cancelled]:
        """Cancel the tasks in one transaction (a running one's cancel is requested: its worker ends it); delete
        the jobs of those not running (a running one's worker deletes its own) and send what their ends
        released."""
        page = self.store.workflows.cancel_tasks(task_ids, by, batch)
        for result in page.results:
            if result.took and result.row.status is not Status.WORKING and result.row.job_id is not None:
                self._delete_job(result.row.id, result.row.job_id, "cancelled")
        self.send_released(page.settled.released)
        return page.results

    # --- a reserved job and its attempt ---------------------------------------------------------------------

    def claim(self, job: ReservedJob, body: JobBody, tubes: Sequence[str]) -> WorkPackage | None:
        """Claim the task of a job reserved from one of `tubes` (compare-and-set), or deal with the job when it
        must not run now: buried when it names no row, another row, or a task of another tube or of a command
        this worker may not run; released with a delay when it is early or held under a live lease; deleted when
        its task ended or runs under another job."""
        task_id = body.task_id
        registry = self.settings.registry()
        claim = self.store.tasks.claim_task(task_id, body.nonce, job.id, self.worker_name, tubes, list(registry))
        if claim.outcome is ClaimOutcome.MISSING:
            self.bury(job, f"task {task_id} has no row in the table")
            return None
        assert claim.row is not None
        # Buried, and the task left as it is: its own job (or the reconciler) runs it.
        if claim.outcome is ClaimOutcome.OTHER_ROW:
            self.bury(job, f"the job names task {task_id}, but not the row that has that id now (the row's nonce "
                           f"differs): a job of an earlier task with the same id, or forged; the task is left as it is")
            return None
        if claim.outcome is ClaimOutcome.OTHER_TUBE:
            self.bury(job, f"task {task_id} belongs to tube {claim.row.tube}, not to the tube(s) this worker takes "
                           f"from ({', '.join(tubes)}): its job was moved, or forged; the task is left as it is")
            return None
        if claim.outcome is ClaimOutcome.UNREGISTERED:
            # Kept, not failed: after the command is registered (or on a worker that has it), a kick runs it.
            self.bury(job, f"task {task_id}: command {claim.row.command!r} is not registered on this worker "
                           f"(known: {', '.join(sorted(registry)) or 'none'}); the task is left as it is")
            return None
        if claim.outcome is ClaimOutcome.EARLY:
            wait = put_delay(claim.row.run_at, utc_now())
            log.info("job %d: task %d may not run before %s UTC; the job waits %ds more", job.id, task_id,
                     claim.row.run_at, wait)
            self.beanstalkd.release(job.id, claim.row.priority, wait)
            return None
        if claim.outcome is ClaimOutcome.HELD_ALIVE:
            # Not the whole lease: the holder's tender may settle the task any moment (it died), and then the
            # job should not sit delayed for long.
            wait = min(HELD_RECHECK_SECONDS, _seconds_until_stale(claim.row))
            renewed = (utc_now() - (claim.row.heartbeat or claim.row.modified)).total_seconds()
            log.info("job %d: task %d is still held by %s, whose lease was renewed %.0fs ago; the job waits %ds",
                     job.id, task_id, claim.row.worker, renewed, wait)
            self.beanstalkd.release(job.id, claim.row.priority, wait)
            return None
        if claim.outcome is ClaimOutcome.CANCEL_REQUESTED:
            log.info("job %d: task %d was cancelled while attempt %d ran, and its worker is gone; it ends cancelled",
                     job.id, task_id, claim.row.attempts)
            self.end_requested_cancel(job, claim.row)
            return None
        if claim.outcome is ClaimOutcome.OWN_CLAIM:
            log.info("job %d: task %d was claimed by this worker already (attempt %d), though the claim's answer "
                     "was lost; that attempt goes on", job.id, task_id, claim.row.attempts)
        elif claim.outcome is not ClaimOutcome.CLAIMED:
            log.info("deleting job %d without running it: task %d is %s%s", job.id, task_id,
                     claim.row.status, f" under job {claim.row.job_id}"
                     if claim.outcome is ClaimOutcome.HELD_ELSEWHERE else "")
            self.beanstalkd.delete(job.id)
            return None
        try:
            stored = decode_data(claim.row.data)
        except InvalidInput as error:
            self.finish(WorkPackage(job.id, claim.row, body.description), Status.FAILED, None,
                        f"pheanq: the stored description cannot be read: {error}\n")
            return None
        return WorkPackage(job.id, claim.row, stored)

    def bury(self, job: ReservedJob, reason: str) -> None:
        """Bury a job that must not run, and record why (the worker carries on)."""
        log.warning("burying job %d: %s", job.id, reason)
        info = self.beanstalkd.inspect(job.id)
        self.beanstalkd.bury(job.id)
        if info is None:
            return
        try:
            self.store.admin.record_buried(BuriedRow(self.beanstalkd.server, info.tube, job.id,
                                                     reason[:MAX_BURIED_REASON], body_preview(job.body), utc_now()),
                                           keep=MAX_BURIED_RECORDS)
        except StoreUnavailable as error:
            log.warning("job %d: buried, but its reason was not recorded: %s", job.id, error)

    def finish(self, attempt: Attempt, status: Status, exit_code: int | None, log_text: str | None,
               reserved: bool = True) -> bool:
        """Record the attempt's end (`done`, `failed` or `cancelled`), delete its job, and send what the end
        released; False when the attempt no longer owns the task (its result is not recorded, its log entry
        is). With `reserved` (the caller holds the job), the job is deleted even then: it is this attempt's
        reservation. A `failed` end of an attempt that a cancel was requested for is `cancelled`."""
        return self._end(attempt, status, exit_code, log_text, reserved) is not None

    def fail(self, attempt: Attempt, exit_code: int | None, log_text: str | None,
             reserved: bool = True) -> Status | None:
        """Record a failed attempt: `retrying` after a backoff delay when its retry policy allows another
        attempt, else `failed` (`cancelled` when a cancel was requested while it ran); returns which, or None
        when the attempt no longer owns the task. With `reserved` (the caller holds the job), the job is
        released with that delay; else whoever reserves it next finds the task early and delays it."""
        task_id, number = attempt.row.id, attempt.row.attempts
        step = after_failure(attempt.row.retry, number, exit_code)
        entry = (log_text or "") + step.note or None
        if step.wait is None:
            return self._end(attempt, Status.FAILED, exit_code, entry, reserved)
        moved = self.store.tasks.retry_task(task_id, number, exit_code, entry or "",
                                            utc_now() + dt.timedelta(seconds=step.wait))
        if moved is None:
            self._lost_attempt(attempt, entry, reserved)
            return None
        if moved.status is not Status.RETRYING:
            self._ended_instead(task_id, attempt.job_id if reserved else self._job_named(task_id), moved)
            return moved.status
        if reserved and attempt.job_id is not None and \
                not self.beanstalkd.release(attempt.job_id, attempt.row.priority, step.wait):
            # Not reserved by this worker any more: whoever reserves the job finds the task early and delays it.
            log.warning("task %d: retrying, but its job %d was not reserved by this worker any more",
                        task_id, attempt.job_id)
        return Status.RETRYING

    def release(self, attempt: Attempt, log_text: str) -> bool:
        """Give a claimed task back: the row returns to `new` and the job to its tube (a task whose cancel
        was requested ends `cancelled` instead, and its job is deleted)."""
        moved = self.store.tasks.release_task(attempt.row.id, attempt.row.attempts, log_text)
        if moved is None:
            self._lost_attempt(attempt, log_text, reserved=True)
        elif moved.status is not Status.NEW:
            self._ended_instead(attempt.row.id, attempt.job_id, moved)
        elif attempt.job_id is not None and not self.beanstalkd.release(attempt.job_id, attempt.row.priority):
            # Not reserved by this worker any more: another worker may have delayed it while the lease was held.
            self.beanstalkd.kick_job(attempt.job_id)
        return moved is not None

    def stall(self, attempt: Attempt, log_text: str) -> bool:
        """The attempt's worker died while its command ran: `stalled`, and its job ready to run again at once
        (`cancelled`, its job deleted, when a cancel was requested while it ran); False when the attempt was
        already settled."""
        moved = self.store.tasks.stall_task(attempt.row.id, attempt.row.attempts, log_text)
        if moved is None:
            return False
        job_id = self._job_named(attempt.row.id)
        if moved.status is not Status.STALLED:
            self._ended_instead(attempt.row.id, job_id, moved)
        elif job_id is not None:
            # Another worker may have found the lease still fresh and delayed the job: make it ready now.
            self.beanstalkd.kick_job(job_id)
        return True

    def end_cancelled(self, attempt: Attempt, exit_code: int | None, log_text: str) -> bool:
        """The worker stopped the command of a task whose cancel was requested while it ran: the task ends
        `cancelled`, with the attempt's entry and exit code."""
        return self._end(attempt, Status.CANCELLED, exit_code, log_text, reserved=True) is not None

    def end_requested_cancel(self, job: ReservedJob, row: TaskRow) -> None:
        """A job came back for a task whose holder died after a cancel was requested: it ends `cancelled`."""
        attempt = WorkPackage(job.id, row, decode_data(row.data))
        entry = tasklog.holder_gone(row.attempts, row.worker) + tasklog.ended_by_cancel(row.attempts)
        self._end(attempt, Status.CANCELLED, None, entry, reserved=True)

    # --- helpers --------------------------------------------------------------------------------------------

    def _put(self, job: PlannedJob) -> int:
        """Put a recorded task's job, delayed until its run_at (see pheanq.run_at)."""
        body = encode_body(job.task_id, job.description, self.settings.secret, job.nonce)
        return self.beanstalkd.put(job.tube, body, job.priority, put_delay(job.run_at, utc_now()), job.ttr)

    def _record_job_id(self, task_id: int, job_id: int) -> None:
        """Note the job id on the row. The job is already out: failing here must not make the caller
        queue the task again, and the worker that claims the job records the id anyway."""
        try:
            self.store.tasks.set_job_id(task_id, job_id)
        except StoreUnavailable as error:
            log.warning("task %d was sent as job %d, but the job id was not recorded: %s", task_id, job_id, error)

    def _send_own_pending(self) -> None:
        """Send the tasks this dispatcher left pending, unless the reconciler already has; the row keeps one job."""
        with self._pending_lock:
            if not self._own_pending:
                return
            jobs, self._own_pending = self._own_pending, []
        try:
            unsent = self.store.tasks.unsent_task_ids([job.task_id for job in jobs])
            for job in jobs:
                if job.task_id in unsent:
                    job_id = self._put(job)
                    if not self.store.tasks.record_job_if(job.task_id, Status.NEW, None, job_id):
                        self.beanstalkd.delete(job_id)
        except (StoreUnavailable, TubeUnavailable) as error:
            log.warning("tasks left pending were not all sent (%s); the reconciler will send them", error)

    def _end(self, attempt: Attempt, status: Status, exit_code: int | None, log_text: str | None,
             reserved: bool) -> Status | None:
        """Record an attempt's end; the status it ended in, or None when the attempt no longer owns the task."""
        task_id, number = attempt.row.id, attempt.row.attempts
        moved = self.store.tasks.finish_task(task_id, number, status, exit_code, log_text)
        if moved is None:
            self._lost_attempt(attempt, log_text, reserved)
            return None
        # Not held by the caller: the job is the one the row names now (the reconciler may have sent the task
        # again, as a stalled one, between the caller's read and this end).
        job_id = attempt.job_id if reserved else self._job_named(task_id)
        if job_id is not None:
            # The row is final; if the job comes back, the claim finds it finished and deletes it unrun.
            self._delete_job(task_id, job_id, f"recorded as {moved.status}")
        self.send_released(moved.settled.released)
        return moved.status

    def _ended_instead(self, task_id: int, job_id: int | None, moved: Moved) -> None:
        """A move ended the task instead (a cancel was requested while its attempt ran): delete its job and send
        what the end released."""
        log.info("task %d: ended %s: a cancel was requested while it ran", task_id, moved.status)
        if job_id is not None:
            self._delete_job(task_id, job_id, f"recorded as {moved.status}")
        self.send_released(moved.settled.released)

    def _job_named(self, task_id: int) -> int | None:
        row = self.store.tasks.find_task(task_id)
        return None if row is None else row.job_id

    def _lost_attempt(self, attempt: Attempt, log_text: str | None, reserved: bool) -> None:
        """The attempt no longer owns its task (its holder's lease went stale and another attempt took it over,
        or a tender settled it): its result is not recorded, but its log entry is, and a job it holds is
        deleted."""
        task_id, number = attempt.row.id, attempt.row.attempts
        row = self.store.tasks.find_task(task_id)
        now = "gone" if row is None else f"{row.status}, at attempt {row.attempts}"
        log.warning("task %d: attempt %d no longer holds the task (it is %s); its end is added to the task's log, "
                    "its status is not changed", task_id, number, now)
        if row is not None and log_text:
            self.store.tasks.append_attempt_log(task_id, log_text)
        if reserved:
            self._delete_job_of_lost_attempt(attempt)

    def _delete_job_of_lost_attempt(self, attempt: Attempt) -> None:
        """The attempt no longer owns its task (cancelled, settled by a tender, taken over): delete the job
        rather than leave it reserved until its TTR. A job reserved by whoever took the task over is theirs,
        and beanstalkd refuses to delete it."""
        if attempt.job_id is None:
            return
        log.info("task %d: attempt %d no longer owns the task; its job %d is deleted", attempt.row.id,
                 attempt.row.attempts, attempt.job_id)
        self.beanstalkd.delete(attempt.job_id)

    def _delete_job(self, task_id: int, job_id: int, why: str) -> None:
        """Delete the job of a task whose row has ended; if beanstalkd cannot be told, the claim of the job
        finds the task ended and deletes it unrun."""
        try:
            try:
                self.beanstalkd.delete(job_id)
            except TubeUnavailable:
                self.beanstalkd.delete(job_id)  # once more on a new connection: the old one may just have broken
        except TubeUnavailable as error:
            log.warning("task %d: %s, but its job %d was not deleted: %s", task_id, why, job_id, error)


def _seconds_until_stale(row: TaskRow) -> int:
    last = row.heartbeat or row.modified
    return max(1, math.ceil(stale_after(row.ttr) - (utc_now() - last).total_seconds()) + 1)
