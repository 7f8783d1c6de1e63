"""Which of a worker's tubes are paused (`pheanq pause`): read from the table, at most every
PAUSE_CHECK_SECONDS, so that a worker stops watching a paused tube even when beanstalkd forgot the pause."""

from __future__ import annotations

import time

from pheanq.clock import utc_now
from pheanq.storage import Store

PAUSE_CHECK_SECONDS = 2.0


class PausedTubes:
    """The paused tubes as a worker sees them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._paused: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def active(self, tubes: list[str]) -> list[str]:
        """Those of `tubes` that are not paused."""
        if time.monotonic() - self._read_at >= PAUSE_CHECK_SECONDS:
            self._paused = frozenset(self.store.admin.paused_tubes(utc_now()))
            self._read_at = time.monotonic()
        return [tube for tube in tubes if tube not in self._paused]
