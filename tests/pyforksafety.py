"""A test application for fork safety (`--import pyforksafety`): tasks that collect garbage and use the database
through pheanq themselves, in the worker's children."""

from __future__ import annotations

import gc
import os

from pheanq import task


@task
def collect_garbage() -> int:
    """Whatever the child inherited and lost track of is collected here, in the child."""
    gc.collect()
    return os.getpid()


@task
def queue_from_the_child(n: int) -> int:
    """queue_task() inside a task: the child's own connection, never the worker's."""
    return collect_garbage.queue() if n else 0


@task
def leave_a_mess(directory: str) -> None:
    """Change what a process has: working directory, environment, a signal handler, an armed alarm, a mask."""
    import signal

    os.chdir(directory)
    os.environ["PYFORKSAFETY_LEFT"] = "1"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    signal.alarm(1)


@task
def what_was_left(wait: float) -> dict[str, object]:
    """What the process looks like to the next task (after `wait` seconds: longer than the alarm left armed)."""
    import signal
    import time

    time.sleep(wait)  # the pause is what is tested: longer than the alarm the task before left armed
    return {"cwd": os.getcwd(), "left": os.environ.get("PYFORKSAFETY_LEFT"), "pid": os.getpid(),
            "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, set()))}
