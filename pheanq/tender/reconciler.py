"""The tender's reconciler: a pass over its tubes every `interval` seconds, and at once when beanstalkd restarted.

A beanstalkd that restarts without a binlog has lost every job it held, and waiting a whole interval (and
`min_age` on top) for the next pass leaves the workers idle meanwhile. So between passes the thread asks
beanstalkd every WATCH_SECONDS which run of the server it is talking to (its id, pid, uptime and job
counter, see ServerIdentity); when that changed, and at its first look, it reconciles the tubes at once,
checking the tasks whose job id was recorded whatever their age (`reconcile(after_restart=True)`: their put
is done, so a missing job was lost with the server, while a task still without a job id may be mid-put and
waits out `min_age` as always). With several servers (pheanq.beanstalkd) each is watched, and one that stops
answering owes the same pass: the tasks whose jobs it held are sent to the others. Each pass also forgets the
records of buried jobs that beanstalkd no longer holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from pheanq.beanstalkd import ServerIdentity
from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import PheanqError, TubeUnavailable
from pheanq.ops.buried import prune_buried
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS, reconcile

log = logging.getLogger("pheanq.reconcile")

DEFAULT_INTERVAL_SECONDS = 30.0
# How often the thread asks beanstalkd whether it restarted: one `stats` on a connection it keeps, and the
# most a restart waits to be noticed.
WATCH_SECONDS = 0.25
# A server's start is taken as its uptime before now, to the second, on this host's clock: tasks changed up to this
# much after it are still checked (clocks of hosts a little apart, the uptime's rounding).
START_MARGIN = dt.timedelta(seconds=5)


class PeriodicReconciler:
    """Runs `reconcile` every `interval` seconds, and at once after a restart of beanstalkd, on a thread of its
    own, with a dispatcher (connections) of its own."""

    def __init__(self, make_dispatcher: Callable[[], Dispatcher], tubes: list[str], interval: float,
                 min_age: float = DEFAULT_MIN_AGE_SECONDS) -> None:
        self.make_dispatcher = make_dispatcher
        self.tubes = tubes
        self.interval = interval
        self.min_age = min_age
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pheanq-reconciler", daemon=True)
        self._servers: dict[str, ServerIdentity] = {}  # the run of each beanstalkd server seen last
        self._unreachable_servers: set[str] = set()
        self._unreachable = False                       # every server is
        self._after_restart: set[str] = set()          # tubes still owed a pass after a restart
        self._restarted_at: dt.datetime | None = None   # ... of the tasks changed before this (None: all)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        dispatch: Dispatcher | None = None
        next_pass = time.monotonic() + self.interval
        while not self._stop.wait(WATCH_SECONDS):
            try:
                dispatch = dispatch or self.make_dispatcher()
                self._watch(dispatch)
                if self._unreachable:
                    continue  # said once by _watch; a pass would only fail on every look
                if self._after_restart:
                    self._pass(dispatch, sorted(self._after_restart), after_restart=True)
                    if not self._after_restart:
                        self._restarted_at = None
                if time.monotonic() >= next_pass:
                    next_pass = time.monotonic() + self.interval
                    self._pass(dispatch, self.tubes, after_restart=False)
            except PheanqError as error:
                log.warning("reconcile skipped: %s", error)
            except Exception as error:  # the next pass may well succeed; the tender goes on
                log.error("reconcile failed: %s: %s", type(error).__name__, error)
        if dispatch is not None:
            dispatch.close()

    def _watch(self, dispatch: Dispatcher) -> None:
        """Note which run of each beanstalkd server answers; after a restart of any, owe every tube a pass. With
        several servers, one that stops answering also owes a pass: its tasks go to the others."""
        answers = dispatch.beanstalkd.identities()
        for address, answer in answers.items():
            self._watch_server(address, answer, dispatch.beanstalkd.several)
        self._unreachable = all(address in self._unreachable_servers for address in answers)

    def _watch_server(self, address: str, server: ServerIdentity | TubeUnavailable, several: bool) -> None:
        if isinstance(server, TubeUnavailable):
            if address not in self._unreachable_servers:
                log.warning("%s; watching for its return%s", server,
                            "; its tasks go to the other servers now" if several else "")
                if several:
                    self._owe_pass(None)
            self._unreachable_servers.add(address)
            return
        earlier = self._servers.get(address)
        if earlier is None:
            # What the server held before this first look is unknown (it may have restarted just before the
            # tender did, or while it was unreachable since the tender started): check at once, as after a restart.
            log.info("watching beanstalkd at %s for a restart (pid %d, up %ds); reconciling now", address,
                     server.pid, server.uptime)
            self._owe_pass(server)
        elif server.restarted_since(earlier):
            log.warning("beanstalkd at %s restarted (pid %d, up %ds; before: pid %d, up %ds): the jobs it held may "
                        "be lost; reconciling now", address, server.pid, server.uptime, earlier.pid, earlier.uptime)
            self._owe_pass(server)
        elif address in self._unreachable_servers:
            log.warning("beanstalkd at %s answers again (the same run: pid %d, up %ds)", address, server.pid,
                        server.uptime)
        self._servers[address] = server
        self._unreachable_servers.discard(address)

    def _owe_pass(self, started: ServerIdentity | None) -> None:
        """Owe every tube a pass over the tasks whose jobs a server may have lost: with `started` (a server that
        started again), those changed before its start; with None (a server gone), all of them."""
        owed = None if started is None else utc_now() - dt.timedelta(seconds=started.uptime) + START_MARGIN
        if self._after_restart and (self._restarted_at is None or owed is None):
            owed = None  # a pass owed already over all of them stays so
        elif self._after_restart and owed is not None and self._restarted_at is not None:
            owed = max(owed, self._restarted_at)
        self._restarted_at = owed
        self._after_restart = set(self.tubes)

    def _pass(self, dispatch: Dispatcher, tubes: list[str], after_restart: bool) -> None:
        for n, tube in enumerate(tubes):
            # Workflows once a pass, not once a tube.
            report = reconcile(dispatch, tube, min_age=self.min_age, settle=n == 0, after_restart=after_restart,
                               restarted_at=self._restarted_at if after_restart else None)
            if report.locked_by is not None:
                continue  # another reconciler runs: a pass owed after a restart is tried again at the next look
            self._after_restart.discard(tube)
            if report.sent_again or report.stalled or report.workflows:
                log.warning("reconciled tube %s: %s", tube, report.summary())
            pruned = prune_buried(dispatch, tube)
            if pruned:
                log.info("tube %s: forgot %d record(s) of buried jobs beanstalkd no longer holds", tube, pruned)
