"""The overview's live figures: tasks ended done and failed per minute (or per quarter hour, over a day), the
queue wait's median and 95th percentile in the same buckets, and each tube's oldest waiting task, all read from
the table (pheanq.storage.activity), so every host's workers are counted.

The waits are a sample: at most WAIT_SAMPLE tasks that ended in each bucket. A percentile of 50 tasks is within
a few percent of the whole bucket's for the shapes queues have, and a bucket of a busy hour costs what a quiet
one does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from typing import Any

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput
from pheanq.status import CLAIMABLE, Status
from pheanq.storage.counts import ready_since

WAIT_SAMPLE = 50


@dataclasses.dataclass(frozen=True)
class Window:
    name: str
    buckets: int
    bucket_seconds: int


WINDOWS = {"hour": Window("hour", 60, 60), "day": Window("day", 96, 900)}


def window_named(name: str) -> Window:
    try:
        return WINDOWS[name]
    except KeyError:
        raise InvalidInput(f"window: {name!r} is not one of {', '.join(WINDOWS)}") from None


def activity(dispatch: Dispatcher, window: Window, tube: str | None = None) -> dict[str, Any]:
    """The window's series: bucket start times as Unix seconds, then one value per bucket each."""
    now = utc_now()
    # Buckets end at the next whole bucket after now, so a bucket keeps its start time from one drawing to the next.
    end = dt.datetime.fromtimestamp((now.timestamp() // window.bucket_seconds + 1) * window.bucket_seconds,
                                    dt.timezone.utc).replace(tzinfo=None)
    start = end - dt.timedelta(seconds=window.buckets * window.bucket_seconds)
    edges = [start + dt.timedelta(seconds=i * window.bucket_seconds) for i in range(window.buckets + 1)]
    buckets = list(itertools.pairwise(edges))
    done = [0] * window.buckets
    failed = [0] * window.buckets
    for bucket, status, n in dispatch.store.activity.ends_per_bucket(buckets, tube):
        (done if status == Status.DONE.value else failed)[bucket] += n
    waits = dispatch.store.activity.waits(buckets, WAIT_SAMPLE, tube)
    return {
        "window": window.name,
        "bucket_seconds": window.bucket_seconds,
        "tube": tube,
        "times": [edge.replace(tzinfo=dt.timezone.utc).timestamp() for edge in edges[:-1]],
        "done": done,
        "failed": failed,
        "wait_p50": [percentile(sample, 50) for sample in waits],
        "wait_p95": [percentile(sample, 95) for sample in waits],
    }


def oldest_waiting(dispatch: Dispatcher, counts: dict[str, dict[str, int]]) -> dict[str, float]:
    """Tube -> how long (seconds) its longest-ready task has waited for a worker, as the metric
    pheanq_oldest_ready_age_seconds says it (pheanq.storage.counts.ready_since), from the tubes' task counts
    (tube -> status -> count) that say which tubes have ready tasks."""
    now = utc_now()
    claimable = [(tube, status) for tube, statuses in counts.items() for status in sorted(CLAIMABLE)
                 if statuses.get(status.value)]
    return {tube: round(max(0.0, (now - since).total_seconds()), 1)
            for tube, since in ready_since(dispatch.store.database, now, claimable).items()}


def percentile(values: list[float], rank: float) -> float | None:
    """The nearest-rank percentile of `values` (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)], 3)
