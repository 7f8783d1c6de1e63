"""The dispatcher: sends the jobs of recorded tasks, claims the task of a reserved job, cancels, regenerates,
and buries a job that must not run. Attempts end through its `ends` (pheanq.dispatch.ends).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Sequence

from pheanq import task_limits, task_registry, tasklog
from pheanq.beanstalkd import BeanstalkdConnection, BeanstalkdServers, JobInfo, JobToPut, ReservedJob
from pheanq.body import JobBody, decode_body, decode_data, encode_body
from pheanq.clock import utc_now
from pheanq.config import Settings
from pheanq.dispatch.ends import AttemptEnds, delete_jobs
from pheanq.dispatch.job_ids import JobIdRecorder
from pheanq.dispatch.jobs import PlannedJob, WorkPackage
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
from pheanq.python_call import PREFIX as PYTHON_PREFIX
from pheanq.run_at import EARLY_TOLERANCE, put_delay
from pheanq.status import Status
from pheanq.storage import Store
from pheanq.storage.claims import ClaimOutcome
from pheanq.storage.restarts import RestartPage
from pheanq.storage.schedules import QUEUED, SlotDecision
from pheanq.storage.tables import BuriedRow, TaskRow
from pheanq.storage.tasks import Inserted, NewTask
from pheanq.storage.workflows import Cancelled
from pheanq.task_limits import CONCURRENCY, LimitTable, limited_wait

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
class Regenerated:
    """What `regenerate_page` did: the page's moves, and how many of the moved tasks' jobs were put."""

    page: RestartPage
    sent: int
    unsent: int             # left `restarted` without a job: the reconciler sends them
    reason: str             # why the last of those was not sent


@dataclasses.dataclass
class _Puts:
    """The answers to jobs put together: those put (with their job ids), refused as too big, or not put."""

    put: list[tuple[PlannedJob, int]] = dataclasses.field(default_factory=list)
    too_big: list[PlannedJob] = dataclasses.field(default_factory=list)
    unsent: list[PlannedJob] = dataclasses.field(default_factory=list)
    reason: str = ""


class Dispatcher:
    """The task table and beanstalkd of one process, and every write that changes both."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 beanstalkd: BeanstalkdConnection | BeanstalkdServers | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        if isinstance(beanstalkd, BeanstalkdConnection):
            beanstalkd = BeanstalkdServers([beanstalkd])
        self.beanstalkd = beanstalkd or BeanstalkdServers.at(settings.beanstalkd_servers,
                                                             self.store.servers.number_servers)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._beanstalkd_down_until = 0.0
        self._beanstalkd_down_reason = ""
        self._own_pending: list[PlannedJob] = []
        self._pending_lock = threading.Lock()
        self.ends = AttemptEnds(self.store, self.beanstalkd, self.send_released)
        self.job_ids = JobIdRecorder(self.store)

    @functools.cached_property
    def _commands(self) -> list[str]:
        """The commands this process may run (its settings do not change), and the Python tasks its imports
        registered (a worker imports them before its first claim): every claim names them."""
        return [*self.settings.registry(), *(PYTHON_PREFIX + name for name in task_registry.names())]

    @functools.cached_property
    def limits(self) -> LimitTable:
        """The limits of pheanq.toml, and those the imports declared in code (`@task(concurrency=...)`) for the
        commands it does not name: every claim takes its task's places."""
        return self.settings.limits.with_code(task_limits.declared())

    def close(self) -> None:
        self.job_ids.close()
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
                self.job_ids.add(job.task_id, job_id)
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
        """Put the jobs of tasks inserted together, each tube's in one round trip (BeanstalkdConnection.put_many);
        their ids are written in groups (pheanq.dispatch.job_ids). A job the server did not take, or all of them
        when the connection broke, leaves its task pending (one TaskPendingWarning): the reconciler sends it. A
        job too big for the server takes its task back, as queue_task does, and InvalidInput says so once the
        others are put."""
        puts = self._put_by_tube(jobs)
        for job, job_id in puts.put:
            self.job_ids.add(job.task_id, job_id)
        too_big = [job.task_id for job in puts.too_big]
        for task_id in too_big:
            self.store.tasks.delete_unsent(task_id)
        unsent, reason = puts.unsent, puts.reason
        if unsent:
            log.warning("%d task(s) are pending: %s", len(unsent), reason)
            warnings.warn(TaskPendingWarning(unsent[0].task_id, f"{reason}; {len(unsent)} task(s) of this chunk are "
                                                                "pending"), stacklevel=3)
        if too_big:
            raise InvalidInput(f"beanstalkd at {self.beanstalkd.server} refused the job(s) of {len(too_big)} task(s) "
                               f"as too big (task(s) {', '.join(map(str, too_big[:5]))}); they were taken back: "
                               "pass ids, not payloads")

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
            except InvalidInput as error:
                log.warning("task %d is ready but cannot be sent: %s", task_id, error)

    def send_again(self, row: TaskRow) -> int | None:
        """Put a new job for a task whose job is gone (a `working` one is marked `stalled` first); the new
        job id, or None when the task moved on meanwhile (then no job is left behind)."""
        if row.status is Status.WORKING:
            moved = self.store.tasks.stall_task(row.id, row.attempts, tasklog.stalled(row.attempts, row.worker))
            if moved is None or moved.status is not Status.STALLED:
                if moved is not None:  # a cancel was requested while it ran: it ended instead
                    self.ends.ended_instead(row.id, row.job_id, moved)
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
        try:
            info = self.beanstalkd.inspect(row.job_id)
        except TubeUnavailable:
            if self.beanstalkd.several:
                return None  # a server of several that is away or unlisted: gone (back, the claim refuses its job)
            raise
        if info is None or info.tube != row.tube:
            return None
        if row.status is Status.WORKING and info.state == "reserved" and info.time_left <= 0:
            return None  # past its TTR, under a stale lease: its holder is cut off (beanstalkd keeps such a job)
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
        try:
            # The job is already out: failing here must not make the caller regenerate the task again, and the
            # worker that claims the job records the id anyway.
            self.store.tasks.record_job_if(task_id, Status.RESTARTED, None, job_id)
        except StoreUnavailable as error:
            log.warning("task %d was sent as job %d, but the job id was not recorded: %s", task_id, job_id, error)
        return job_id

    def regenerate_page(self, task_ids: list[int]) -> Regenerated:
        """Put those of `task_ids` that are failed back into their tubes as `restarted`: one transaction moves
        them (pheanq.storage.restarts), then each tube's jobs are put in one round trip and their ids noted in
        one statement. A task whose job was not put stays `restarted` without one: the reconciler sends it, as
        after `regenerate`."""
        page = self.store.restarts.restart_tasks(task_ids)
        jobs: list[PlannedJob] = []
        unreadable: list[int] = []
        for task in sorted(page.restarted, key=lambda task: task.tube):
            try:
                description = decode_data(task.data)
            except InvalidInput:
                unreadable.append(task.id)  # no job can be made of it: counted as not sent
                continue
            jobs.append(PlannedJob(task.id, description, task.tube, task.priority, None, task.ttr, task.nonce,
                                   task.data))
        puts = self._put_by_tube(jobs)
        try:
            self.store.restarts.record_job_ids([(job.task_id, job_id) for job, job_id in puts.put])
        except StoreUnavailable as error:
            # The jobs are out; the worker that claims one records its id anyway.
            log.warning("%d regenerated task(s) were sent, but their job ids were not recorded: %s", len(puts.put),
                        error)
        unsent = len(puts.unsent) + len(puts.too_big) + len(unreadable)
        reason = puts.reason or ("beanstalkd refused their jobs as too big" if puts.too_big else
                                 f"the stored description of task {unreadable[0]} cannot be read" if unreadable else "")
        if unsent:
            log.warning("%d regenerated task(s) were not sent (%s); the reconciler will send them", unsent, reason)
        return Regenerated(page, len(puts.put), unsent, reason)

    def queue_slot(self, schedule: str, slot: dt.datetime, job: PlannedJob, task: NewTask, no_overlap: bool,
                   decided_at: dt.datetime) -> SlotDecision:
        """Decide a schedule's slot (pheanq.storage.schedules: its row and its task in one transaction), then put
        the job of the task it queued; a job not put leaves the task `new`, for the reconciler."""
        decision = self.store.schedules.queue_slot(schedule, slot, task, no_overlap, decided_at)
        if decision.outcome == QUEUED and decision.task_id is not None:
            self.send(dataclasses.replace(job, task_id=decision.task_id))
        return decision

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
        self.job_ids.flush()  # so that the jobs this process put are known, and deleted
        page = self.store.workflows.cancel_tasks(task_ids, by, batch)
        delete_jobs(self.beanstalkd, {result.row.job_id: result.row.id for result in page.results
                                      if result.took and result.row.status is not Status.WORKING
                                      and result.row.job_id is not None}, "cancelled")
        self.send_released(page.settled.released)
        return page.results

    # --- a reserved job and its attempt ---------------------------------------------------------------------

    def claim(self, job: ReservedJob, body: JobBody, tubes: Sequence[str]) -> WorkPackage | None:
        """Claim the task of a job reserved from one of `tubes` (compare-and-set), or deal with the job when it
        must not run now: buried when it names no row, another row, or a task of another tube or of a command
        this worker may not run; released with a delay when it is early or held under a live lease; deleted when
        its task ended or runs under another job."""
        task_id = body.task_id
        claim = self.store.claims.claim_task(task_id, body.nonce, job.id, self.worker_name, tubes, self._commands,
                                             self.limits)
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
            self.bury(job, f"task {task_id}: {_unregistered(claim.row.command, self._commands)}; the task is left "
                           "as it is")
            return None
        if claim.outcome is ClaimOutcome.EARLY:
            wait = put_delay(claim.row.run_at, utc_now())
            log.info("job %d: task %d may not run before %s UTC; the job waits %ds more", job.id, task_id,
                     claim.row.run_at, wait)
            self.beanstalkd.release(job.id, claim.row.priority, wait)
            return None
        if claim.outcome is ClaimOutcome.LIMITED:
            wait = limited_wait(claim.wait, self.beanstalkd.releases(job.id))
            limits = self.limits.places_for(claim.row.command, claim.row.tube, claim.row.limit_key)
            log.info("job %d: task %d is over a limit (of %s); the job waits %ds, the worker takes the next", job.id,
                     task_id, ", ".join(sorted({place.scope for place in limits})), wait)
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
            self.ends.end_requested_cancel(job, claim.row)
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
            self.ends.finish(WorkPackage(job.id, claim.row, body.description), Status.FAILED, None,
                        f"pheanq: the stored description cannot be read: {error}\n")
            return None
        return WorkPackage(job.id, claim.row, stored)

    def wake_waiting(self, row: TaskRow) -> None:
        """After an attempt of `row` ended: for each concurrency limit it held a place of, make one delayed job of
        the same limit in the same tube ready now, so that the freed place does not sit idle while that job waits
        out its backoff. With no delayed job in the tube (one stats-tube), nothing is read."""
        places = [place for place in self.limits.places_for(row.command, row.tube, row.limit_key)
                  if place.kind == CONCURRENCY]
        if not places or not (self.beanstalkd.tube_stats(row.tube) or {}).get("current-jobs-delayed"):
            return
        for place in places:
            for job_id in self.store.limit_places.waiting_jobs(place.scope, row.tube, utc_now() + EARLY_TOLERANCE):
                if self.beanstalkd.kick_delayed(job_id):
                    log.info("job %d: a place of %s freed; the job is ready now", job_id, place.scope)
                    break

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

    # --- helpers --------------------------------------------------------------------------------------------

    def _put(self, job: PlannedJob) -> int:
        """Put a recorded task's job, delayed until its run_at (see pheanq.run_at)."""
        put = self._job_to_put(job)
        return self.beanstalkd.put(job.tube, put.body, put.priority, put.delay, put.ttr)

    def _put_by_tube(self, jobs: list[PlannedJob]) -> _Puts:
        """Put the jobs, each run of one tube's in one round trip (BeanstalkdConnection.put_many)."""
        puts = _Puts()
        for tube, grouped in itertools.groupby(jobs, key=lambda job: job.tube):
            group = list(grouped)
            try:
                answers = self.beanstalkd.put_many(tube, [self._job_to_put(job) for job in group])
            except TubeUnavailable as error:
                puts.unsent += group
                puts.reason = str(error)
                continue
            for job, answer in zip(group, answers, strict=True):
                if isinstance(answer, int):
                    puts.put.append((job, answer))
                elif answer.too_big:
                    puts.too_big.append(job)
                else:
                    puts.unsent.append(job)
                    puts.reason = answer.reason
        return puts

    def _job_to_put(self, job: PlannedJob) -> JobToPut:
        body = encode_body(job.task_id, job.description, self.settings.secret, job.nonce, job.data)
        return JobToPut(body, job.priority, put_delay(job.run_at, utc_now()), job.ttr)

    def _send_own_pending(self) -> None:
        """Send the tasks this dispatcher left pending, unless the reconciler already has; the row keeps one job."""
        with self._pending_lock:
            if not self._own_pending:
                return
            jobs, self._own_pending = self._own_pending, []
        try:
            self.job_ids.flush()  # a task whose id is not written yet would look unsent
            unsent = self.store.tasks.unsent_task_ids([job.task_id for job in jobs])
            for job in jobs:
                if job.task_id in unsent:
                    job_id = self._put(job)
                    if not self.store.tasks.record_job_if(job.task_id, Status.NEW, None, job_id):
                        self.beanstalkd.delete(job_id)
        except (StoreUnavailable, TubeUnavailable) as error:
            log.warning("tasks left pending were not all sent (%s); the reconciler will send them", error)

def _unregistered(command: str, known: list[str]) -> str:
    """Why a worker does not run `command`, naming what it runs instead."""
    if command.startswith(PYTHON_PREFIX):
        tasks = sorted(name[len(PYTHON_PREFIX):] for name in known if name.startswith(PYTHON_PREFIX))
        return f"Python task {command[len(PYTHON_PREFIX):]!r} is not registered on this worker (its imports " \
               f"register: {', '.join(tasks) or 'none'}; start it with --import of the module that defines the task)"
    commands = sorted(name for name in known if not name.startswith(PYTHON_PREFIX))
    return f"command {command!r} is not registered on this worker (known: {', '.join(commands) or 'none'})"


def _seconds_until_stale(row: TaskRow) -> int:
    last = row.heartbeat or row.modified
    return max(1, math.ceil(stale_after(row.ttr) - (utc_now() - last).total_seconds()) + 1)
