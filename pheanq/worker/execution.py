"""Run one claimed task: look its command up in the registry, run the child, and say how it went.

The verdict (done, failed, or released because the worker had to stop it) and
the log entry for the attempt are decided here; the worker records them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from pheanq import tasklog
from pheanq.config import Settings
from pheanq.description import build_argv
from pheanq.dispatch import WorkPackage
from pheanq.status import Status
from pheanq.worker.child import ChildResult, run_child
from pheanq.worker.holds import CANCELLED, timed_out, with_time_limit
from pheanq.worker.task_env import TaskEnvironment


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: Status          # DONE, FAILED, NEW when the task must be handed back, CANCELLED when it was cancelled
    exit_code: int | None
    log: str
    output_bytes: int = 0
    result: str | None = None           # a Python task's return value as JSON
    errors: tuple[str, ...] = ()        # the classes of a Python task's exception, for its retry policy


def execute(package: WorkPackage, settings: Settings, worker_name: str,
            keep_running: Callable[[], str | None], on_start: Callable[[int], None] | None = None,
            on_exit: Callable[[int], None] | None = None, environment: TaskEnvironment | None = None) -> Outcome:
    """Run the package's command to its end (or until `keep_running` gives a reason to stop it).
    `on_start` and `on_exit` are passed to `run_child`; `environment` is the worker's (else this process's)."""
    description = package.description
    prefix = settings.registry().get(description.command)
    if prefix is None:
        known = ", ".join(sorted(settings.registry()))
        return Outcome(Status.FAILED, None, tasklog.attempt(
            package.attempt, worker_name, f"failed: command {description.command!r} is not registered on this "
            f"worker (known: {known}); add it to [commands] in pheanq.toml"))
    result = run_child(
        build_argv(prefix, description),
        env=(environment or TaskEnvironment(os.environ, settings)).of_task(package.task_id, package.row.scheduled_for),
        max_output=settings.max_log_bytes,
        keep_running=with_time_limit(package.row.timeout, keep_running),
        on_start=on_start,
        on_exit=on_exit,
    )
    status, verdict, output = _verdict(package, settings, result)
    return Outcome(status, result.exit_code, tasklog.attempt(package.attempt, worker_name, verdict, output),
                   result.output_bytes)


def _verdict(package: WorkPackage, settings: Settings, result: ChildResult) -> tuple[Status, str, str | None]:
    """How the attempt ended: its status, what its log entry says, and the output the entry keeps."""
    timing = f"after {result.seconds:.2f}s"
    if result.stopped is not None:
        status, verdict = stop_verdict(package, result.stopped, timing, "its command")
        return status, verdict, result.output
    if result.exit_code == 0:
        return Status.DONE, f"done {timing}", result.output if settings.log_worker_output_on_success else None
    ending = exit_words(result.exit_code)
    return Status.FAILED, f"failed {timing}: {ending}", \
        result.output if settings.log_worker_output_on_failure else None


def stop_verdict(package: WorkPackage, stopped: str, timing: str, what: str) -> tuple[Status, str]:
    """How an attempt the worker stopped ended (`stopped` says why; `what` names what was stopped): its time limit
    fails it, a cancel cancels it, anything else (SIGINT, a lost lease) hands the task back."""
    if package.row.timeout is not None and stopped == timed_out(package.row.timeout):
        return Status.FAILED, f"failed {timing}: {stopped}; {what} was stopped"
    if stopped == CANCELLED:
        return Status.CANCELLED, f"stopped {timing}: {CANCELLED}"
    return Status.NEW, f"interrupted {timing}: {stopped}; the task goes back to its tube"


def exit_words(code: int) -> str:
    """`exit code 3`, or `killed by signal 9` for -9."""
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
