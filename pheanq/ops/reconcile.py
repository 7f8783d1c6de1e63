"""The reconciler: make beanstalkd hold a job for every task the table says must run.

beanstalkd can lose jobs (a put that failed, a restart without its binlog) and a worker can die
holding a task. The table is the source of truth, so the reconciler walks the tasks that should have
a live job — `new`, `restarted` and `stalled` ones last changed more than `min_age` seconds ago, and
`working` ones whose lease went stale — and asks beanstalkd (stats-job, then peek: after a restart
without binlog, job ids start again from 1, so only the body says whose a job is) whether their job
is still there. A task whose job is gone is sent again; a `working` one is marked `stalled` first.

A database lock (a row in `pheanq_lock`) lets one reconciler run at a time across every machine;
and each new job is recorded only if the row still names the job found missing, so two reconcilers
racing anyway never leave two live jobs for one task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput
from pheanq.limits import PAGE_SIZE
from pheanq.ops.pause import reapply_pauses
from pheanq.status import Status

log = logging.getLogger("pheanq.reconcile")

LOCK_NAME = "reconcile"
# A reconciler that dies holding the lock blocks the others this long at most; it renews it per page.
LOCK_SECONDS = 300.0
# A younger waiting task may be between its insert and its put (at most the connect and answer timeouts,
# 5 + 10 s): leave it alone.
DEFAULT_MIN_AGE_SECONDS = 20.0


@dataclasses.dataclass
class ReconcileReport:
    checked: int = 0            # tasks that should have had a live job
    alive: int = 0              # ... and had one
    sent_again: int = 0         # waiting tasks whose job was gone, sent again
    stalled: int = 0            # working tasks whose job and holder were gone: stalled and sent again
    changed: int = 0            # tasks that moved on while being looked at: left alone
    workflows: int = 0          # waiting tasks released or failed, batches finished, past a missed moment
    unreadable: int = 0         # tasks whose stored description cannot be read: not sent, the pass goes on
    locked_by: str | None = None    # another reconciler held the lock: nothing was done
    actions: list[str] = dataclasses.field(default_factory=list)

    def summary(self, dry_run: bool = False) -> str:
        if self.locked_by is not None:
            return f"another reconciler is running ({self.locked_by}); nothing done"
        verb = "would send again" if dry_run else "sent again"
        return (f"checked {self.checked} task(s) that must have a job: {self.alive} had one, {verb} "
                f"{self.sent_again + self.stalled} ({self.stalled} of them stalled), {self.changed} moved on meanwhile"
                + (f"; settled {self.workflows} waiting task(s) and batch(es)" if self.workflows else "")
                + (f"; {self.unreadable} task(s) not sent: their stored description cannot be read (see the log)"
                   if self.unreadable else ""))


def reconcile(dispatch: Dispatcher, tube: str | None = None, dry_run: bool = False,
              min_age: float = DEFAULT_MIN_AGE_SECONDS, settle: bool = True,
              after_restart: bool = False, restarted_at: dt.datetime | None = None) -> ReconcileReport:
    """One pass over the table (or one tube of it); with `dry_run`, only say what would be done. With
    `settle`, then settle waiting tasks and batches, which belong to no one tube (see settle_workflows).

    `after_restart` (beanstalkd restarted since the last look): a waiting task whose job id is recorded is
    checked whatever its age. `min_age` is there for a task whose put may be in flight, and such a task has
    no job id yet (the producer records it after the put), so it still waits out `min_age`; a task with a
    recorded job had its put done, and a job missing now was lost with the server. `restarted_at`: when the
    server started again; a task last changed after it cannot have lost its job to the restart, and is left
    to the passes that wait out `min_age` (a tender's first look, under load, would otherwise send again tasks
    whose jobs workers have just deleted)."""
    report = ReconcileReport()
    holder = dispatch.worker_name
    admin = dispatch.store.admin
    if not dry_run and not admin.take_lock(LOCK_NAME, holder, LOCK_SECONDS):
        report.locked_by = admin.lock_holder(LOCK_NAME) or "unknown"
        return report
    try:
        now = utc_now()
        after_id = 0
        while rows := dispatch.store.tasks.tasks_to_reconcile(tube, after_id, PAGE_SIZE,
                                                              now - dt.timedelta(seconds=min_age), now,
                                                              sent_before=(restarted_at or now) if after_restart
                                                              else None):
            for row in rows:
                after_id = row.id
                report.checked += 1
                if dispatch.live_job_of(row) is not None:
                    report.alive += 1
                    continue
                was_working = row.status is Status.WORKING
                if dry_run:
                    report.actions.append(f"task {row.id} ({row.status}, job {row.job_id}): job gone; would "
                                          f"{'mark it stalled and ' if was_working else ''}send it again")
                    report.stalled += was_working
                    report.sent_again += not was_working
                    continue
                try:
                    job_id = dispatch.send_again(row)
                except InvalidInput as error:
                    # Written by something else than pheanq (or an older one): it must not stop the pass.
                    report.unreadable += 1
                    report.actions.append(f"task {row.id} ({row.status}): not sent: {error}; cancel it")
                    log.warning("%s", report.actions[-1])
                    continue
                if job_id is None:
                    report.changed += 1
                    continue
                report.actions.append(f"task {row.id} ({row.status}, job {row.job_id}): job gone; "
                                      f"{'stalled and ' if was_working else ''}sent again as job {job_id}")
                log.info("%s", report.actions[-1])
                report.stalled += was_working
                report.sent_again += not was_working
            if not dry_run:
                admin.take_lock(LOCK_NAME, holder, LOCK_SECONDS)
        if not dry_run:
            if settle:
                report.workflows = settle_workflows(dispatch, now - dt.timedelta(seconds=min_age))
                # Once a pass too: the changes of the task counts since the last, so `status` reads few rows.
                dispatch.store.tasks.fold_counts()
            # After the re-sends: beanstalkd can only pause a tube that has a job (or a watcher).
            reapply_pauses(dispatch)
    finally:
        if not dry_run:
            admin.free_lock(LOCK_NAME, holder)
    return report


def settle_workflows(dispatch: Dispatcher, changed_before: dt.datetime) -> int:
    """Settle what a write should have settled but could not see: a task that began waiting while a task it
    waits for was ending, a batch whose counter missed an end. Returns how many moved on."""
    workflows = dispatch.store.workflows
    moved = 0
    after_id = 0
    while ids := workflows.settleable_task_ids(after_id, PAGE_SIZE, changed_before):
        after_id = ids[-1]
        for task_id in ids:
            dispatch.settle_waiting(task_id)
            row = dispatch.store.tasks.find_task(task_id)
            moved += row is None or row.status is not Status.WAITING
    for batch_id in workflows.unfinished_batch_ids():
        dispatch.recount_batch(batch_id)
        if (found := workflows.find_batch(batch_id)) is not None and found.finished is not None:
            moved += 1
            log.warning("batch %d: finished by the reconciler", batch_id)
    return moved
