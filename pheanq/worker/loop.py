"""The worker: reserve → claim → run the child → record → delete the job, until told to stop.

Its standard output carries only the state lines of pheanq.worker.protocol, one per change, which
its tender reads. Human logs go to standard error.

SIGTERM: finish the current task, then exit 0. SIGINT: stop the child now, hand
the task back (row `new`, job released), exit 130.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, TextIO, TypeVar

from pheanq import tasklog
from pheanq.dispatch import Dispatcher, WorkPackage
from pheanq.errors import StoreUnavailable, TubeUnavailable
from pheanq.python_call import PythonCall
from pheanq.status import Status
from pheanq.worker.claims import TaskClaims
from pheanq.worker.cron import WorkerLimits
from pheanq.worker.drain import jobs_to_come
from pheanq.worker.execution import Outcome, execute
from pheanq.worker.holds import CancelWatch, LeaseHold, lease_interval
from pheanq.worker.paused import PausedTubes
from pheanq.worker.protocol import EXIT_INTERRUPTED, Line, StateLine, StateWriter
from pheanq.worker.task_env import TaskEnvironment
from pheanq.worker.undumpable import make_undumpable

if TYPE_CHECKING:
    from pheanq.worker.python_pool import PythonPool

log = logging.getLogger("pheanq.worker")
T = TypeVar("T")

RESERVE_TIMEOUT = 1  # seconds; bounds how long a signal waits to be noticed while idle


class Backoff:
    """Capped exponential waits between retries against a service that went away."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.next = first

    def reset(self) -> None:
        self.next = self.first

    def step(self) -> float:
        wait, self.next = self.next, min(self.cap, self.next * 2)
        return wait


class TaskWorker:
    """One `pheanq task-worker` process: runs tasks from its tubes, one at a time, until stopped."""

    def __init__(self, dispatch: Dispatcher, tubes: Sequence[str], *, stop_when_empty: bool = False,
                 stop_when_drained: bool = False, max_tasks: int | None = None, limits: WorkerLimits | None = None,
                 out: TextIO = sys.stdout, python: PythonPool | None = None) -> None:
        self.dispatch = dispatch
        self.claims = TaskClaims(dispatch)
        self.name = dispatch.worker_name
        self.tubes = list(tubes)
        self.stop_when_empty = stop_when_empty
        self.stop_when_drained = stop_when_drained
        self.max_tasks = max_tasks
        self.limits = limits or WorkerLimits()
        self.cycles = 0
        self._paused = PausedTubes(dispatch.store)
        self._environment: TaskEnvironment | None = None  # worked out at the first command
        self._state = StateWriter(out)
        self.terminating = False   # SIGTERM: finish the task in hand, take no other
        self.interrupted = False   # SIGINT: stop the task in hand now
        self.tasks_run = 0
        self._backoff = Backoff()
        self.python = python      # runs Python tasks (pheanq.worker.python_pool); None: commands only

    def run(self) -> int:
        """Work until stopped; returns the process exit code."""
        make_undumpable()  # before the first task's command: its parent's environment holds the credentials
        self._install_signal_handlers()
        if self.python is not None:
            self.python.prepare()  # the first child is forked before the first job comes, not while it waits
        log.info("worker %s watching %s on beanstalkd %s", self.name, ",".join(self.tubes),
                 self.dispatch.beanstalkd.server)
        self._state.say(StateLine(Line.READY))
        started = time.monotonic()
        while not self._stopping() and (self.max_tasks is None or self.tasks_run < self.max_tasks):
            limit = self.limits.reason_to_stop(self.cycles, time.monotonic() - started)
            if limit is not None:
                log.info("stopping: %s", limit)
                break
            self.cycles += 1
            tubes = self._retrying(lambda: self._paused.active(self.tubes))
            if tubes is None:
                continue  # the database is away: _retrying waited out a backoff step
            if not tubes:
                if self.stop_when_empty or self.stop_when_drained:
                    log.info("every tube is paused; stopping (%s)", self._stop_option())
                    break
                self._pause(RESERVE_TIMEOUT)  # every tube is paused: look again in a moment
                continue
            package = self._retrying(functools.partial(self.claims.reserve_task, tubes, RESERVE_TIMEOUT,
                                                       still_wanted=lambda: not self._stopping()))
            if package is None:
                reason = self._reason_to_stop_idle(tubes)
                if reason is not None:
                    log.info("%s; stopping (%s)", reason, self._stop_option())
                    break
                if self.limits.cycle_delay:
                    self._pause(self.limits.cycle_delay)
                continue
            if self.interrupted:
                # SIGINT came while this job was being claimed: hand it back without starting it. (After
                # SIGTERM a task already claimed is the current task: it runs, and no other follows.)
                self._hand_back(package)
                break
            self._state.say(StateLine(Line.BUSY, package.task_id))
            self._work(package)
            self.tasks_run += 1
            if self.python is not None and not self._stopping():
                self.python.prepare()
            self._state.say(StateLine(Line.READY))
        self._settle_unresolved_claim()
        if self.python is not None:
            self.python.close()
        log.info("worker %s stops after %d task(s)", self.name, self.tasks_run)
        return EXIT_INTERRUPTED if self.interrupted else 0

    def _settle_unresolved_claim(self) -> None:
        """At the stop: a job whose claim the database left unresolved is claimed (or found claimed) and handed
        back, so its task does not wait out a lease; with the database still away it is dropped."""
        try:
            package = self.claims.resolve_claim()
        except (StoreUnavailable, TubeUnavailable) as error:
            log.warning("a job's claim is not resolved (%s); the job goes back to its tube", error)
            self.claims.drop_unresolved()
            return
        if package is not None:
            self._hand_back(package)

    def _reason_to_stop_idle(self, tubes: Sequence[str]) -> str | None:
        """After a check that found no job: why the worker stops now, or None to check again."""
        if self._stopping():
            return None
        if self.stop_when_empty:
            return "no job is ready"
        if self.stop_when_drained and self._retrying(lambda: jobs_to_come(self.dispatch.beanstalkd, tubes)) == 0:
            return f"no job of {','.join(tubes)} is ready or delayed"
        return None

    def _stop_option(self) -> str:
        return "--stop-when-empty" if self.stop_when_empty else "--stop-when-drained"

    def _work(self, package: WorkPackage) -> None:
        log.info("task %d (%s): attempt %d starts", package.task_id, package.description.command, package.attempt)
        cancel = CancelWatch(self.claims, package)
        lease = LeaseHold(self.claims, package, lambda: self.interrupted)
        try:
            outcome = self._execute(package, lambda: cancel.reason_to_stop() or lease.reason_to_stop())
        finally:
            cancel.close()
            lease.close()
        log.info("task %d: %s", package.task_id, outcome.log.splitlines()[0].strip("- "))
        if outcome.status is Status.CANCELLED:
            self._record(lambda: self.claims.end_cancelled(package, outcome.exit_code, outcome.log), package)
        elif outcome.status is Status.NEW:
            self._record(lambda: self.claims.release_task(package, outcome.log), package)
        else:
            self._record(lambda: self._finish(package, outcome), package)
        self.claims.wake_waiting(package)

    def _execute(self, package: WorkPackage, keep_running: Callable[[], str | None]) -> Outcome:
        """Run the task: a Python task in this worker's child process, a command as a process of its own."""
        def on_start(pid: int) -> None:
            self._state.say(StateLine(Line.CHILD, pid))

        def on_exit(code: int) -> None:
            self._state.say(StateLine(Line.EXITED, code))

        call = package.description
        if isinstance(call, PythonCall) and self.python is not None:
            # lazy: only a worker with a Python application (--import) runs Python tasks; a worker of commands
            # never loads the pool's modules (python_pool, python_child, python_execution)
            from pheanq.worker.python_execution import execute_python

            return execute_python(package, call, self.python, self.dispatch.settings, self.name, keep_running,
                                  on_start, on_exit, lambda progress: self.claims.record_progress(package, progress))
        if self._environment is None:
            self._environment = TaskEnvironment(os.environ, self.dispatch.settings)
        return execute(package, self.dispatch.settings, self.name, keep_running, on_start=on_start, on_exit=on_exit,
                       environment=self._environment)

    def _hand_back(self, package: WorkPackage) -> None:
        log.info("task %d: not started, the worker is stopping; it goes back to its tube", package.task_id)
        entry = tasklog.attempt(package.attempt, self.name, "not started: the worker was stopping; the task goes "
                                                            "back to its tube")
        self._record(lambda: self.claims.release_task(package, entry), package)

    def _finish(self, package: WorkPackage, outcome: Outcome) -> bool:
        if outcome.status is Status.DONE:
            return self.claims.mark_done(package, outcome.log, 0, outcome.result)
        return self.claims.mark_failed(package, outcome.log, outcome.exit_code, outcome.errors)

    def _record(self, write: Callable[[], bool], package: WorkPackage) -> None:
        """Record a task's result, waiting out a database outage while keeping the job reserved. Writing again is
        safe: an end whose answer was lost is found written, and what follows it is done then (see
        pheanq.dispatch.ends)."""
        while True:
            try:
                write()
                self._backoff.reset()
                return
            except TubeUnavailable as error:
                # The row is written (only the job's release failed): beanstalkd hands a job back itself
                # when the connection that reserved it drops, and the worker's next reserve waits it out.
                log.warning("task %d: recorded, but beanstalkd was not told: %s", package.task_id, error)
                return
            except StoreUnavailable as error:
                if self.interrupted:
                    log.error("task %d: result not recorded (%s); interrupted, so the job will be released "
                              "and the task run again", package.task_id, error)
                    return
                wait = self._backoff.step()
                log.warning("task %d: %s; result kept, retrying in %.1fs", package.task_id, error, wait)
                # SIGTERM means "finish this task", so only SIGINT cuts this wait short.
                self._pause(wait, lambda: self._keep_reserved(package), lease_interval(package),
                            wake=lambda: self.interrupted)

    def _keep_reserved(self, package: WorkPackage) -> None:
        with contextlib.suppress(TubeUnavailable):
            self.claims.touch(package)

    def _retrying(self, call: Callable[[], T | None]) -> T | None:
        """`call()`, or None after logging an outage and waiting out a backoff step."""
        try:
            result = call()
        except (TubeUnavailable, StoreUnavailable) as error:
            wait = self._backoff.step()
            log.warning("%s; retrying in %.1fs", error, wait)
            self._pause(wait)
            return None
        self._backoff.reset()
        return result

    def _pause(self, seconds: float, meanwhile: Callable[[], None] | None = None, every: float = 1.0,
               wake: Callable[[], bool] | None = None) -> None:
        """Wait, but wake when `wake()` (default: any stop signal) says so; `meanwhile` runs `every` seconds."""
        wake = wake or self._stopping
        deadline = time.monotonic() + seconds
        last = time.monotonic()
        while not wake() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if meanwhile is not None and time.monotonic() - last >= every:
                meanwhile()
                last = time.monotonic()

    def _stopping(self) -> bool:
        return self.terminating or self.interrupted

    def _install_signal_handlers(self) -> None:
        def on_term(signum: int, _frame: FrameType | None) -> None:
            log.info("SIGTERM: finishing the current task, then stopping")
            self.terminating = True

        def on_int(signum: int, _frame: FrameType | None) -> None:
            log.info("SIGINT: stopping the current task now; it goes back to its tube")
            self.interrupted = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
