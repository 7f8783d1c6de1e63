"""The built-in example task: proves a set-up end to end without any application code."""

from __future__ import annotations

import time
from typing import TextIO

from pheanq.description import TaskDescription

EXAMPLE_COMMAND = "example-task-worker"
ANNOUNCEMENT = "I HAVE A MESSAGE FOR YOU!"


class ExampleTask(TaskDescription):
    command = EXAMPLE_COMMAND

    def __init__(self, wait: int = 1, message: str = "hello world") -> None:
        super().__init__(arguments=[wait], options={"message": message})


def run_example(wait: int, message: str, out: TextIO) -> None:
    """Print the announcement, a dot a second for `wait` seconds, then the message."""
    out.write(ANNOUNCEMENT + "\n")
    out.flush()
    for _ in range(wait):
        time.sleep(1)
        out.write(".")
        out.flush()
    out.write(("\n" if wait else "") + message + "\n")
    out.flush()
