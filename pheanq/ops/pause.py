"""Pausing a tube: ``pheanq pause --use-tube T [--for SECONDS]`` and ``pheanq resume --use-tube T``.

Two holds, because either alone falls short: beanstalkd's pause-tube stops every client reserving from
the tube, but is forgotten when beanstalkd restarts; the row in `pheanq_tube` is kept, every worker
reads it (pheanq.worker.paused) and stops watching a paused tube, and the reconciler pauses the tube
in beanstalkd again after a restart. A task already running goes on to its end.
"""

from __future__ import annotations

import datetime as dt

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.limits import MAX_BEANSTALKD_SECONDS

# Without --for, a tube stays paused until it is resumed: beanstalkd's longest pause, 136 years.
FOREVER_SECONDS = MAX_BEANSTALKD_SECONDS


def pause_tube(dispatch: Dispatcher, tube: str, seconds: int | None) -> dt.datetime:
    """Pause the tube for `seconds` (None: until resumed); returns when the pause ends (UTC)."""
    length = FOREVER_SECONDS if seconds is None else seconds
    until = utc_now() + dt.timedelta(seconds=length)
    dispatch.store.admin.set_pause(tube, until, dispatch.worker_name)
    dispatch.beanstalkd.pause(tube, length)
    return until


def resume_tube(dispatch: Dispatcher, tube: str) -> bool:
    """Resume the tube; False when it was not paused."""
    was_paused = dispatch.store.admin.clear_pause(tube)
    dispatch.beanstalkd.pause(tube, 0)
    return was_paused


def reapply_pauses(dispatch: Dispatcher) -> None:
    """Pause again in beanstalkd every tube the table says is paused (beanstalkd forgets on a restart)."""
    now = utc_now()
    for tube, until in dispatch.store.admin.paused_tubes(now).items():
        dispatch.beanstalkd.pause(tube, min(FOREVER_SECONDS, max(1, int((until - now).total_seconds()))))
