"""Pausing a tube: ``pheanq pause --use-tube T [--for SECONDS]`` and ``pheanq resume --use-tube T``.

Two holds, because either alone falls short: beanstalkd's pause-tube stops every client reserving from
the tube, but is forgotten when beanstalkd restarts; the row in `pheanq_tube` is kept, every worker
reads it (at most every PAUSE_CHECK_SECONDS) and stops watching a paused tube, and the reconciler
pauses the tube in beanstalkd again after a restart. A task already running goes on to its end.
"""

from __future__ import annotations

import datetime as dt
import time

from pheanq.clock import utc_now
from pheanq.service import TaskQueueService

# Without --for, a tube stays paused until it is resumed (beanstalkd's longest pause, 136 years).
FOREVER_SECONDS = 2**32 - 1
PAUSE_CHECK_SECONDS = 2.0


def pause_tube(service: TaskQueueService, tube: str, seconds: int | None) -> dt.datetime:
    """Pause the tube for `seconds` (None: until resumed); returns when the pause ends (UTC)."""
    length = FOREVER_SECONDS if seconds is None else seconds
    until = utc_now() + dt.timedelta(seconds=length)
    service.store.set_pause(tube, until, service.worker_name)
    service.tube.pause(tube, length)
    return until


def resume_tube(service: TaskQueueService, tube: str) -> bool:
    """Resume the tube; False when it was not paused."""
    was_paused = service.store.clear_pause(tube)
    service.tube.pause(tube, 0)
    return was_paused


def reapply_pauses(service: TaskQueueService) -> None:
    """Pause again in beanstalkd every tube the table says is paused (beanstalkd forgets on a restart)."""
    now = utc_now()
    for tube, until in service.store.paused_tubes(now).items():
        service.tube.pause(tube, min(FOREVER_SECONDS, max(1, int((until - now).total_seconds()))))


class PausedTubes:
    """The paused tubes as a worker sees them: read from the table at most every PAUSE_CHECK_SECONDS."""

    def __init__(self, service: TaskQueueService) -> None:
        self.service = service
        self._paused: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def active(self, tubes: list[str]) -> list[str]:
        """Those of `tubes` that are not paused."""
        if time.monotonic() - self._read_at >= PAUSE_CHECK_SECONDS:
            self._paused = frozenset(self.service.store.paused_tubes(utc_now()))
            self._read_at = time.monotonic()
        return [tube for tube in tubes if tube not in self._paused]

