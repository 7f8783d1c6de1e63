"""`TaskQueueService`: the one place that writes to both the task table and beanstalkd."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable

from pheanq.config import Settings, check_tube_name, load_settings
from pheanq.description import (
    MalformedBody,
    TaskDescription,
    decode_body,
    decode_data,
    encode_body,
    encode_data,
)
from pheanq.errors import InvalidInput, NotFound, StoreUnavailable, TaskNotSent, TubeUnavailable, WrongStatus
from pheanq.status import Status
from pheanq.store import ClaimOutcome, PoolRow, Store, TaskRow
from pheanq.tube import ReservedJob, Tube

log = logging.getLogger("pheanq.service")

DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 60
MAX_PRIORITY = 2**32 - 1
# A job with this id can never exist; it sizes a body before the real id is known.
_LARGEST_ID = 2**63 - 1


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


class TaskQueueService:
    def __init__(self, settings: Settings, store: Store | None = None, tube: Tube | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.tube = tube or Tube(settings.beanstalkd)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        self.tube.close()
        self.store.close()

    def queue_task(self, description: TaskDescription, tube: str | None = None, priority: int = DEFAULT_PRIORITY,
                   delay: int = 0, ttr: int = DEFAULT_TTR) -> int:
        """Record the task as `new`, then put its job; returns the task id.

        Raises TaskNotSent (with `task_id`) when the row is recorded but beanstalkd
        could not take the job: the task is not lost, it waits as `new` with no job.
        """
        tube = check_tube_name(tube or self.settings.default_tube)
        _check_range("priority", priority, 0, MAX_PRIORITY)
        _check_range("delay", delay, 0, MAX_PRIORITY)
        _check_range("ttr", ttr, 1, MAX_PRIORITY)
        if not isinstance(description, TaskDescription):
            raise InvalidInput(f"queue_task takes a TaskDescription, not {type(description).__name__}")
        encode_body(_LARGEST_ID, description)  # too big a body is refused before anything is written
        task_id = self.store.insert_task(description.command, encode_data(description), tube, priority, ttr)
        try:
            job_id = self.tube.put(tube, encode_body(task_id, description), priority, delay, ttr)
        except (TubeUnavailable, InvalidInput) as error:
            raise TaskNotSent(task_id, str(error)) from None
        self._record_job_id(task_id, job_id)
        return task_id

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
        return self._finish(package, Status.FAILED, exit_code, log_text)

    def release_task(self, package: WorkPackage, log_text: str) -> bool:
        """Give a claimed task back: the row returns to `new` and the job to its tube."""
        recorded = self.store.release_task(package.task_id, package.attempt, log_text)
        if recorded:
            self.tube.release(package.job_id, package.row.priority)
        return recorded

    def touch(self, package: WorkPackage) -> bool:
        """Renew the job's reservation; False when this worker no longer holds it."""
        return self.tube.touch(package.job_id)

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
        body = encode_body(task_id, decode_data(row.data))
        try:
            job_id = self.tube.put(row.tube, body, row.priority, 0, row.ttr)
        except TubeUnavailable as error:
            raise TaskNotSent(task_id, str(error), Status.RESTARTED.value) from None
        self._record_job_id(task_id, job_id)
        return job_id

    def clean_up_tasks(self, period_seconds: int) -> int:
        """Delete `done` tasks that finished more than `period_seconds` ago; returns how many."""
        _check_range("period", period_seconds, 0, 2**40)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
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
            body = decode_body(job.body)
        except MalformedBody as error:
            log.warning("burying job %d: %s", job.id, error)
            self.tube.bury(job.id)
            return None
        claim = self.store.claim_task(body.task_id, job.id, self.worker_name)
        if claim.outcome is ClaimOutcome.MISSING:
            log.warning("burying job %d: task %d has no row in the table", job.id, body.task_id)
            self.tube.bury(job.id)
            return None
        assert claim.row is not None
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

    def _finish(self, package: WorkPackage, status: Status, exit_code: int | None, log_text: str | None) -> bool:
        recorded = self.store.finish_task(package.task_id, package.attempt, status, exit_code, log_text)
        if not recorded:
            log.warning("task %d: attempt %d no longer owns the task (taken over); its result (%s) is not "
                        "recorded", package.task_id, package.attempt, status)
        try:
            self.tube.delete(package.job_id)
        except TubeUnavailable as error:
            # The row is final; if the job comes back, the claim finds it finished and deletes it unrun.
            log.warning("task %d: recorded as %s, but its job %d was not deleted: %s", package.task_id, status,
                        package.job_id, error)
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
               delay: int = 0, ttr: int = DEFAULT_TTR) -> int:
    """Queue a task with the default service; see `TaskQueueService.queue_task`."""
    return default_service().queue_task(description, tube=tube, priority=priority, delay=delay, ttr=ttr)


def _check_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, not {value!r}")
