"""Which worker-tenders run on this machine, found through lock files, never by reading `ps`.

Each running tender holds an exclusive `flock` on its own file `tender-<pid>-<n>.json` in the run
directory; the kernel drops the lock when the process ends, however it ends, so a file whose
lock can be taken is a leftover. Registering and listing happen under a lock on the directory,
so two tenders starting at once cannot both miss each other.

The run directory is private (pheanq.rundir): a record there names its tender's pid, start time and
command line, and `stop_tenders` signals only a live process of this user that matches all three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pheanq.errors import PheanqError, TenderRunning, UnsafePath
from pheanq.process_identity import ProcessIdentity
from pheanq.rundir import open_private_file, private_directory
from pheanq.worker.child import process_ended

RUN_DIR_FIX = "set run_dir / PHEANQ_RUN_DIR to a directory of your own"
_serial = itertools.count(1)  # one file per registration, even two in one process


@dataclasses.dataclass(frozen=True)
class TenderRecord:
    pid: int
    tubes: tuple[str, ...]
    beanstalkd: str
    host: str
    started: float          # unix time
    path: Path
    identity: ProcessIdentity | None    # None: the record does not say who wrote it (never signalled)

    def serves(self, tube: str) -> bool:
        return tube in self.tubes

    def is_verified(self) -> bool:
        """True if the process the record names is a live tender of this user that wrote this record."""
        return self.identity is not None and self.identity.pid == self.pid and self.identity.uid == os.geteuid() \
            and "worker-tender" in self.identity.cmdline and self.identity.is_alive()


@dataclasses.dataclass(frozen=True)
class StopOutcome:
    stopped: list[TenderRecord]
    running: list[TenderRecord]         # signalled, but still there after the timeout
    unverified: list[TenderRecord]      # not signalled: the process is not the tender the record names


class Registration:
    """A running tender's claim on its tubes; `release()` (or the process ending) gives it up."""

    def __init__(self, run_dir: Path, tubes: list[str], beanstalkd: str, allow_second: bool = False) -> None:
        self.run_dir = run_dir
        self.tubes = tuple(tubes)
        self.beanstalkd = beanstalkd
        self.allow_second = allow_second
        self.path = run_dir / f"tender-{os.getpid()}-{next(_serial)}.json"
        self._handle: IO[str] | None = None

    def register(self) -> None:
        with _directory_lock(self.run_dir):
            others = _live_records(self.run_dir)  # also removes leftovers, one of which may have our name
            if not self.allow_second:
                for other in others:
                    shared = sorted(set(other.tubes) & set(self.tubes))
                    if shared and other.beanstalkd == self.beanstalkd:
                        raise TenderRunning(
                            f"a worker-tender for tube {shared[0]} on beanstalkd {self.beanstalkd} already runs here "
                            f"(pid {other.pid}); stop it with `pheanq stop-worker-tender --use-tube {shared[0]}`, "
                            "or pass --allow-second-tender to run another")
            handle = os.fdopen(open_private_file(self.path, exclusive=True), "w")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            me = ProcessIdentity.of(os.getpid())
            if me is None:
                raise PheanqError("cannot read this process's own start time and command line: is /proc mounted?")
            json.dump({"pid": os.getpid(), "tubes": list(self.tubes), "beanstalkd": self.beanstalkd,
                       "host": socket.gethostname(), "started": time.time(), "uid": me.uid,
                       "process_started": me.started, "cmdline": list(me.cmdline)}, handle)
            handle.flush()
            self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._handle.close()
            self._handle = None


def running_tenders(run_dir: Path) -> list[TenderRecord]:
    """The tenders alive on this machine; leftover files of dead ones are removed on the way."""
    if not os.path.lexists(run_dir):
        return []
    with _directory_lock(run_dir):
        return _live_records(run_dir)


def stop_tenders(run_dir: Path, tube: str, timeout: float) -> StopOutcome:
    """SIGTERM every verified tender of `tube` here and wait until they are gone.

    A tender releases its lock just before it exits, so gone means its lock released *and* its process ended.
    A record whose pid is not the tender that wrote it (another process, another user's, a reused pid) is
    reported, never signalled.
    """
    records = [record for record in running_tenders(run_dir) if record.serves(tube)]
    targets = [record for record in records if record.is_verified()]
    unverified = [record for record in records if record not in targets]
    for record in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting and time.monotonic() < deadline:
        waiting = [record for record in waiting if _is_locked(record.path) or not _gone(record)]
        if waiting:
            time.sleep(0.1)
    stopped = [record for record in targets if record not in waiting]
    return StopOutcome(stopped, waiting, unverified)


def _gone(record: TenderRecord) -> bool:
    """The tender's process ended (or its pid now names a later process). Not `is_alive()`: a process that is
    exiting has no command line any more, yet it still runs."""
    if process_ended(record.pid) or record.identity is None:
        return True
    now = ProcessIdentity.of(record.pid)
    return now is None or not now.started_as(record.identity)


def _live_records(run_dir: Path) -> list[TenderRecord]:
    records = []
    for path in sorted(run_dir.glob("tender-*.json")):
        try:
            locked = _is_locked(path)
        except UnsafePath:
            continue  # not a file a tender made: never read, never removed
        if not locked:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # its tender ended without cleaning up (kill -9, power loss)
            continue
        try:
            with os.fdopen(open_private_file(path, create=False)) as handle:
                data = json.load(handle)
            records.append(TenderRecord(int(data["pid"]), tuple(data["tubes"]), str(data["beanstalkd"]),
                                        str(data["host"]), float(data["started"]), path, _identity(data)))
        except (OSError, ValueError, KeyError, TypeError, UnsafePath):
            continue  # being written right now, or not ours
    return records


def _identity(data: dict[str, object]) -> ProcessIdentity | None:
    """Who wrote the record, as it says; None for a record (of an older pheanq) that does not say."""
    pid, uid, started, cmdline = (data.get(key) for key in ("pid", "uid", "process_started", "cmdline"))
    if not (isinstance(pid, int) and isinstance(uid, int) and isinstance(started, float)
            and isinstance(cmdline, list) and all(isinstance(part, str) for part in cmdline)):
        return None
    return ProcessIdentity(pid, uid, started, tuple(cmdline))


def _is_locked(path: Path) -> bool:
    """True while some process holds the lock on `path`."""
    try:
        descriptor = open_private_file(path, create=False)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also drops the lock just taken
    return False


@contextlib.contextmanager
def _directory_lock(run_dir: Path) -> Iterator[None]:
    descriptor = open_private_file(private_directory(run_dir, RUN_DIR_FIX) / ".lock")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
