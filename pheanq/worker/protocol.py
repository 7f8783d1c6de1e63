"""What a worker tells its tender: one line on its standard output per change of state, and its exit code.

``READY`` (waiting for a job), ``BUSY <task id>`` (running that task), ``CHILD <pid>`` (its command
started) and ``EXITED <code>`` (the command ended by itself: said before the result is recorded, so that
a tender can record it if the worker dies in between). Human logs go to standard error. A worker that
exits with EXIT_INTERRUPTED (SIGINT) handed its task back; exit 0 means it recorded its last task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
from typing import TextIO

EXIT_INTERRUPTED = 130


class Line(str, enum.Enum):
    READY = "READY"
    BUSY = "BUSY"
    CHILD = "CHILD"
    EXITED = "EXITED"


@dataclasses.dataclass(frozen=True)
class StateLine:
    kind: Line
    number: int | None = None     # the task id, the pid or the exit code

    def __str__(self) -> str:
        return self.kind.value if self.number is None else f"{self.kind.value} {self.number}"


def parse(text: str) -> StateLine | None:
    """The state line in `text`, or None when it is not one (a tender ignores anything else)."""
    words = text.split()
    if words == [Line.READY.value]:
        return StateLine(Line.READY)
    if len(words) != 2 or words[0] not in (Line.BUSY.value, Line.CHILD.value, Line.EXITED.value):
        return None
    if not words[1].lstrip("-").isdigit():
        return None
    return StateLine(Line(words[0]), int(words[1]))


class StateWriter:
    """Writes state lines to the worker's standard output (or `out`)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, line: StateLine) -> None:
        try:
            self.out.write(f"{line}\n")
            self.out.flush()
        except BrokenPipeError:
            # The supervisor reading the state lines is gone (a tender killed with -9): carry on without it,
            # and keep Python from failing again on the same pipe at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
