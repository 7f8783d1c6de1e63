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
