"""Which worker-tenders run on this machine, found through lock files, never by reading `ps`.

Each running tender holds an exclusive `flock` on its own file `tender-<pid>-<n>.json` in the run
directory; the kernel drops the lock when the process ends, however it ends, so a file whose
lock can be taken is a leftover. Registering and listing happen under a lock on the directory,
so two tenders starting at once cannot both miss each other.
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

from pheanq.errors import PheanqError, TenderRunning
from pheanq.worker.child import process_ended

_serial = itertools.count(1)  # one file per registration, even two in one process


@dataclasses.dataclass(frozen=True)
class TenderRecord:
    pid: int
    tubes: tuple[str, ...]
    beanstalkd: str
    host: str
    started: float          # unix time
    path: Path

    def serves(self, tube: str) -> bool:
        return tube in self.tubes


def default_run_dir() -> Path:
    """Where tender lock files live: /run/pheanq for root, else $XDG_RUNTIME_DIR/pheanq or /tmp/pheanq-<uid>."""
    if os.geteuid() == 0:
        return Path("/run/pheanq")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "pheanq" if runtime else Path(f"/tmp/pheanq-{os.geteuid()}")


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
            if not self.allow_second:
                for other in _live_records(self.run_dir):
                    shared = sorted(set(other.tubes) & set(self.tubes))
                    if shared and other.beanstalkd == self.beanstalkd:
                        raise TenderRunning(
                            f"a worker-tender for tube {shared[0]} on beanstalkd {self.beanstalkd} already runs here "
                            f"(pid {other.pid}); stop it with `pheanq stop-worker-tender --use-tube {shared[0]}`, "
                            "or pass --allow-second-tender to run another")
            handle = open(self.path, "w")  # noqa: SIM115 - held open (and locked) for the tender's life
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            json.dump({"pid": os.getpid(), "tubes": list(self.tubes), "beanstalkd": self.beanstalkd,
                       "host": socket.gethostname(), "started": time.time()}, handle)
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
    if not run_dir.is_dir():
        return []
    with _directory_lock(run_dir):
        return _live_records(run_dir)


def stop_tenders(run_dir: Path, tube: str, timeout: float) -> tuple[list[TenderRecord], list[TenderRecord]]:
    """SIGTERM every tender of `tube` here and wait until they are gone; returns (stopped, still running).

    A tender releases its lock just before it exits, so gone means its lock released *and* its process ended.
    """
    targets = [record for record in running_tenders(run_dir) if record.serves(tube)]
    for record in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting and time.monotonic() < deadline:
        waiting = [record for record in waiting if _is_locked(record.path) or not process_ended(record.pid)]
        if waiting:
            time.sleep(0.1)
    stopped = [record for record in targets if record not in waiting]
    return stopped, waiting


def _live_records(run_dir: Path) -> list[TenderRecord]:
    records = []
    for path in sorted(run_dir.glob("tender-*.json")):
        if not _is_locked(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # its tender ended without cleaning up (kill -9, power loss)
            continue
        try:
            data = json.loads(path.read_text())
            records.append(TenderRecord(int(data["pid"]), tuple(data["tubes"]), str(data["beanstalkd"]),
                                        str(data["host"]), float(data["started"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written right now, or not ours
    return records


def _is_locked(path: Path) -> bool:
    """True while some process holds the lock on `path`."""
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _directory_lock(run_dir: Path) -> Iterator[None]:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a")  # noqa: SIM115 - closed below
    except OSError as error:
        raise PheanqError(f"run directory {run_dir}: {error.strerror}; set run_dir / PHEANQ_RUN_DIR") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()
