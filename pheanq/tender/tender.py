"""The worker-tender: keeps the right number of `task-worker` processes alive for its tubes.

It knows each worker's state from the worker's own state lines (READY, BUSY <id>), applies the
policy of `pool.py` every tick, retires workers gracefully (SIGTERM: finish the task, then exit),
replaces dead ones (with a growing delay when they die right after start), and passes every line
the workers print through to its own stderr, prefixed with the worker's pid.

As a child subreaper it adopts whatever a dead worker left behind, and kills it: no task process
outlives the pool.

Signals: SIGTERM / SIGINT stop the pool (workers get SIGTERM; after --shutdown-timeout the ones
still busy get SIGINT, which hands their task back, and SIGKILL after that); SIGHUP replaces every
worker gracefully.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO

import psutil

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import PheanqError
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS
from pheanq.storage.tables import WorkerRow
from pheanq.tender.orphans import adopted_pids, command_of_dead_worker, kill_left_running, session_of
from pheanq.tender.pool import (
    Change,
    PoolLimits,
    WorkerState,
    WorkerView,
    next_change,
    restart_delay,
    workers_to_retire,
)
from pheanq.tender.reconciler import DEFAULT_INTERVAL_SECONDS, PeriodicReconciler
from pheanq.tender.recovery import Aftercare, OrphanedTask, reap_exit_code
from pheanq.tender.registry import Registration
from pheanq.tender.scheduler import Scheduler
from pheanq.worker.child import die_with_parent, linux_prctl
from pheanq.worker.protocol import EXIT_INTERRUPTED, TENDER_PID_VARIABLE, Line, parse
from pheanq.worker.undumpable import make_undumpable

log = logging.getLogger("pheanq.tender")

TICK_SECONDS = 0.1
QUICK_DEATH_SECONDS = 10.0      # a worker failing sooner than this after its start counts towards a crash loop
START_REPORT_SECONDS = 30.0     # a worker silent this long after its start is hung: killed, counted as a crash
INTERRUPT_GRACE_SECONDS = 5.0   # after SIGINT at the shutdown timeout, this long before SIGKILL
MEMORY_EVERY_SECONDS = 2.0
ORPHANS_EVERY_SECONDS = 1.0
REPORT_EVERY_SECONDS = 2.0
AFTERCARE_WAIT_SECONDS = 10.0   # at exit, how long settling the tasks of dead workers may still take
FINAL_REPORT_WAIT_SECONDS = 10.0  # at exit, how long the report in flight may take before the final one is written
_PR_SET_CHILD_SUBREAPER = 36


@dataclasses.dataclass
class TenderOptions:
    tubes: list[str]
    worker_command: list[str]
    limits: PoolLimits
    shutdown_timeout: float = 60.0
    allow_second: bool = False
    worker_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reconcile_interval: float = DEFAULT_INTERVAL_SECONDS
    reconcile_min_age: float = DEFAULT_MIN_AGE_SECONDS
    scheduler: bool = True                  # run the recurring schedules (pheanq.tender.scheduler)
    python_imports: tuple[str, ...] = ()    # modules beside [python] imports whose schedules it runs


class WorkerProcess:
    """One worker process as the tender sees it."""

    def __init__(self, process: subprocess.Popen[bytes], now: float) -> None:
        self.process = process
        self.pid = process.pid
        self.started = now
        self.started_wall = utc_now()
        self.state = WorkerState.STARTING
        self.state_since = now
        self.task_id: int | None = None
        self.child_pid: int | None = None       # the current task's command
        self.exit_code: int | None = None       # that command's own exit code, once it ended by itself
        self.raised: str | None = None          # a Python task's exception that its retry policy does not retry
        self.output_bytes = 0
        self.tasks_started = 0
        self.memory_mb: float | None = None
        self.retire_reason: str | None = None
        self.hung = False               # killed for saying nothing after its start
        self.last_lines: collections.deque[str] = collections.deque(maxlen=5)
        self.partial: dict[int, bytes] = {}

    def view(self, now: float) -> WorkerView:
        return WorkerView(self.pid, self.state, now - self.started,
                          now - self.state_since if self.state is WorkerState.IDLE else 0.0,
                          self.output_bytes, self.tasks_started, self.memory_mb)

    def on_state_line(self, text: str, now: float) -> None:
        line = parse(text)
        if line is None:
            return
        if line.kind is Line.READY:
            self.task_id, self.child_pid, self.exit_code, self.raised = None, None, None, None
            self._become(WorkerState.IDLE, now)
        elif line.kind is Line.BUSY:
            self.task_id, self.child_pid, self.exit_code, self.raised = line.number, None, None, None
            self.tasks_started += 1
            self._become(WorkerState.BUSY, now)
        elif line.kind is Line.CHILD:
            self.child_pid = line.number
        elif line.kind is Line.EXITED and self.task_id is not None:
            self.exit_code = line.number
        elif line.kind is Line.RAISED and self.task_id is not None:
            self.raised = line.name

    def orphaned_task(self, ending: str) -> OrphanedTask | None:
        """The task this worker held when it died without settling it, or None."""
        code = self.process.returncode
        if self.task_id is None or code in (0, EXIT_INTERRUPTED):
            return None  # exiting by itself, it recorded or handed back its task
        exit_code = self.exit_code
        # A command whose pid the worker had no time to say is found by its session (pheanq.tender.orphans).
        command = self.child_pid if self.child_pid is not None else command_of_dead_worker(self.pid)
        if exit_code is None and command is not None:
            exit_code = reap_exit_code(command)
            if exit_code is None:
                kill_left_running(command, self.pid)
        return OrphanedTask(self.task_id, f"{socket.gethostname()}:{self.pid}", exit_code,
                            f"worker {self.pid} died ({ending})", () if self.raised is None else (self.raised,))

    def _become(self, state: WorkerState, now: float) -> None:
        if self.state is not WorkerState.RETIRING:
            self.state = state
            self.state_since = now


class Tender:
    def __init__(self, options: TenderOptions, run_dir: Path, dispatch: Dispatcher | None = None,
                 out: IO[str] | None = None) -> None:
        self.options = options
        self.limits = options.limits
        self.registration = Registration(run_dir, options.tubes, dispatch.beanstalkd.server if dispatch else "-",
                                         options.allow_second)
        self.dispatch = dispatch
        self.out = out or sys.stderr
        self.workers: dict[int, WorkerProcess] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.replace_requested = False
        self.quick_deaths = 0
        self.last_quick_death = 0.0
        self.next_start_at = 0.0
        self._shutdown_deadline = 0.0
        self._kill_deadline: float | None = None
        self._last = {"memory": 0.0, "orphans": 0.0, "report": 0.0}
        self._pipe_closed = False
        self._report_failing = False
        self._reporter: threading.Thread | None = None
        self._aftercare = Aftercare(dispatch) if dispatch is not None else None
        self._reconciler = PeriodicReconciler(lambda: Dispatcher(dispatch.settings), options.tubes,
                                              options.reconcile_interval, options.reconcile_min_age) \
            if dispatch is not None else None
        self._scheduler = Scheduler(dispatch.settings, options.python_imports) \
            if dispatch is not None and options.scheduler else None
        self._started_wall = utc_now()

    def run(self) -> int:
        """Tend the pool until SIGTERM/SIGINT; returns the exit code."""
        make_undumpable()  # its environment holds the credentials its workers get, and their tasks must not
        problem = self.limits.problem()
        if problem is not None:
            raise PheanqError(problem)
        self.registration.register()
        try:
            self._install_signal_handlers()
            self._become_subreaper()
            if self._scheduler is not None:
                self._scheduler.start()  # imports the application: a module that fails is the one line said
            log.info("worker-tender %d for tube(s) %s: min %d, spare %d, max %d workers", os.getpid(),
                     ",".join(self.options.tubes), self.limits.min_workers, self.limits.spare_workers,
                     self.limits.max_workers)
            if self._reconciler is not None:
                self._reconciler.start()
            while not (self.stopping and not self.workers):
                self._tick()
        finally:
            if self._scheduler is not None:
                self._scheduler.stop()
            if self._reconciler is not None:
                self._reconciler.stop()
            if self._aftercare is not None:
                self._aftercare.close(AFTERCARE_WAIT_SECONDS)
            self._report(final=True)
            self.registration.release()
        log.info("worker-tender %d stopped", os.getpid())
        return 0

    def _tick(self) -> None:
        self._read_output(TICK_SECONDS)
        now = time.monotonic()
        self._reap(now)
        if self.stopping:
            self._shut_down(now)
        else:
            if self.replace_requested:
                self.replace_requested = False
                for worker in list(self.workers.values()):
                    self._retire(worker, "SIGHUP: replacing every worker")
            self._apply_policy(now)
        if now - self._last["orphans"] >= ORPHANS_EVERY_SECONDS:
            self._kill_orphans()
            self._last["orphans"] = now
        if now - self._last["report"] >= REPORT_EVERY_SECONDS:
            self._report()
            self._last["report"] = now

    def _apply_policy(self, now: float) -> None:
        # Measured with or without --max-worker-memory: the dashboard shows each worker's memory.
        if now - self._last["memory"] >= MEMORY_EVERY_SECONDS:
            for worker in self.workers.values():
                worker.memory_mb = _resident_mb(worker.pid)
            self._last["memory"] = now
        for worker in self.workers.values():
            if worker.state is WorkerState.STARTING and now - worker.started > START_REPORT_SECONDS \
                    and not worker.hung:
                worker.hung = True
                worker.process.kill()
            elif self.quick_deaths and worker.started > self.last_quick_death \
                    and now - worker.started > QUICK_DEATH_SECONDS:
                # A worker started since the last quick death has lived: the workers start fine again.
                self.quick_deaths = 0
        views = [worker.view(now) for worker in self.workers.values()]
        for retiring, reason in workers_to_retire(views, self.limits):
            self._retire(self.workers[retiring], reason)
        views = [worker.view(now) for worker in self.workers.values()]
        change, pid = next_change(views, self.limits, may_start=now >= self.next_start_at)
        if change is Change.START:
            self._start_worker(now)
        elif change is Change.RETIRE_SURPLUS and pid is not None:
            self._retire(self.workers[pid], f"more than {self.limits.min_workers + self.limits.spare_workers} "
                                            "workers idle")

    def _start_worker(self, now: float) -> None:
        prefix, arm = die_with_parent(signal.SIGTERM)  # a worker outliving its tender finishes its task, exits
        argv = [*prefix, *self.options.worker_command, "--use-tube", ",".join(self.options.tubes)]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env={**os.environ, **self.options.worker_env,
                                                                TENDER_PID_VARIABLE: str(os.getpid())},
                                       start_new_session=True, preexec_fn=arm)
        except OSError as error:
            self._count_quick_death(now, f"cannot start {self.options.worker_command[0]!r}: {error.strerror}")
            return
        worker = WorkerProcess(process, now)
        self.workers[worker.pid] = worker
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream, selectors.EVENT_READ, worker)
        log.info("started worker %d (%d in the pool)", worker.pid, len(self.workers))

    def _retire(self, worker: WorkerProcess, reason: str) -> None:
        if worker.state is WorkerState.RETIRING:
            return
        log.info("retiring worker %d: %s", worker.pid, reason)
        worker.retire_reason = reason
        worker.state = WorkerState.RETIRING
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)

    def _reap(self, now: float) -> None:
        for worker in [w for w in self.workers.values() if w.process.poll() is not None]:
            self._drain(worker)
            del self.workers[worker.pid]
            code = worker.process.returncode
            ending = f"signal {-code}" if code < 0 else f"exit code {code}"
            orphaned = worker.orphaned_task(ending)
            if orphaned is not None and self._aftercare is not None:
                self._aftercare.settle(orphaned)
            if worker.retire_reason is not None or self.stopping:
                log.info("worker %d ended (%s)", worker.pid, ending)
                continue
            held = f" while running task {worker.task_id}; the tender settles the task" \
                if worker.state is WorkerState.BUSY else ""
            if worker.hung:
                self._count_quick_death(now, f"worker {worker.pid} said nothing for {START_REPORT_SECONDS:.0f}s "
                                             "after its start and was killed", worker)
            elif code != 0 and now - worker.started < QUICK_DEATH_SECONDS and worker.tasks_started == 0:
                # Ended badly before running any task: a start that failed. A worker killed while it works
                # (OOM, kill -9) started fine, and is replaced at once.
                self._count_quick_death(now, f"worker {worker.pid} ended ({ending}) {now - worker.started:.1f}s "
                                             f"after its start{held}", worker)
            elif code == 0:
                log.info("worker %d exited on its own (exit code 0)%s; starting a replacement", worker.pid, held)
            else:
                log.warning("worker %d died (%s)%s; starting a replacement", worker.pid, ending, held)
            self._kill_orphans()

    def _count_quick_death(self, now: float, what: str, worker: WorkerProcess | None = None) -> None:
        self.quick_deaths += 1
        self.last_quick_death = now
        delay = restart_delay(self.quick_deaths)
        self.next_start_at = now + delay
        last = f"; its last lines: {' | '.join(worker.last_lines)}" if worker and worker.last_lines else ""
        log.error("%s (%d in a row); next start in %.1fs%s", what, self.quick_deaths, delay, last)

    def _shut_down(self, now: float) -> None:
        if not self._shutdown_deadline:
            self._shutdown_deadline = now + self.options.shutdown_timeout
            log.info("stopping: SIGTERM to %d worker(s); running tasks may take up to %.0fs to finish",
                     len(self.workers), self.options.shutdown_timeout)
            for worker in self.workers.values():
                self._retire(worker, "the tender is stopping")
        if self._kill_deadline is None and now >= self._shutdown_deadline and self.workers:
            log.warning("--shutdown-timeout passed: interrupting %d worker(s); their tasks go back to the tube",
                        len(self.workers))
            for worker in self.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGINT)
            self._kill_deadline = now + INTERRUPT_GRACE_SECONDS
        if self._kill_deadline is not None and now >= self._kill_deadline and self.workers:
            log.warning("killing %d worker(s) that did not stop", len(self.workers))
            for worker in self.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            self._kill_deadline = now + 3600

    def _read_output(self, timeout: float) -> None:
        """Read the workers' output for `timeout` seconds, or until a worker's pipe closes or a signal asks for
        something: the policy pass that follows looks at every worker, and under load lines come several times a
        task, so it runs about once a tick, not once a line."""
        if not self.selector.get_map():
            time.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        self._pipe_closed = False
        while True:
            with contextlib.suppress(InterruptedError):
                for key, _ in self.selector.select(max(0.0, deadline - time.monotonic())):
                    self._read(key.fileobj, key.data)  # type: ignore[arg-type]
            if self._pipe_closed or self.stopping or self.replace_requested or time.monotonic() >= deadline \
                    or not self.selector.get_map():
                return

    def _read(self, stream: IO[bytes], worker: WorkerProcess) -> bool:
        """Read one chunk of a worker's output; False when nothing came (and the pipe is closed at its end)."""
        fd = stream.fileno()
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            self._close(stream, worker)
            return False
        worker.output_bytes += len(chunk)
        *lines, worker.partial[fd] = (worker.partial.get(fd, b"") + chunk).split(b"\n")
        for line in lines:
            self._line(worker, fd, line)
        self.out.flush()
        return True

    def _close(self, stream: IO[bytes], worker: WorkerProcess) -> None:
        fd = stream.fileno()
        rest = worker.partial.pop(fd, b"")
        if rest:
            self._line(worker, fd, rest)
            self.out.flush()
        self.selector.unregister(stream)
        stream.close()
        self._pipe_closed = True

    def _line(self, worker: WorkerProcess, fd: int, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        assert worker.process.stdout is not None
        if fd == worker.process.stdout.fileno():
            worker.on_state_line(line, time.monotonic())
        else:
            worker.last_lines.append(line)
        self.out.write(f"worker {worker.pid}: {line}\n")  # flushed once the chunk's lines are written

    def _drain(self, worker: WorkerProcess) -> None:
        """Read what a worker that ended left in its pipes."""
        for stream in (worker.process.stdout, worker.process.stderr):
            if stream is None or stream.closed:
                continue
            while self._read(stream, worker):
                pass
            if not stream.closed:
                self._close(stream, worker)

    def _kill_orphans(self) -> None:
        """Kill what a dead worker left behind: as the subreaper, the tender inherits it."""
        # A command of a worker not settled yet (its pid said, or in its session): its exit status says whether
        # its task completed, so it is left for orphaned_task to read.
        commands = {worker.child_pid for worker in self.workers.values()}
        for pid in adopted_pids():
            if pid in self.workers or pid in commands or session_of(pid) in self.workers:
                continue
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                child = psutil.Process(pid)
                if child.status() != psutil.STATUS_ZOMBIE:
                    log.warning("killing process %d (%s) left behind by a dead worker", child.pid, child.name())
                    os.killpg(os.getpgid(child.pid), signal.SIGKILL)
                    child.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _report(self, final: bool = False) -> None:
        """Write the pool's state to the database for `pheanq status`; best effort, the pool runs without it.

        The write runs in a thread of its own, one at a time: a database that is locked or slow to answer
        delays the report, never the pool (reaping, restarts, retirements, passing output through).
        The final report (removing the pool's rows) waits for the one in flight, so it is the last word.
        """
        if self.dispatch is None:
            return
        host, me = socket.gethostname(), os.getpid()
        now = utc_now()
        tubes = ",".join(self.options.tubes)
        rows = [] if final else [
            WorkerRow(host, me, me, "tender", tubes, "stopping" if self.stopping else "running", None,
                      self._started_wall, now, _resident_mb(me, children=False)),
            *(WorkerRow(host, me, w.pid, "worker", tubes, w.state.value, w.task_id, w.started_wall, now, w.memory_mb)
              for w in self.workers.values()),
        ]
        if final:
            if self._reporter is not None:
                self._reporter.join(FINAL_REPORT_WAIT_SECONDS)
            self._write_report(host, me, rows)
        elif self._reporter is None or not self._reporter.is_alive():
            self._reporter = threading.Thread(target=self._write_report, args=(host, me, rows),
                                              name="pheanq-pool-report", daemon=True)
            self._reporter.start()

    def _write_report(self, host: str, me: int, rows: list[WorkerRow]) -> None:
        assert self.dispatch is not None
        try:
            self.dispatch.store.admin.replace_pool(host, me, rows)
        except PheanqError as error:
            if not self._report_failing:
                log.warning("cannot report the pool to the database (pheanq status will not show it): %s", error)
            self._report_failing = True
            return
        self._report_failing = False

    def _install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            if not self.stopping:
                log.info("%s: stopping the pool", signal.Signals(signum).name)
            self.stopping = True

        def on_hup(signum: int, _frame: FrameType | None) -> None:
            log.info("SIGHUP: replacing every worker gracefully")
            self.replace_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    @staticmethod
    def _become_subreaper() -> None:
        prctl = linux_prctl()
        if prctl is not None:
            prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _resident_mb(pid: int, children: bool = True) -> float | None:
    """Resident memory of a process and (unless `children` is false) all its descendants, in MB."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True) if children else []:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return None
    return total / 1_000_000

