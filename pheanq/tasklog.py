"""The entries of a task's log, one function each: every `--- ...` line pheanq writes is made here.

A task's `log` column is the story of its attempts, read by people (`pheanq show`) and by scripts that
look for these lines. Each entry starts with `---`; an entry that says when something happened ends with
`at YYYY-MM-DD HH:MM:SS UTC`. Only entries start with `---`: a line of a command's output that does is kept
with `OUTPUT_MARK` in front of it, so a task cannot write a line that reads as one of pheanq's entries.
"""

from __future__ import annotations

import datetime as dt
import re

OUTPUT_MARK = "| "
# `---` at the start of the output or of any line, by every line boundary `str.splitlines` knows: a script
# that splits the log on `\r` or U+2028 must not find an entry there either.
_ENTRY_LOOKALIKE = re.compile("(^|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029])"
                              # Characters a terminal shows as nothing, which text output keeps (joiners) or
                              # which a script reading the log may skip: `\u200d---` must be marked too.
                              "([\u00ad\u200b-\u200f\u2060-\u2064\ufeff]*)---")


def attempt(number: int, worker: str, verdict: str, output: str | None = None) -> str:
    """How attempt `number` on `worker` went, followed by what its command printed (if kept)."""
    header = f"--- attempt {number} on {worker}: {verdict}\n"
    if not output:
        return header
    # PostgreSQL refuses NUL in text (and the worker would fail on every try): show it as U+FFFD instead.
    output = _ENTRY_LOOKALIKE.sub(lambda match: f"{match[1]}{match[2]}{OUTPUT_MARK}---",
                                  output.replace("\x00", "\ufffd"))
    return header + output + ("" if output.endswith("\n") else "\n")


def stalled(number: int, worker: str | None) -> str:
    """The reconciler found an attempt's job gone and its worker silent."""
    return f"--- attempt {number}: stalled: its job is gone from beanstalkd and its worker ({worker}) stopped " \
           "renewing its lease; the task is sent again\n"


def holder_gone(number: int, worker: str | None) -> str:
    """A worker found an attempt's job back in its tube and its holder silent."""
    return f"--- attempt {number}: its worker ({worker}) stopped renewing its lease\n"


def retrying(wait: int, next_attempt: int, max_attempts: int) -> str:
    return f"--- retrying in {wait}s (attempt {next_attempt} of {max_attempts})\n"


def not_retried(why: str, number: int, max_attempts: int) -> str:
    return f"--- not retried: {why} (attempt {number} of {max_attempts})\n"


def regenerated(first: int, last: int, now: dt.datetime, failed_batch: int | None = None) -> str:
    """A failed task was regenerated: its retry policy allows attempts `first` to `last` from here;
    `failed_batch`: its batch, when that batch's `catch` already ran (and so its `then` never will)."""
    allowed = f"attempt {first}" if first == last else f"attempts {first} to {last}"
    batch = "" if failed_batch is None else \
        f"; batch {failed_batch} already ran its 'catch' callback, so it will not run 'then'"
    return f"--- regenerated: {allowed} may run (a fresh allowance of its retry policy){batch} {at(now)}\n"


def cancelled(by: str, now: dt.datetime, batch: int | None = None) -> str:
    within = "" if batch is None else f" with batch {batch}"
    return f"--- cancelled{within} by {by} {at(now)}\n"


def cancel_requested(by: str, now: dt.datetime, worker: str | None, batch: int | None = None) -> str:
    """A cancel of a `working` task: its worker stops the command and ends the task."""
    within = "" if batch is None else f" with batch {batch}"
    return f"--- cancel requested{within} by {by} while {worker or 'a worker'} runs it {at(now)}\n"


# After the attempt's entry, when a cancel was requested while the attempt ran.
CANCEL_CAME_TOO_LATE = "--- the cancel came after the command had completed: the work was done, and the task is done\n"


def ended_by_cancel(number: int) -> str:
    """After the entry of attempt `number`, which a cancel requested while it ran ends instead of what it
    would have led to (a retry, a stall, a hand-back, a failure)."""
    return f"--- cancelled: a cancel was requested while attempt {number} ran; no other attempt follows\n"


def not_run(parent: int, ending: str, now: dt.datetime) -> str:
    """A waiting task ended `upstream_failed`: `parent`, which it waited for, `ending` (e.g. "ended failed")."""
    return f"--- not run: task {parent}, which it waits for, {ending}; {at(now)}\n"


def callback_queued(which: str, batch: int, now: dt.datetime) -> str:
    """The first entry of a batch's callback task: which callback (then, catch, finally) it is."""
    return f"--- queued as the {which!r} callback of batch {batch} {at(now)}\n"


def at(moment: dt.datetime) -> str:
    """`at 2026-01-31 12:00:00 UTC`: the one way a log entry says when."""
    return f"at {moment:%Y-%m-%d %H:%M:%S} UTC"
