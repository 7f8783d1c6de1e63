"""What a dead worker left behind, among the processes the tender adopts as the child subreaper.

A worker runs each command in a process group of its own inside the worker's session (the tender starts every
worker as a session leader), and says ``CHILD <pid>`` only once the command runs: no gate holds the command
back until then (it would cost a second exec per task). So a worker can die after its command started, even
after it ended, before the tender heard its pid. The tender then finds that command by its session: the
leader of a process group in the dead worker's session, adopted by the tender, its exit status still unread.
A Python task's child leaves the worker's session (pheanq.worker.python_child), so it is never taken for one.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil


def command_of_dead_worker(worker_pid: int) -> int | None:
    """The pid of the command a dead worker `worker_pid` ran (ended or not), now this process's child; None when
    there is none. Of several group leaders (a command's descendant may lead a group of its own), the one that
    started first is the command: it started them."""
    found: list[tuple[float, int]] = []
    for pid in adopted_pids():
        if session_of(pid) == worker_pid and _group_of(pid) == pid:
            with contextlib.suppress(psutil.Error):
                found.append((psutil.Process(pid).create_time(), pid))
    return min(found)[1] if found else None


def kill_left_running(pid: int, worker_pid: int) -> None:
    """Kill the group of a dead worker's command that did not end with it (its worker died before the command's
    PDEATHSIG was set: see pheanq.worker.child.die_with_parent), and reap it, before its task is sent again."""
    if session_of(pid) != worker_pid:
        return  # gone (and reaped) already, or the pid is another process's now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def adopted_pids() -> list[int]:
    """This process's children, zombies included."""
    try:
        return [child.pid for child in psutil.Process().children()]
    except psutil.Error:
        return []


def session_of(pid: int) -> int | None:
    """The session of `pid` (readable while it is a zombie); None when it is gone."""
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
