"""How an attempt ends: the row's move (done, failed, retrying, cancelled, stalled, handed back) first, then its
job deleted or released, then what the end released sent. Part of the dispatcher: the only code that writes a
task's row together with its job.

A move of an attempt whose task had a cancel requested while it ran ends the task `cancelled` instead (see
pheanq.storage.tasks); an attempt that no longer holds its task has its log entry added, and nothing else.

An end is written again until the database answers (see pheanq.worker.loop). A write whose COMMIT reached the
server but whose answer was lost is found committed when it is written again (`Moved.answer_lost`): what
follows it is done then, once — the job deleted or released, what the end released sent.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence

from pheanq import tasklog
from pheanq.beanstalkd import BeanstalkdServers, ReservedJob
from pheanq.body import decode_data
from pheanq.clock import utc_now
from pheanq.dispatch.jobs import Attempt, WorkPackage
from pheanq.errors import TubeUnavailable
from pheanq.retry import after_failure
from pheanq.run_at import put_delay
from pheanq.status import Status
from pheanq.storage import Store
from pheanq.storage.tables import TaskRow
from pheanq.storage.tasks import Moved

log = logging.getLogger("pheanq.dispatch")


class AttemptEnds:
    """The ends of attempts, on one dispatcher's database and beanstalkd connection."""

    def __init__(self, store: Store, beanstalkd: BeanstalkdServers,
                 send_released: Callable[[Iterable[int]], None]) -> None:
        self.store = store
        self.beanstalkd = beanstalkd
        self.send_released = send_released

    def finish(self, attempt: Attempt, status: Status, exit_code: int | None, log_text: str | None,
               reserved: bool = True, result: str | None = None) -> bool:
        """Record the attempt's end (`done`, `failed` or `cancelled`), delete its job, and send what the end
        released; False when the attempt no longer owns the task (its result is not recorded, its log entry
        is). With `reserved` (the caller holds the job), the job is deleted even then: it is this attempt's
        reservation. A `failed` end of an attempt that a cancel was requested for is `cancelled`. `result`: a
        Python task's return value as JSON, kept on the row."""
        return self._end(attempt, status, exit_code, log_text, reserved, result) is not None

    def fail(self, attempt: Attempt, exit_code: int | None, log_text: str | None,
             reserved: bool = True, errors: Sequence[str] = ()) -> Status | None:
        """Record a failed attempt: `retrying` after a backoff delay when its retry policy allows another
        attempt, else `failed` (`cancelled` when a cancel was requested while it ran); returns which, or None
        when the attempt no longer owns the task. With `reserved` (the caller holds the job), the job is
        released with that delay; else whoever reserves it next finds the task early and delays it. `errors`: the
        class names of a Python task's exception, which the policy may name as not retried."""
        task_id, number = attempt.row.id, attempt.row.attempts
        # The same attempt's failure always leads to the same step (its jitter too): a write repeated after its
        # answer was lost is the same write, and is found committed.
        step = after_failure(attempt.row.retry, number, exit_code, seed=f"{task_id}:{attempt.row.nonce}:{number}",
                             errors=errors)
        entry = (log_text or "") + step.note or None
        if step.wait is None:
            return self._end(attempt, Status.FAILED, exit_code, entry, reserved)
        moved = self.store.tasks.retry_task(task_id, number, exit_code, entry or "",
                                            utc_now() + dt.timedelta(seconds=step.wait))
        if moved is None:
            self._lost_attempt(attempt, entry, reserved)
            return None
        self._note_answer_lost(attempt, moved)
        if moved.status is not Status.RETRYING:
            self.ended_instead(task_id, attempt.job_id if reserved else self._job_named(task_id), moved)
            return moved.status
        wait = step.wait
        if moved.answer_lost:
            # The backoff runs from the first write, which set the row's run_at.
            row = self.store.tasks.find_task(task_id)
            wait = put_delay(None if row is None else row.run_at, utc_now())
        if reserved and attempt.job_id is not None and \
                not self.beanstalkd.release(attempt.job_id, attempt.row.priority, wait):
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
            return False
        self._note_answer_lost(attempt, moved)
        if moved.status is not Status.NEW:
            self.ended_instead(attempt.row.id, attempt.job_id, moved)
        elif attempt.job_id is not None and not self.beanstalkd.release(attempt.job_id, attempt.row.priority):
            # Not reserved by this worker any more: another worker may have delayed it while the lease was held.
            self.beanstalkd.kick_job(attempt.job_id)
        return True

    def stall(self, attempt: Attempt, log_text: str) -> bool:
        """The attempt's worker died while its command ran: `stalled`, and its job ready to run again at once
        (`cancelled`, its job deleted, when a cancel was requested while it ran); False when the attempt was
        already settled."""
        moved = self.store.tasks.stall_task(attempt.row.id, attempt.row.attempts, log_text)
        if moved is None:
            return False
        self._note_answer_lost(attempt, moved)
        job_id = self._job_named(attempt.row.id)
        if moved.status is not Status.STALLED:
            self.ended_instead(attempt.row.id, job_id, moved)
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

    def _end(self, attempt: Attempt, status: Status, exit_code: int | None, log_text: str | None,
             reserved: bool, result: str | None = None) -> Status | None:
        """Record an attempt's end; the status it ended in, or None when the attempt no longer owns the task."""
        task_id, number = attempt.row.id, attempt.row.attempts
        moved = self.store.tasks.finish_task(task_id, number, status, exit_code, log_text, result)
        if moved is None:
            self._lost_attempt(attempt, log_text, reserved)
            return None
        self._note_answer_lost(attempt, moved)
        # Not held by the caller: the job is the one the row names now (the reconciler may have sent the task
        # again, as a stalled one, between the caller's read and this end).
        job_id = attempt.job_id if reserved else self._job_named(task_id)
        if job_id is not None:
            # The row is final; if the job comes back, the claim finds it finished and deletes it unrun.
            delete_job(self.beanstalkd, task_id, job_id, f"recorded as {moved.status}")
        self.send_released(moved.settled.released)
        return moved.status

    def ended_instead(self, task_id: int, job_id: int | None, moved: Moved) -> None:
        """A move ended the task instead (a cancel was requested while its attempt ran): delete its job and send
        what the end released."""
        log.info("task %d: ended %s: a cancel was requested while it ran", task_id, moved.status)
        if job_id is not None:
            delete_job(self.beanstalkd, task_id, job_id, f"recorded as {moved.status}")
        self.send_released(moved.settled.released)

    @staticmethod
    def _note_answer_lost(attempt: Attempt, moved: Moved) -> None:
        if moved.answer_lost:
            log.warning("task %d: attempt %d was recorded %s, though the database's answer was lost (the connection "
                        "died after the COMMIT); what follows is done now", attempt.row.id, attempt.row.attempts,
                        moved.status)

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


def delete_jobs(beanstalkd: BeanstalkdServers, tasks_of: dict[int, int], why: str) -> None:
    """Delete the jobs (keys of `tasks_of`, each its task's id) of tasks whose rows have ended, in one round trip,
    as delete_job does one."""
    if not tasks_of:
        return
    error = _twice(lambda: beanstalkd.delete_many(list(tasks_of)))
    if error is not None:
        shown = ", ".join(str(task_id) for task_id in sorted(tasks_of.values())[:5])
        log.warning("%d task(s) (%s...): %s, but their jobs were not deleted: %s", len(tasks_of), shown, why, error)


def delete_job(beanstalkd: BeanstalkdServers, task_id: int, job_id: int, why: str) -> None:
    """Delete the job of a task whose row has ended; if beanstalkd cannot be told, the claim of the job
    finds the task ended and deletes it unrun."""
    error = _twice(lambda: beanstalkd.delete(job_id))
    if error is not None:
        log.warning("task %d: %s, but its job %d was not deleted: %s", task_id, why, job_id, error)


def _twice(tell: Callable[[], object]) -> TubeUnavailable | None:
    """Tell beanstalkd, once more on a new connection if the first try failed (the old one may just have broken);
    the error when both failed."""
    try:
        tell()
    except TubeUnavailable:
        try:
            tell()
        except TubeUnavailable as error:
            return error
    return None
