"""What a worker-tender does for the task of a worker that died while it held one.

The worker told its tender which task it ran (``BUSY``), its command's pid (``CHILD``)
and, the moment the command ended by itself, its exit code (``EXITED``). When the worker dies
(kill -9, out of memory) before recording the outcome:

- a command that ended by itself has its result recorded, so a completed task never runs again;
  its exit code comes from the ``EXITED`` line, or from reaping the command's zombie, which the
  tender inherits as the child subreaper;
- a command that was still running died with the worker (PDEATHSIG): the task is marked `stalled`
  and its job made ready again, so it runs again at once rather than after its lease goes stale.

This runs on a thread of its own: a slow or locked database must not freeze the tender's loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
import time

from pheanq.clock import utc_now
from pheanq.errors import StoreUnavailable, TubeUnavailable
from pheanq.retry import after_failure
from pheanq.service import TaskQueueService
from pheanq.status import Status

log = logging.getLogger("pheanq.tender")

# How long the tender waits for a dead worker's command to become a zombie it can reap.
REAP_WAIT_SECONDS = 1.0
RETRY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class OrphanedTask:
    task_id: int
    worker: str             # the dead worker's name (host:pid), as the task's row records its holder
    exit_code: int | None   # the command's own exit code when it ended by itself, else None
    why: str                # how the worker ended, for the task's log


def reap_exit_code(pid: int, wait: float = REAP_WAIT_SECONDS) -> int | None:
    """The exit code of a dead worker's command, now the tender's child; None when it was not the
    tender's to reap (the worker reaped it), or was killed by a signal (it did not end by itself)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            found, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if found == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)  # the command gets PDEATHSIG with its worker: it is gone within milliseconds


def recover_task(service: TaskQueueService, task: OrphanedTask) -> str:
    """Settle the task of a worker that died holding it; says what was done."""
    held = service.store.find_task(task.task_id)
    if held is None or held.status is not Status.WORKING or held.worker != task.worker:
        return f"already settled ({'gone' if held is None else held.status})"
    attempt = held.attempts
    entry = f"--- attempt {attempt} on {task.worker}: "
    if task.exit_code is None:
        entry += f"interrupted: {task.why}; the task goes back to its tube\n"
        if not service.store.stall_task(task.task_id, attempt, entry):
            return f"attempt {attempt} already settled"
        row = service.store.find_task(task.task_id)
        if row is not None and row.job_id is not None:
            # Another worker may have found the lease still fresh and delayed the job: make it ready now.
            service.tube.kick_job(row.job_id)
        return "stalled: its worker died while the command ran; it runs again"
    verdict = "done" if task.exit_code == 0 else f"failed: exit code {task.exit_code}"
    entry += f"{verdict}; {task.why}, so its tender recorded the result\n"
    step = after_failure(held.retry, attempt, task.exit_code)
    if task.exit_code != 0 and step.wait is not None:
        next_run = utc_now() + dt.timedelta(seconds=step.wait)
        if not service.store.retry_task(task.task_id, attempt, task.exit_code, entry + step.note, next_run):
            return f"attempt {attempt} already settled"
        # The dead worker's reservation has ended: whoever reserves the job finds the task early and delays it.
        return f"retrying after exit code {task.exit_code}, for a worker that died"
    status = Status.DONE if task.exit_code == 0 else Status.FAILED
    settled = service.store.finish_task(task.task_id, attempt, status, task.exit_code,
                                        entry + (step.note if status is Status.FAILED else ""))
    if settled is None:
        return f"attempt {attempt} already settled"
    row = service.store.find_task(task.task_id)
    if row is not None and row.job_id is not None:
        service.tube.delete(row.job_id)
    service.send_released(settled.released)
    return f"recorded as {status} (exit code {task.exit_code}) for a worker that died"


class Aftercare:
    """Settles orphaned tasks one after another on a background thread, retrying while the database is away."""

    def __init__(self, service: TaskQueueService) -> None:
        self.service = service
        self._queue: queue.Queue[OrphanedTask | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def settle(self, task: OrphanedTask) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pheanq-aftercare", daemon=True)
            self._thread.start()
        self._queue.put(task)

    def close(self, timeout: float) -> None:
        """Finish what is queued, for at most `timeout` seconds."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the tasks of dead workers were not all settled; the reconciler will")

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            deadline = time.monotonic() + 60
            while True:
                try:
                    log.info("task %d: %s", task.task_id, recover_task(self.service, task))
                    break
                except (StoreUnavailable, TubeUnavailable) as error:
                    if time.monotonic() >= deadline:
                        log.warning("task %d: not settled (%s); the reconciler will", task.task_id, error)
                        break
                    time.sleep(RETRY_SECONDS)  # a database or beanstalkd outage: try again shortly
                except Exception as error:  # this thread must outlive any one task's trouble
                    log.error("task %d: not settled (%s: %s); the reconciler will", task.task_id,
                              type(error).__name__, error)
                    break
