"""Limits for a worker started from cron rather than kept by a tender (the `released` bundle's options).

A worker stops, after its current task, once it has checked the tube `--cycles-limit` times (a check
counts whether a job came or not), run for `--time-limit` seconds, or grown past `--memory-limit` MB of
resident memory; `--cycle-delay` is a pause after a check that found nothing. With `--single-id`, a
second worker with the same id (and `--pid-dir`) exits at once, so a cron line every minute keeps exactly
one worker per id running. The lock files live in a private directory (pheanq.rundir): another user
can neither pre-link them to a file of ours nor hold their lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
from pathlib import Path
from typing import IO

import psutil

from pheanq.errors import InvalidInput
from pheanq.rundir import open_private_file, private_directory

SINGLE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    cycles_limit: int | None = None
    cycle_delay: float = 0.0
    memory_limit_mb: float | None = None
    time_limit: float | None = None

    def reason_to_stop(self, cycles: int, seconds: float) -> str | None:
        """Why the worker must stop now (it has no task in hand), or None."""
        if self.cycles_limit is not None and cycles >= self.cycles_limit:
            return f"--cycles-limit {self.cycles_limit} reached"
        if self.time_limit is not None and seconds >= self.time_limit:
            return f"--time-limit {self.time_limit:g}s reached"
        if self.memory_limit_mb is not None:
            resident = psutil.Process().memory_info().rss / 1_000_000
            if resident > self.memory_limit_mb:
                return f"--memory-limit {self.memory_limit_mb:g} MB exceeded ({resident:.0f} MB resident)"
        return None


class SingleInstance:
    """An exclusive lock on `DIR/task-worker-<id>.pid`, held for the worker's life (the kernel drops it
    when the process ends, however it ends, so a leftover file never blocks the next start)."""

    def __init__(self, pid_dir: Path, single_id: str) -> None:
        if not SINGLE_ID.match(single_id):
            raise InvalidInput(f"--single-id {single_id!r} is not valid (1-100 of A-Z a-z 0-9 _ . -)")
        self.path = pid_dir / f"task-worker-{single_id}.pid"
        self.single_id = single_id
        self._handle: IO[str] | None = None

    def acquire(self) -> int | None:
        """Take the lock; None on success, else the pid of the worker that holds it (0 if unknown)."""
        directory = private_directory(self.path.parent, "pass --pid-dir (or set run_dir) a directory of your own")
        # Opened in the directory as checked (its links resolved); held open, and locked, for the worker's life.
        handle = os.fdopen(open_private_file(directory / self.path.name), "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            return int(text) if text.isdigit() else 0
        handle.seek(0)
        handle.truncate()  # only now: the file is this user's own, in this user's own directory, and locked
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return None
