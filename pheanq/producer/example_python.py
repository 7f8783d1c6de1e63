"""The built-in example Python task: `pheanq task-worker --import pheanq.producer.example_python` runs it.

It shows what a Python task has that a command has not: a result, progress, and the worker's child
process that ran it (reused from one task to the next).
"""

from __future__ import annotations

import os
import time

from pheanq.producer.python_task import task
from pheanq.task_context import current_task


@task(name="pheanq.example-python")
def example_python_task(message: str = "hello world", steps: int = 3) -> dict[str, object]:
    """Print `message`, report progress over `steps` steps of 0.2 s, and return what it did."""
    print(f"{message} (task {current_task().task_id}, child process {os.getpid()})")
    for step in range(1, steps + 1):
        time.sleep(0.2)
        current_task().progress(step, steps, f"step {step} of {steps}")
    return {"message": message, "steps": steps, "child_pid": os.getpid()}
