"""What a worker tells its tender: one line on its standard output per change of state, and its exit code.

``READY`` (waiting for a job), ``BUSY <task id>`` (running that task), ``CHILD <pid>`` (its command
started) and ``EXITED <code>`` (the command ended by itself: said before the result is recorded, so that
a tender can record it if the worker dies in between). A Python task that raised an exception its retry
policy does not retry says ``RAISED <module.Class>`` just before its ``EXITED 1``, so that a tender recording
the failure follows the same policy. Human logs go to standard error. A worker that
exits with EXIT_INTERRUPTED (SIGINT) handed its task back; exit 0 means it recorded its last task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
from typing import TextIO

EXIT_INTERRUPTED = 130
# Set by a tender in its workers' environment: its pid. A worker whose parent is that pid knows that a command it
# leaves behind by dying is dealt with (see pheanq.tender.orphans).
TENDER_PID_VARIABLE = "PHEANQ_TENDER_PID"


class Line(str, enum.Enum):
    READY = "READY"
    BUSY = "BUSY"
    CHILD = "CHILD"
    EXITED = "EXITED"
    RAISED = "RAISED"


@dataclasses.dataclass(frozen=True)
class StateLine:
    kind: Line
    number: int | None = None     # the task id, the pid or the exit code
    name: str | None = None       # RAISED: the exception class's name

    def __str__(self) -> str:
        if self.name is not None:
            return f"{self.kind.value} {self.name}"
        return self.kind.value if self.number is None else f"{self.kind.value} {self.number}"


# A class as a retry policy names it (pheanq.retry.class_name), and no longer than a pipe writes at once.
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
MAX_NAME = 400


def parse(text: str) -> StateLine | None:
    """The state line in `text`, or None when it is not one (a tender ignores anything else)."""
    words = text.split()
    if words == [Line.READY.value]:
        return StateLine(Line.READY)
    if len(words) == 2 and words[0] == Line.RAISED.value and len(words[1]) <= MAX_NAME \
            and _CLASS_NAME.match(words[1]):
        return StateLine(Line.RAISED, name=words[1])
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


def under_tender() -> bool:
    """Whether this process is a worker of a live worker-tender (its parent, which said so)."""
    return os.environ.get(TENDER_PID_VARIABLE) == str(os.getppid())
