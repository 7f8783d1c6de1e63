"""How long a worker's hold on a task lasts: one rule, used by the worker that holds a task, by a
worker that finds it held, by the reconciler and by `pheanq show`.

A worker renews its lease on the row (the task's `heartbeat`) and its beanstalkd reservation every
`heartbeat_interval(ttr)` seconds. A lease not renewed for `stale_after(ttr)` seconds is stale: its
holder is gone, or cut off and has stopped its child, so another worker may take the task over.
"""

from __future__ import annotations

HEARTBEAT_CAP_SECONDS = 10.0
HEARTBEAT_FLOOR_SECONDS = 0.2
# Beyond three missed heartbeats: slack for a slow database and for clocks a little apart across hosts.
STALE_MARGIN_SECONDS = 2.0


def heartbeat_interval(ttr: int) -> float:
    """Three renewals per TTR, so one late touch still keeps the reservation; at most every 10 s."""
    return max(HEARTBEAT_FLOOR_SECONDS, min(ttr / 3, HEARTBEAT_CAP_SECONDS))


def stale_after(ttr: int) -> float:
    """Seconds after the last heartbeat from which nobody holds the task any more."""
    return 3 * heartbeat_interval(ttr) + STALE_MARGIN_SECONDS


def holder_must_stop_after(ttr: int) -> float:
    """Seconds after its last successful heartbeat at which a holder stops its child: well before the
    lease counts as stale anywhere else, so no two children of one task ever run at once."""
    return stale_after(ttr) - heartbeat_interval(ttr) - STALE_MARGIN_SECONDS / 2
