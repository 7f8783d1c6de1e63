"""The application of tests/test_python_review.py (`--import pyreview`): tasks that misbehave in the ways a review of
Python tasks looked for."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pheanq import current_task, task


@task
def progress_then_raise(steps: int) -> None:
    """Reports progress in a burst, then raises at once: its child says `EXITED 1` and its outcome, then (with
    max_tasks_per_child=1) exits 0 while its worker may still be busy with the progress."""
    context = current_task()
    for step in range(1, steps + 1):
        context.progress(step, step)
    print("failing now")
    raise ValueError("raised after progress")


@task
def fork_and_exit() -> str:
    """Forks a process of its own that ends with sys.exit(0), as a fork without exec is often written."""
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    os.waitpid(pid, 0)
    return f"parent {os.getpid()}"


@task
def whoami() -> int:
    return current_task().task_id or 0


@task
def odd_progress(kind: str) -> str:
    context = current_task()
    if kind == "control":
        context.progress(1, 2, "\x01" * 200)
    elif kind == "huge":
        context.progress(10**700, 10**700 + 1)
    elif kind == "surrogate":
        context.progress(1, 2, "bad \udcff name")
    return kind


@task
def surrogate_result() -> list[str]:
    """Returns a file name as os.listdir gives one that is not UTF-8 (surrogateescape)."""
    return [b"caf\xe9".decode("utf-8", "surrogateescape")]


@task
def surrogate_error() -> None:
    """Raises with a file name as os.listdir gives one that is not UTF-8 (surrogateescape)."""
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    print(f"looking at {name}")
    raise ValueError(f"cannot process {name}")


def _sync_wrapper(function: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)
    return wrapper


@task
@_sync_wrapper
async def wrapped_coroutine(path: str) -> str:
    await asyncio.sleep(0)  # a real await: the coroutine only runs if it is awaited
    with open(path, "w") as out:
        out.write("ran")
    return "ran"


@task
def leave_an_alarm(seconds: int) -> str:
    """Arms an alarm it never cancels (a timeout used only on a path that did not happen): it goes off in the
    child after the task, and its default action kills the child."""
    signal.alarm(seconds)
    return "armed"


@task
def close_streams() -> str:
    """Closes fds 0, 1 and 2 and leaves sys.stdout on a StringIO, as a careless daemonising helper does."""
    sys.stdout = io.StringIO()
    for fd in (0, 1, 2):
        os.close(fd)
    return "closed"


@task
def print_and_fail(text: str) -> None:
    print(text)
    raise RuntimeError("failed after printing")


@task
def keywords(**kwargs: Any) -> dict[str, Any]:
    return kwargs
