"""Run one claimed Python task in the worker's child (pheanq.worker.python_pool) and say how it went.

The verdicts follow a command's: returned → `done` (its return value kept as the result), raised →
`failed` with the exception and its traceback in the log (or `retrying`, unless the retry policy names the
exception's class as not retried), stopped by a time limit → `failed`, by a cancel → `cancelled`, by a lost
lease or SIGINT → handed back. A child that died by itself is judged by its exit, as a command is: 0 is
`done` (with no result), anything else `failed`; so a tender that records it for a dead worker agrees.
A child stopped for using more than `max_child_memory` fails the attempt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from pheanq import tasklog
from pheanq.config import Settings
from pheanq.dispatch import WorkPackage
from pheanq.errors import StoreUnavailable
from pheanq.python_call import PythonCall
from pheanq.status import Status
from pheanq.worker.execution import Outcome, exit_words, stop_verdict
from pheanq.worker.holds import with_time_limit
from pheanq.worker.python_pool import MEMORY_STOP, PythonPool, PythonRun

log = logging.getLogger("pheanq.worker")

# A task's progress reaches its row at most this often (and its last value when the attempt ends).
PROGRESS_WRITE_SECONDS = 1.0


def execute_python(package: WorkPackage, call: PythonCall, pool: PythonPool, settings: Settings, worker_name: str,
                   keep_running: Callable[[], str | None], on_start: Callable[[int], None],
                   on_exit: Callable[[int], None], record_progress: Callable[[str], bool]) -> Outcome:
    """Run the task in the pool's child to its end (or until `keep_running` gives a reason to stop it)."""
    progress = ProgressWriter(record_progress)
    run = pool.run(package, call, with_time_limit(package.row.timeout, keep_running), on_start, on_exit,
                   progress.offer)
    progress.flush()
    return verdict(package, settings, worker_name, run)


def verdict(package: WorkPackage, settings: Settings, worker_name: str, run: PythonRun) -> Outcome:
    timing = f"after {run.seconds:.2f}s"

    def entry(text: str, output: str | None) -> str:
        return tasklog.attempt(package.attempt, worker_name, text, output)

    if run.stopped is not None and run.stopped.startswith(MEMORY_STOP):
        return Outcome(Status.FAILED, run.exit_code, entry(f"failed {timing}: {run.stopped}; it was "
                                                           "stopped", run.output))
    if run.stopped is not None:
        status, said = stop_verdict(package, run.stopped, timing, "its child process")
        return Outcome(status, run.exit_code, entry(said, run.output))
    outcome = run.outcome
    if outcome is None:
        if run.exit_code == 0:
            return Outcome(Status.DONE, 0, entry(f"done {timing}: its child process exited with code 0 "
                                                       "before the function returned; no result", run.output))
        ending = exit_words(run.exit_code)
        return Outcome(Status.FAILED, run.exit_code, entry(f"failed {timing}: its child process died "
                                                                 f"({ending}) before the function returned",
                                                                 run.output))
    if outcome.get("ok") is True:
        note = f"; {_text(outcome['note'])}" if outcome.get("note") else ""
        kept = run.output if settings.log_worker_output_on_success else None
        result = outcome.get("result")
        return Outcome(Status.DONE, 0, entry(f"done {timing}{note}", kept),
                       result=result if isinstance(result, str) and result == _text(result) else None)
    kept = run.output if settings.log_worker_output_on_failure else ""
    details = (kept or "") + ("" if not kept or kept.endswith("\n") else "\n") + _text(outcome.get("traceback", ""))
    errors = outcome.get("errors", ())
    return Outcome(Status.FAILED, 1, entry(f"failed {timing}: {_text(outcome.get('error'))}", details),
                   errors=tuple(_text(name) for name in errors) if isinstance(errors, list) else ())


def _text(value: object) -> str:
    """Text from the child as every database stores it (a lone surrogate shown as its escape)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


class ProgressWriter:
    """Writes a task's progress to its row at most once a PROGRESS_WRITE_SECONDS, and the last one at the end.
    Progress is for people watching: a database hiccup loses an update, never the task."""

    def __init__(self, record: Callable[[str], bool]) -> None:
        self.record = record
        self.latest: str | None = None
        self.written: str | None = None
        self.last_write = 0.0
        self._writing: threading.Thread | None = None

    def offer(self, progress: str) -> None:
        """Note the progress; write it, on a thread, when the last write is old enough and over: the loop that
        watches the child (and its lease) must not wait on the database, which a cut link makes wait 30 s."""
        self.latest = progress
        if time.monotonic() - self.last_write >= PROGRESS_WRITE_SECONDS and \
                (self._writing is None or not self._writing.is_alive()):
            self.last_write = time.monotonic()
            self._writing = threading.Thread(target=self.flush, name="pheanq-progress", daemon=True)
            self._writing.start()

    def flush(self) -> None:
        latest = self.latest
        if latest is None or latest == self.written:
            return
        self.last_write = time.monotonic()
        with contextlib.suppress(StoreUnavailable):
            self.record(latest)
            self.written = latest
