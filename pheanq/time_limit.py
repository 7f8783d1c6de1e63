"""A task's own time limit, ``queue_task(..., timeout=S)``: its command may run S seconds, then its worker
stops it (SIGTERM to its process group, SIGKILL after a grace) and the attempt fails with a log that says so.

It is independent of the TTR, which only says how long a worker may hold the job between two renewals;
the worker keeps renewing that while the command runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def with_time_limit(timeout: int | None, keep_running: Callable[[], str | None]) -> Callable[[], str | None]:
    """`keep_running` that also says stop once `timeout` seconds have passed (from now)."""
    if timeout is None:
        return keep_running
    deadline = time.monotonic() + timeout
    reason = timed_out(timeout)

    def keep_running_in_time() -> str | None:
        return reason if time.monotonic() >= deadline else keep_running()

    return keep_running_in_time


def timed_out(timeout: int) -> str:
    """Why a command was stopped at its time limit (the log says it; execution recognises it)."""
    return f"timed out: the task may run {timeout}s"
