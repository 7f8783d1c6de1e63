"""`pheanq status --watch`: the status report drawn again every few seconds, with the rates of the last minute.

The counts are the table's (pheanq.storage.counts), the rates the tasks that ended done or failed in the minute
before each drawing, read from their `finished` times: a rate stays right when `task-cleanup` deletes tasks
meanwhile, which a difference of two counts would not. On a terminal each drawing replaces the last one in place;
elsewhere (a pipe, a log) they follow each other, each headed by its time, or one JSON document a line.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any, TextIO

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.ops.report import format_status, status_report, utc_text
from pheanq.ops.terminal import one_line

# The shortest time between two drawings: each reads the table and asks beanstalkd about every tube.
MIN_WATCH_INTERVAL = 0.5
# The window of the rates: done and failed per minute.
RATE_WINDOW = dt.timedelta(minutes=1)
# Home the cursor and clear the screen: the next drawing replaces this one.
_REDRAW = "\x1b[H\x1b[2J"


def watch_status(dispatch: Dispatcher, out: TextIO, interval: float, drawings: int | None = None, as_json: bool = False,
                 in_place: bool = False) -> None:
    """Draw the status every `interval` seconds, `drawings` times (None: until interrupted)."""
    drawn = 0
    while drawings is None or drawn < drawings:
        if drawn:
            time.sleep(interval)
        report = watched_report(dispatch)
        if as_json:
            out.write(json.dumps(report) + "\n")
        else:
            out.write((_REDRAW if in_place else ("\n" if drawn else "")) + format_watched(report) + "\n")
        out.flush()
        drawn += 1


def watched_report(dispatch: Dispatcher) -> dict[str, Any]:
    """The status report, with its time and, per tube, the tasks that ended done or failed in the last minute."""
    now = utc_now()
    report = status_report(dispatch)
    report["at"] = utc_text(now)
    for entry in report["tubes"].values():
        entry["last_minute"] = {"done": 0, "failed": 0}
    for tube, status, count in dispatch.store.tasks.finished_since(now - RATE_WINDOW):
        if tube in report["tubes"]:  # else its tasks were deleted (task-cleanup) since they ended
            report["tubes"][tube]["last_minute"][status.value] = count
    return report


def format_watched(report: dict[str, Any]) -> str:
    """The status table, headed by its time, and the tasks each tube ended in the last minute."""
    rates = [f"  {one_line(tube)}: {entry['last_minute']['done']} done, {entry['last_minute']['failed']} failed"
             for tube, entry in report["tubes"].items()]
    return "\n".join([f"pheanq status at {report['at']} (Ctrl-C to stop)", format_status(report), "",
                      "ended in the last minute:", *rates])
