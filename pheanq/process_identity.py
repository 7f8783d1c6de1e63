"""Who a process is, beyond its pid (which the kernel reuses): what a signal's sender checks first."""

from __future__ import annotations

import dataclasses

import psutil


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """Who a process is, beyond its pid (which the kernel reuses): its owner, start time and command line."""

    pid: int
    uid: int
    started: float              # as psutil reports it: seconds since the epoch, from /proc/<pid>/stat
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process `pid`, or None if it is gone or cannot be read."""
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                return cls(pid, process.uids().effective, process.create_time(), tuple(process.cmdline()))
        except (psutil.Error, OSError):
            return None

    def is_alive(self) -> bool:
        """True while the very process this identity was taken from runs (not another with its pid)."""
        now = ProcessIdentity.of(self.pid)
        return now is not None and now.uid == self.uid and now.cmdline == self.cmdline and now.started_as(self)

    def started_as(self, other: ProcessIdentity) -> bool:
        """The same start (so the same process, for one pid): the times psutil gives agree to a few ms."""
        return abs(self.started - other.started) < 0.005
