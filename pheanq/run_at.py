"""When a task may run: ``queue_task(delay=S)`` or ``queue_task(run_at=datetime)``, kept on the row as
`run_at` (UTC) and turned into beanstalkd's delay each time the job is put.

So the delay survives everything that puts the job again: a put that failed (the task was pending), a
job lost by beanstalkd (the reconciler's re-put), and a wait longer than beanstalkd's own limit on a
delay. A job that arrives before its task's `run_at` is put back, delayed for the rest, unrun.
"""

from __future__ import annotations

import datetime as dt
import math

from pheanq.errors import InvalidInput
from pheanq.limits import MAX_BEANSTALKD_SECONDS

# A job delivered this close to its time runs: clocks and beanstalkd's whole seconds are not finer.
EARLY_TOLERANCE = dt.timedelta(seconds=1)


def run_at_of(delay: int, run_at: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """The UTC time (naive, as stored) from which the task may run, or None for "now"."""
    if run_at is None:
        return now + dt.timedelta(seconds=delay) if delay else None
    if delay:
        raise InvalidInput("give delay or run_at, not both")
    if not isinstance(run_at, dt.datetime):
        raise InvalidInput(f"run_at must be a datetime, not {type(run_at).__name__}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidInput("run_at must be a timezone-aware datetime (a naive one could mean any zone)")
    return run_at.astimezone(dt.timezone.utc).replace(tzinfo=None)


def put_delay(run_at: dt.datetime | None, now: dt.datetime) -> int:
    """The delay to put a task's job with now: the time left until `run_at`, within beanstalkd's limit (a longer
    wait is done in several puts: the job comes back early and is put back for the rest)."""
    if run_at is None:
        return 0
    return min(MAX_BEANSTALKD_SECONDS, max(0, math.ceil((run_at - now).total_seconds())))


def is_early(run_at: dt.datetime | None, now: dt.datetime) -> bool:
    return run_at is not None and run_at > now + EARLY_TOLERANCE
