"""The chaos scenarios' Python task (`--import chaostasks`): the same work as their command, in a worker's child."""

from __future__ import annotations

import os
import time

from pheanq import current_task, task


@task(name="chaos.sleep-and-record")
def sleep_and_record(duration: float, ran: str) -> None:
    """Sleep, then append the task's id to `ran` in one write on an O_APPEND descriptor (lines never interleave)."""
    time.sleep(duration)
    descriptor = os.open(ran, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{current_task().task_id}\n".encode())
    finally:
        os.close(descriptor)
