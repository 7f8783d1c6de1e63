"""Prometheus metrics of a whole pheanq installation, read at each scrape from the task table and beanstalkd.

Nothing here is counted in this process: every value comes from what every producer, worker and tender on every
host wrote to the shared database, or from the shared beanstalkd, so any number of processes may serve the same
metrics and they agree (docs/metrics.rst). A scrape folds the changes the count triggers noted (into the counts,
the totals and the histograms of pheanq.storage.totals), then reads. It never raises: a database or a beanstalkd
that does not answer leaves its families out and sets `pheanq_database_up` or `pheanq_beanstalkd_up` to 0.

`PheanqCollector` is a prometheus_client collector, for a registry of one's own; `metrics_text` the exposition text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import PheanqError
from pheanq.ops.report import STALE_REPORT_SECONDS
from pheanq.ops.servers import JOB_STATES, BeanstalkdFigures, ServerFigures, beanstalkd_figures
from pheanq.status import CLAIMABLE, FINAL, Status
from pheanq.storage import Store, counts, totals
from pheanq.storage.limit_places import LimitUse
from pheanq.storage.tables import WorkerRow
from pheanq.task_limits import LimitTable

log = logging.getLogger("pheanq.metrics")
T = TypeVar("T")

# The outcomes of pheanq_tasks_total: the statuses a task ends in (done, failed, cancelled, upstream_failed).
OUTCOMES = tuple(status for status in Status if status in FINAL)
# The state of a worker or tender whose tender has not reported for longer than STALE_REPORT_SECONDS.
STALE = "stale"
# The histograms' names (pheanq_task_<name>_seconds) by their metric in pheanq.storage.totals.
HISTOGRAMS = {"run": "run", "wait": "queue_wait"}


@dataclasses.dataclass(frozen=True)
class TableFigures:
    """What a scrape reads from the database."""

    now: dt.datetime
    counted: list[tuple[str, Status, int]]
    entered: list[tuple[str, str, Status, int]]
    histograms: list[totals.Histogram]
    ready_since: dict[str, dt.datetime]
    pool: list[WorkerRow]
    limits: list[LimitUse] = dataclasses.field(default_factory=list)


_NOTHING = TableFigures(dt.datetime(2000, 1, 1), [], [], [], {}, [])


class PheanqCollector:
    """The metric families of the installation that `dispatch` reaches (its database and its beanstalkd)."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch

    def describe(self) -> Iterable[Metric]:
        """The families, empty, without reading anything: a registry checks their names when it takes the
        collector."""
        return [*_table_families(_NOTHING, []), _jobs({}), *_server_families([]), _up("database", False),
                _up("beanstalkd", False)]

    def collect(self) -> Iterator[Metric]:
        table = self._read_table()
        tubes = sorted({self.dispatch.settings.default_tube} | {tube for tube, _, _ in (table or _NOTHING).counted})
        figures = self._read_beanstalkd(tubes)
        if table is not None:
            yield from _table_families(table, tubes)
        if figures is not None:
            if any(server.up for server in figures.servers):
                yield _jobs({tube: stats or {} for tube, stats in figures.tubes.items()})
            yield from _server_families(figures.servers)
        yield _up("database", table is not None)
        yield _up("beanstalkd", figures is not None and all(server.up for server in figures.servers if server.listed))

    def _read_table(self) -> TableFigures | None:
        return _answered(lambda: read_table(self.dispatch.store, self.dispatch.limits), "the database")

    def _read_beanstalkd(self, tubes: list[str]) -> BeanstalkdFigures | None:
        return _answered(lambda: beanstalkd_figures(self.dispatch, tubes), "beanstalkd")


def _answered(read: Callable[[], T], what: str) -> T | None:
    """What `read` returns; None when it failed. A scrape answers whatever failed: the signal is the up gauge,
    the reason a line of the log (pheanq's own errors, an outage, say what to do; anything else has a traceback)."""
    try:
        return read()
    except PheanqError as error:
        log.warning("metrics: cannot read %s: %s", what, error)
    except Exception:
        log.exception("metrics: cannot read %s", what)
    return None


def read_table(store: Store, limits: LimitTable | None = None) -> TableFigures:
    """Fold the changes the count triggers noted, then read what the metrics show of the table (what
    scripts/bench-listings times on 10 million rows)."""
    now = utc_now()
    counted = counts.count_tasks(store.database)  # folds first: the totals read next are as fresh as the counts
    claimable = [(tube, status) for tube, status, _ in counted if status in CLAIMABLE]
    return TableFigures(now, counted, totals.status_totals(store.database), totals.histograms(store.database),
                        counts.ready_since(store.database, now, claimable), store.admin.list_pool(),
                        store.limit_places.usage(limits, now) if limits else [])


def _table_families(table: TableFigures, tubes: list[str]) -> Iterator[Metric]:
    tube_task = ["tube", "task"]
    entered = {(tube, command, status): n for tube, command, status, n in table.entered}
    ended = CounterMetricFamily("pheanq_tasks", "Tasks that ended, by tube, task (its command) and outcome (the "
                                "status it ended in); never lowered by deleting tasks",
                                labels=["tube", "task", "outcome"])
    retries = CounterMetricFamily("pheanq_task_retries", "Attempts that failed with attempts left (moves to "
                                  "retrying)", labels=tube_task)
    stalls = CounterMetricFamily("pheanq_task_stalls", "Attempts whose worker died or lost its lease (moves to "
                                 "stalled)", labels=tube_task)
    # Every outcome of every tube and task that has any, 0 for those it has none of: a ratio of rates needs both.
    for tube, command in sorted({(tube, command) for tube, command, _ in entered}):
        for status in OUTCOMES:
            ended.add_metric([tube, command, status.value], entered.get((tube, command, status), 0))
        retries.add_metric([tube, command], entered.get((tube, command, Status.RETRYING), 0))
        stalls.add_metric([tube, command], entered.get((tube, command, Status.STALLED), 0))
    yield from (ended, retries, stalls)

    histograms = {
        "run": HistogramMetricFamily("pheanq_task_run_seconds", "How long attempts that ended with a verdict ran "
                                     "(started to finished)", labels=tube_task),
        "wait": HistogramMetricFamily("pheanq_task_queue_wait_seconds", "How long tasks were ready before a "
                                      "worker claimed them", labels=tube_task),
    }
    for histogram in table.histograms:
        histograms[histogram.metric].add_metric(
            [histogram.tube, histogram.command],
            [("+Inf" if math.isinf(bound) else repr(float(bound)), count) for bound, count in histogram.buckets],
            histogram.sum)
    yield from histograms.values()

    stored = GaugeMetricFamily("pheanq_tasks_stored", "Tasks the table holds now, by tube and status",
                               labels=["tube", "status"])
    oldest = GaugeMetricFamily("pheanq_oldest_ready_age_seconds", "How long the longest-ready task of the tube has "
                               "waited for a worker (0: none is ready)", labels=["tube"])
    by_status = {(tube, status): n for tube, status, n in table.counted}
    for tube in tubes:
        for status in Status:
            stored.add_metric([tube, status.value], by_status.get((tube, status), 0))
        since = table.ready_since.get(tube)
        oldest.add_metric([tube], 0.0 if since is None else max(0.0, (table.now - since).total_seconds()))
    yield from (stored, oldest)

    for kind, what in (("worker", "Workers of the worker-tenders"), ("tender", "Worker-tenders")):
        family = GaugeMetricFamily(f"pheanq_{kind}s", f"{what} by host and state, as the tenders last reported "
                                   f"them ({STALE}: no report for over {STALE_REPORT_SECONDS} s)",
                                   labels=["host", "state"])
        states = Counter((row.host, STALE if (table.now - row.heartbeat).total_seconds() > STALE_REPORT_SECONDS
                          else row.state) for row in table.pool if row.kind == kind)
        for (host, state), n in sorted(states.items()):
            family.add_metric([host, state], n)
        yield family

    scope_kind = ["scope", "kind"]
    places = GaugeMetricFamily("pheanq_limit_places", "Places of each cluster-wide limit: N running at once "
                               "(concurrency) or N starts per period (rate)", labels=scope_kind)
    in_use = GaugeMetricFamily("pheanq_limit_in_use", "Places in use: running tasks (concurrency) or starts "
                               "within the period (rate)", labels=scope_kind)
    waiting = GaugeMetricFamily("pheanq_limit_waiting", "Tasks of the limit's scope yet to start", labels=scope_kind)
    for use in table.limits:
        places.add_metric([use.scope, use.kind], use.size)
        in_use.add_metric([use.scope, use.kind], use.in_use)
        waiting.add_metric([use.scope, use.kind], use.waiting)
    yield from (places, in_use, waiting)


def _jobs(stats: dict[str, dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("pheanq_beanstalkd_jobs", "beanstalkd's jobs of the tube, by state",
                               labels=["tube", "state"])
    for tube, figures in stats.items():
        for state in JOB_STATES:
            family.add_metric([tube, state], int(figures.get(f"current-jobs-{state}", 0)))
    return family


def _server_families(servers: list[ServerFigures]) -> Iterator[Metric]:
    """Each beanstalkd server: whether it answered, and its jobs of the tubes by state."""
    up = GaugeMetricFamily("pheanq_beanstalkd_server_up", "1 when the beanstalkd server answered this scrape",
                           labels=["server"])
    jobs = GaugeMetricFamily("pheanq_beanstalkd_server_jobs", "The server's jobs of pheanq's tubes, by state",
                             labels=["server", "state"])
    for server in servers:
        up.add_metric([server.address], int(server.up))
        for state in JOB_STATES if server.up else ():
            jobs.add_metric([server.address, state], server.jobs[state])
    yield from (up, jobs)


def _up(what: str, answered: bool) -> Metric:
    return GaugeMetricFamily(f"pheanq_{what}_up", f"1 when {what} answered this scrape, 0 when not",
                             value=int(answered))


def metrics_registry(dispatch: Dispatcher) -> CollectorRegistry:
    """A registry of pheanq's metrics alone (no process metrics: they would be this server's, not pheanq's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PheanqCollector(dispatch))
    return registry


def metrics_text(dispatch: Dispatcher) -> bytes:
    """The metrics in Prometheus' text format (version 0.0.4), as GET /metrics answers them."""
    return generate_latest(metrics_registry(dispatch))
