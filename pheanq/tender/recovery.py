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
import logging
import os
import queue
import threading
import time

from pheanq import tasklog
from pheanq.dispatch import Dispatcher
from pheanq.errors import StoreUnavailable, TubeUnavailable
from pheanq.python_call import PREFIX as PYTHON_PREFIX
from pheanq.status import Status
from pheanq.storage.tables import TaskRow

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
    errors: tuple[str, ...] = ()  # a Python task's exception its retry policy does not retry (its RAISED line)


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


def recover_task(dispatch: Dispatcher, task: OrphanedTask) -> str:
    """Settle the task of a worker that died holding it; says what was done."""
    held = dispatch.store.tasks.find_task(task.task_id)
    if held is None or held.status is not Status.WORKING or held.worker != task.worker:
        return f"already settled ({'gone' if held is None else held.status})"
    dead = DeadAttempt(held.job_id, held)
    if task.exit_code is None:
        entry = tasklog.attempt(held.attempts, task.worker, f"interrupted: {task.why}; the task goes back to its tube")
        if not dispatch.ends.stall(dead, entry):
            return f"attempt {held.attempts} already settled"
        return "stalled: its worker died while the command ran; it runs again"
    verdict = "done" if task.exit_code == 0 else f"failed: exit code {task.exit_code}"
    # A Python task's return value (or traceback) went to its worker only: the exit code is all the tender has.
    lost = "; its return value was not stored" if task.exit_code == 0 and held.command.startswith(PYTHON_PREFIX) \
        else ""
    entry = tasklog.attempt(held.attempts, task.worker,
                            f"{verdict}; {task.why}, so its tender recorded the result{lost}")
    if task.exit_code == 0:
        ended = Status.DONE if dispatch.ends.finish(dead, Status.DONE, 0, entry, reserved=False) else None
    else:
        ended = dispatch.ends.fail(dead, task.exit_code, entry, reserved=False, errors=task.errors)
    if ended is None:
        return f"attempt {held.attempts} already settled"
    if ended is Status.RETRYING:
        return f"retrying after exit code {task.exit_code}, for a worker that died"
    return f"recorded as {ended} (exit code {task.exit_code}) for a worker that died"


@dataclasses.dataclass(frozen=True)
class DeadAttempt:
    """The attempt of a worker that died: the job it had reserved (beanstalkd released it) and its row."""

    job_id: int | None
    row: TaskRow


class Aftercare:
    """Settles orphaned tasks one after another on a background thread, retrying while the database is away."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch
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
                    log.info("task %d: %s", task.task_id, recover_task(self.dispatch, task))
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
