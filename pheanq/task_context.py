"""What a running Python task knows about itself: `pheanq.current_task()`.

Inside a worker's child it names the task (id, attempt, batch) and carries `progress()`, which the worker
writes to the task's row (at most once a second, and the last value when the attempt ends). In a plain
call of a task function (tests, scripts), `current_task()` gives a context with no id whose progress
is only kept in the object.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

from pheanq.errors import InvalidInput
from pheanq.limits import MAX_PROGRESS_JSON, MAX_PROGRESS_MESSAGE, MAX_PROGRESS_NUMBER

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
    scheduled_for: dt.datetime | None = None  # the slot (tz-aware, UTC) of the schedule that queued it
    done: int | None = None
    total: int | None = None
    message: str | None = None
    _report: Report | None = dataclasses.field(default=None, repr=False)
    _sent: float = dataclasses.field(default=0.0, repr=False)
    _unsent: bool = dataclasses.field(default=False, repr=False)

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Say how far the task is: `done` of `total` (when known), with a short message."""
        for what, value in (("done", done), ("total", total)):
            if value is not None and not _whole(value):
                raise InvalidInput(f"progress: {what} must be a whole number from 0 to {MAX_PROGRESS_NUMBER}, "
                                   f"not {value!r}")
        if message is not None and not isinstance(message, str):
            raise InvalidInput(f"progress: message must be a str, not {type(message).__name__}")
        self.done, self.total = done, total
        self.message = None if message is None else _fitting(message)
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


def progress_json(value: Any) -> str | None:
    """The JSON a task's row keeps of a progress its child reported, or None when `progress()` could not have
    made it (the worker writes nothing the row cannot hold, whatever a child sends)."""
    if not isinstance(value, dict) or set(value) != {"done", "total", "message"}:
        return None
    if not all(number is None or _whole(number) for number in (value["done"], value["total"])):
        return None
    message = value["message"]
    if message is not None and (not isinstance(message, str) or _fitting(message) != message):
        return None
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_PROGRESS_JSON else None


# Room for the message's JSON in the row's progress, next to the two largest numbers and the keys.
_MESSAGE_JSON = MAX_PROGRESS_JSON - len(json.dumps(progress_value(MAX_PROGRESS_NUMBER, MAX_PROGRESS_NUMBER, ""),
                                                   separators=(",", ":")))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PROGRESS_NUMBER


def _fitting(message: str) -> str:
    """The message as the row keeps it: its first MAX_PROGRESS_MESSAGE characters, a lone surrogate shown as its
    escape, and cut further while its JSON (a control character takes six characters) would not fit the row."""
    text = message[:MAX_PROGRESS_MESSAGE].encode("utf-8", "backslashreplace").decode("utf-8")[:MAX_PROGRESS_MESSAGE]
    while len(json.dumps(text, ensure_ascii=False)) > _MESSAGE_JSON:
        text = text[:-1]
    return text


_current: TaskContext | None = None


def current_task() -> TaskContext:
    """The task this code runs in; outside a worker, a context with no task id (see the module's doc)."""
    return _current if _current is not None else TaskContext(None, "(called directly)")


def enter(context: TaskContext | None) -> None:
    """Make `context` the current task (a worker's child, around each task it runs); None ends it."""
    global _current
    _current = context
