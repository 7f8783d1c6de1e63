"""The application a Python-task test worker imports (`--import pytasks`): one task per behaviour under test."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pheanq import Retry, current_task, on_child_start, on_worker_start, task

log = logging.getLogger("pytasks")
CHILD_STARTS: list[int] = []


class Permanent(Exception):
    """An error a retry policy names as not retried."""


@on_worker_start
def _worker_started() -> None:
    marker = os.environ.get("PYTASKS_HOOKS")
    if marker:
        with open(marker, "a") as out:
            out.write(f"worker {os.getpid()}\n")


@on_child_start
def _child_started() -> None:
    CHILD_STARTS.append(os.getpid())
    marker = os.environ.get("PYTASKS_HOOKS")
    if marker:
        with open(marker, "a") as out:
            out.write(f"child {os.getpid()}\n")


@task
def add(a: int, b: int = 0) -> int:
    return a + b


@task(name="pytasks.renamed-echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs, "task": current_task().task_id, "pid": os.getpid()}


@task(tube="pytube", retry=Retry(max_attempts=3, delay=0, jitter=False), timeout=30)
def routed(x: int) -> int:
    return x * 2


@task(retry=Retry(max_attempts=3, delay=0, jitter=False, non_retryable_errors={Permanent}))
def fail(kind: str, marker: str = "") -> None:
    if marker:
        with open(marker, "a") as out:
            out.write(f"{current_task().attempt}\n")
    print("about to fail")
    log.warning("logged before failing")
    if kind == "permanent":
        raise Permanent("this cannot work")
    raise ValueError(f"bad value {kind}")


@task
def talk(lines: int, width: int = 100) -> str:
    for n in range(lines):
        print(f"{n:06d} " + "x" * width)
    print("to stderr", file=sys.stderr)
    log.error("to logging")
    return "spoke"


@task
def progress(steps: int, pause: float = 0.0) -> int:
    context = current_task()
    for step in range(1, steps + 1):
        context.progress(step, steps, f"step {step}")
        time.sleep(pause)  # the task's work between two reports of its progress
    return steps


@task
def progress_held(steps: int, gate: str) -> int:
    """Reports its progress up to the step before the last, then waits until the file `gate` exists (a minute at
    most): a test reads the progress of a task that is surely still running."""
    context = current_task()
    for step in range(1, steps):
        context.progress(step, steps, f"step {step}")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)  # the poll of a deadline wait (60 s): the test creates the gate once it has read the progress
    context.progress(steps, steps, f"step {steps}")
    return steps


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)  # the task's work: a real await on the child's event loop
    return a + b


@task
def wait_for_file(path: str, started: str = "", seconds: float = 60) -> str:
    if started:
        Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)  # the poll of a deadline wait: the task runs until the test lets it
    return "went"


@task
def crash(how: str) -> None:
    print("before the crash", flush=True)
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(int(os.environ.get("PYTASKS_EXIT", "7")))
    elif how == "exit0":
        os._exit(0)
    elif how == "sys.exit":
        sys.exit(4)


_hoard: list[bytes] = []


@task
def leak(megabytes: int) -> int:
    for _ in range(megabytes):
        _hoard.append(b"x" * 2**20)
        time.sleep(0.005)  # the leak grows over time, so the worker's memory poll sees it pass the limit
    time.sleep(1)  # the leak is held long enough for the poll to see it
    return len(_hoard)


@task
def not_json() -> object:
    return {1, 2, 3}


@task
def pid() -> int:
    return os.getpid()


@task
def queue_another(a: int) -> int:
    return add.queue(a, 1)


@task
def big_result(size: int) -> str:
    return "x" * size


@task
def held(runs: str, go: str, fail: bool = False) -> str:
    """Appends ``start <task id> <pid>`` to RUNS, waits for GO to exist (a minute at most), then appends
    ``done <task id>``: a run that was cut short has a start and no done. With `fail`, it then raises
    Permanent."""
    task_id = current_task().task_id
    with open(runs, "a") as out:
        out.write(f"start {task_id} {os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the poll of a deadline wait: the task runs until the test lets it
    with open(runs, "a") as out:
        out.write(f"done {task_id}\n")
    if fail:
        raise Permanent("held, then failed")
    return "held"


@task
async def async_fail(message: str) -> None:
    await asyncio.sleep(0)  # a real await before the raise: the traceback passes through the event loop
    raise ValueError(message)


@task(concurrency=1, rate="2/s", limit_key_of=lambda tenant, **_: f"tenant:{tenant}")
def limited_echo(tenant: str, text: str = "") -> str:
    """A task with limits declared in code and a limit key made from its arguments."""
    return text
