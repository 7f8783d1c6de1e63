"""The worker: reserve → claim → run the child → record → delete the job, until told to stop.

Its standard output carries only state lines a supervisor parses, one per change:
``READY`` (waiting for a job), ``BUSY <task id>`` (running that task),
``CHILD <pid>`` (its command started) and ``EXITED <code>`` (the command ended by
itself: said before the result is recorded, so that a tender can record it if this
worker dies in between). Human logs go to standard error.

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
from typing import TextIO, TypeVar

from pheanq.cancel import CancelWatch
from pheanq.errors import StoreUnavailable, TubeUnavailable
from pheanq.execution import Outcome, execute
from pheanq.lease import heartbeat_interval, holder_must_stop_after
from pheanq.pause import PausedTubes
from pheanq.service import TaskQueueService, WorkPackage
from pheanq.status import Status
from pheanq.worker_limits import WorkerLimits

log = logging.getLogger("pheanq.worker")
T = TypeVar("T")

EXIT_INTERRUPTED = 130
RESERVE_TIMEOUT = 1  # seconds; bounds how long a signal waits to be noticed while idle


def lease_interval(package: WorkPackage) -> float:
    """How often the task's lease on its row is renewed and its job touched (see pheanq.lease)."""
    return heartbeat_interval(package.row.ttr)


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


class Worker:
    def __init__(self, service: TaskQueueService, tubes: Sequence[str], *, stop_when_empty: bool = False,
                 max_tasks: int | None = None, limits: WorkerLimits | None = None, out: TextIO = sys.stdout) -> None:
        self.service = service
        self.tubes = list(tubes)
        self.stop_when_empty = stop_when_empty
        self.max_tasks = max_tasks
        self.limits = limits or WorkerLimits()
        self.cycles = 0
        self._paused = PausedTubes(service)
        self.out = out
        self.terminating = False   # SIGTERM: finish the task in hand, take no other
        self.interrupted = False   # SIGINT: stop the task in hand now
        self.tasks_run = 0
        self._backoff = Backoff()

    def run(self) -> int:
        """Work until stopped; returns the process exit code."""
        self._install_signal_handlers()
        log.info("worker %s watching %s on beanstalkd %s", self.service.worker_name, ",".join(self.tubes),
                 self.service.tube.name)
        self._say("READY")
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
                if self.stop_when_empty:
                    log.info("every tube is paused; stopping (--stop-when-empty)")
                    break
                self._pause(RESERVE_TIMEOUT)  # every tube is paused: look again in a moment
                continue
            package = self._retrying(functools.partial(self.service.reserve_task, tubes, RESERVE_TIMEOUT,
                                                       still_wanted=lambda: not self._stopping()))
            if package is None:
                if self.stop_when_empty and not self._stopping():
                    log.info("no job is ready; stopping (--stop-when-empty)")
                    break
                if self.limits.cycle_delay:
                    self._pause(self.limits.cycle_delay)
                continue
            if self.interrupted:
                # SIGINT came while this job was being claimed: hand it back without starting it. (After
                # SIGTERM a task already claimed is the current task: it runs, and no other follows.)
                self._hand_back(package)
                break
            self._say(f"BUSY {package.task_id}")
            self._work(package)
            self.tasks_run += 1
            self._say("READY")
        log.info("worker %s stops after %d task(s)", self.service.worker_name, self.tasks_run)
        return EXIT_INTERRUPTED if self.interrupted else 0

    def _work(self, package: WorkPackage) -> None:
        log.info("task %d (%s): attempt %d starts", package.task_id, package.description.command, package.attempt)
        cancel = CancelWatch(self.service, package)
        lease = self._lease(package)
        outcome = execute(package, self.service.settings, self.service.worker_name,
                          lambda: cancel.reason_to_stop() or lease(),
                          on_start=lambda pid: self._say(f"CHILD {pid}"),
                          on_exit=lambda code: self._say(f"EXITED {code}"))
        log.info("task %d: %s", package.task_id, outcome.log.splitlines()[0].strip("- "))
        if outcome.status is Status.CANCELLED:
            self._record(lambda: self.service.drop_cancelled(package, outcome.log), package)
        elif outcome.status is Status.NEW:
            self._record(lambda: self.service.release_task(package, outcome.log), package)
        else:
            self._record(lambda: self._finish(package, outcome), package)

    def _hand_back(self, package: WorkPackage) -> None:
        log.info("task %d: not started, the worker is stopping; it goes back to its tube", package.task_id)
        entry = f"--- attempt {package.attempt} on {self.service.worker_name}: not started: the worker was " \
                "stopping; the task goes back to its tube\n"
        self._record(lambda: self.service.release_task(package, entry), package)

    def _finish(self, package: WorkPackage, outcome: Outcome) -> bool:
        if outcome.status is Status.DONE:
            return self.service.mark_done(package, outcome.log, 0)
        return self.service.mark_failed(package, outcome.log, outcome.exit_code)

    def _lease(self, package: WorkPackage) -> Callable[[], str | None]:
        """While the child runs: renew the task's lease and touch its job; say when the child must stop.

        Either hold keeps the task this attempt's: the lease on the row (no claim takes over a task
        whose lease is renewed) or the beanstalkd reservation (no other worker can get a reserved job,
        and the reconciler leaves a task whose job is alive alone). So a restarted beanstalkd, or a
        database outage, alone does not stop the child. Only when both holds fail for long enough is it
        stopped, in time for no other worker to start the task while this child still runs.
        """
        interval = lease_interval(package)
        deadline_after = holder_must_stop_after(package.row.ttr)
        next_renewal = time.monotonic() + interval
        renewed = reserved = time.monotonic()
        job_lost = False

        def keep_running() -> str | None:
            nonlocal next_renewal, renewed, reserved, job_lost
            if self.interrupted:
                return "the worker was interrupted (SIGINT)"
            now = time.monotonic()
            if now < next_renewal:
                return None
            next_renewal = now + interval
            lease_problem = None
            try:
                if not self.service.renew_lease(package):
                    return "the task is no longer held by this attempt (another worker took it over)"
                renewed = now
            except StoreUnavailable as error:
                lease_problem = str(error)
            try:
                if self.service.touch(package):
                    reserved = now
                else:
                    job_lost = job_lost or self._note_job_lost(package, "beanstalkd no longer has it reserved "
                                                                        "for this worker")
            except TubeUnavailable as error:
                job_lost = job_lost or self._note_job_lost(package, str(error))
            if lease_problem is not None:
                held_for = now - max(renewed, reserved)
                if held_for >= deadline_after:
                    return f"neither the task's lease ({lease_problem}) nor its job's reservation could be " \
                           f"renewed for {held_for:.0f}s, so another worker may take the task over"
                log.warning("task %d: lease not renewed (%s)%s", package.task_id, lease_problem,
                            "; its job is still reserved" if reserved == now else
                            f"; the child goes on for up to {deadline_after - held_for:.0f}s more")
            return None

        return keep_running

    @staticmethod
    def _note_job_lost(package: WorkPackage, why: str) -> bool:
        log.warning("task %d: lost the reservation of job %d (%s); the task's lease keeps it", package.task_id,
                    package.job_id, why)
        return True

    def _record(self, write: Callable[[], bool], package: WorkPackage) -> None:
        """Record a task's result, waiting out a database outage while keeping the job reserved."""
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
            self.service.touch(package)

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

    def _say(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except BrokenPipeError:
            # The supervisor reading the state lines is gone (a tender killed with -9): carry on without it,
            # and keep Python from failing again on the same pipe at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())

    def _install_signal_handlers(self) -> None:
        def on_term(signum: int, _frame: FrameType | None) -> None:
            log.info("SIGTERM: finishing the current task, then stopping")
            self.terminating = True

        def on_int(signum: int, _frame: FrameType | None) -> None:
            log.info("SIGINT: stopping the current task now; it goes back to its tube")
            self.interrupted = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
