"""Job ids recorded in groups, off the caller's path: `queue_task` commits once per task, not twice.

The job id on a row is for the reconciler: it asks beanstalkd whether that job still lives. A `new` task whose
id is not recorded yet is left alone for `min_age` seconds (its put may be in flight), so the id need not be
written before `queue_task` returns; it only has to be written well within `min_age`. A put's (task, job) pair
is kept here and written with the others of the same moment, in one transaction, by a thread of this process,
within FLUSH_SECONDS; at `close()` and at the interpreter's exit what is left is written at once.

Each write is a compare-and-set: the id is noted only on a row that is still `new` and has no job id. A worker
that claimed the job has recorded it itself, and a task that moved on (claimed, cancelled, retried under a new
job) keeps what it has: a late write never replaces a newer job id. If the process dies before a write, the
row stays without a job id, as after a failed write: the reconciler finds it after `min_age` and sends it again;
the worker that claims either job first runs the task, and the other job is refused by the claim.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import weakref

from pheanq.errors import StoreUnavailable
from pheanq.storage import Store

log = logging.getLogger("pheanq.dispatch")

# How long a put's job id may wait to be written: far below the reconciler's min_age (20 s by default).
FLUSH_SECONDS = 0.05
# At most this many unwritten ids are kept while the database is away; beyond, the oldest are given up (their
# tasks are checked by the reconciler after min_age, as tasks whose id could not be written).
MAX_UNWRITTEN = 10_000
# After a write that failed (the database away), the next try comes this much later.
RETRY_SECONDS = 1.0


class JobIdRecorder:
    """Writes (task id, job id) pairs of `new` tasks in groups, from a thread of its own."""

    _unwritten: dict[int, int]
    _thread: threading.Thread | None

    def __init__(self, store: Store) -> None:
        self.store = store
        self._reset()
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def add(self, task_id: int, job_id: int) -> None:
        """Note that `task_id` was sent as `job_id`; it is written within FLUSH_SECONDS."""
        if self._pid != os.getpid():
            # A forked child: its parent writes what it put; the child starts with nothing and a thread of its own.
            self._reset()
        with self._lock:
            self._unwritten[task_id] = job_id
            if len(self._unwritten) > MAX_UNWRITTEN:
                given_up = next(iter(self._unwritten))
                log.warning("task %d was sent as job %d, but its job id could not be written; the reconciler "
                            "checks it after min_age", given_up, self._unwritten.pop(given_up))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pheanq-job-ids", daemon=True)
                self._thread.start()
        self._wake.set()

    def flush(self) -> None:
        """Write every id noted so far, now; a database that is away leaves them for the next try."""
        if self._pid != os.getpid():
            return
        with self._writing:
            with self._lock:
                pairs = list(self._unwritten.items())
            if not pairs:
                return
            self.store.tasks.record_job_ids(pairs)
            with self._lock:
                # Taken out only once written: a write cut short (the interpreter ending) is written again.
                for task_id, job_id in pairs:
                    if self._unwritten.get(task_id) == job_id:
                        del self._unwritten[task_id]

    def close(self) -> None:
        """Write what is left and stop the thread."""
        atexit.unregister(self._at_exit)
        self._stop.set()
        self._wake.set()
        try:
            self.flush()
        except StoreUnavailable as error:
            self._warn_unwritten(error)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join(timeout=5)

    def unwritten(self) -> int:
        with self._lock:
            return len(self._unwritten)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._unwritten = {}
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            # A short wait gathers the puts of this moment into one transaction (close() cuts it short).
            if self._stop.wait(FLUSH_SECONDS):
                return
            self._wake.clear()
            try:
                self.flush()
            except StoreUnavailable as error:
                log.warning("%d job id(s) not written yet (%s); trying again", self.unwritten(), error)
                self._wake.set()
                self._stop.wait(RETRY_SECONDS)

    def _warn_unwritten(self, error: Exception) -> None:
        if count := self.unwritten():
            log.warning("%d job id(s) were not written (%s); the reconciler checks their tasks after min_age",
                        count, error)


def _flush_at_exit(recorder: weakref.ref[JobIdRecorder]) -> None:
    found = recorder()
    if found is None:
        return
    try:
        found.flush()
    except Exception as error:  # at exit, a warning is all that can be done: no traceback
        found._warn_unwritten(error)
