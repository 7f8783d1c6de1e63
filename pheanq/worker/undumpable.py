"""A worker or tender hides its memory and environment from the other processes of its user.

A task's command runs as its worker's user. Linux lets any process of that user read another's
/proc/PID/environ (and its memory through ptrace), so without this a task could read PHEANQ_SECRET and the
database URL from its worker's environment (`/proc/$PPID/environ`), though its own is clean
(pheanq.worker.task_env). A process made non-dumpable (PR_SET_DUMPABLE 0) has its /proc files owned by
root and can be read or traced only with CAP_SYS_PTRACE: a task run by root has it, so this protects
nothing from a task of a worker run as root. What stays readable to everyone: /proc/PID/cmdline,
/proc/PID/stat, /proc/PID/statm, /proc/PID/status (all the tender reads of its workers).

The kernel makes a process dumpable again when it execs, so each process does this itself, at its start.
A no-op where there is no prctl (not Linux).
"""

from __future__ import annotations

import ctypes
import logging

from pheanq.worker.child import linux_prctl

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Make this process non-dumpable; False where that is not possible (then a warning is logged)."""
    prctl = linux_prctl()
    if prctl is None:
        return False
    if prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot make this process non-dumpable (errno %d): a task could read its environment",
                    ctypes.get_errno())
        return False
    return True
