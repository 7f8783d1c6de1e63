"""What a running Python task knows about itself: `pheanq.current_task()`.

Inside a worker's child it names the task (id, attempt, batch) and carries `progress()`, which the worker
writes to the task's row (at most once a second, and the last value when the attempt ends). In a plain
call of a task function (tests, scripts), `current_task()` gives a context with no id whose progress
is only kept in the object.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from pheanq.errors import InvalidInput
from pheanq.limits import MAX_PROGRESS_MESSAGE

Report = Callable[[dict[str, Any]], None]
# The child tells its worker at most this often; a later call within the interval is sent once it ends.
SEND_INTERVAL = 0.1


@dataclasses.dataclass
class TaskContext:
    """The task being run in this process (task_id None: the function was called directly, not queued)."""

    task_id: int | None
    name: str
    attempt: int = 1
    batch_id: int | None = None
    done: int | None = None
    total: int | None = None
    message: str | None = None
    _report: Report | None = dataclasses.field(default=None, repr=False)
    _sent: float = dataclasses.field(default=0.0, repr=False)
    _unsent: bool = dataclasses.field(default=False, repr=False)

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Say how far the task is: `done` of `total` (when known), with a short message."""
        for what, value in (("done", done), ("total", total)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInput(f"progress: {what} must be a whole number of 0 or more, not {value!r}")
        if message is not None and not isinstance(message, str):
            raise InvalidInput(f"progress: message must be a str, not {type(message).__name__}")
        self.done, self.total = done, total
        self.message = None if message is None else message[:MAX_PROGRESS_MESSAGE]
        self._unsent = True
        now = time.monotonic()
        if self._report is not None and (now - self._sent >= SEND_INTERVAL or (total is not None and done >= total)):
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Send the last progress to the worker, if it has not been sent."""
        if self._report is not None and self._unsent:
            self._report({"progress": progress_value(self.done, self.total, self.message)})
            self._sent = time.monotonic() if now is None else now
            self._unsent = False


def progress_value(done: int | None, total: int | None, message: str | None) -> dict[str, Any]:
    return {"done": done, "total": total, "message": message}


_current: TaskContext | None = None


def current_task() -> TaskContext:
    """The task this code runs in; outside a worker, a context with no task id (see the module's doc)."""
    return _current if _current is not None else TaskContext(None, "(called directly)")


def enter(context: TaskContext | None) -> None:
    """Make `context` the current task (a worker's child, around each task it runs); None ends it."""
    global _current
    _current = context
