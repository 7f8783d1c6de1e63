"""The worker-tender's policy, as pure functions: which worker to start or retire, given the pool.

Nothing here touches a process; `tender.py` observes the workers, asks `next_change()` and
`workers_to_retire()` what to do, and does it.
"""

from __future__ import annotations

import dataclasses
import enum


class WorkerState(str, enum.Enum):
    STARTING = "starting"   # started, no state line yet
    IDLE = "idle"           # said READY
    BUSY = "busy"           # said BUSY <task id>
    RETIRING = "retiring"   # asked to stop (SIGTERM): finishes its task, takes no other

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class PoolLimits:
    min_workers: int = 2
    spare_workers: int = 1
    max_workers: int = 5
    max_worker_age: float = 600.0                 # seconds
    max_worker_buffer: int = 6_000_000            # bytes of output
    max_worker_memory: float | None = None        # MB of resident memory, worker and its children
    max_worker_tasks: int | None = None
    # An idle worker is only retired for being surplus after it has been idle this long (no thrashing).
    surplus_idle_seconds: float = 5.0

    def problem(self) -> str | None:
        """Why these limits cannot work, or None."""
        if self.min_workers < 0 or self.spare_workers < 0:
            return "--min-workers and --spare-workers must be 0 or more"
        if self.max_workers < 1:
            return "--max-workers must be at least 1"
        if self.min_workers > self.max_workers:
            return f"--min-workers ({self.min_workers}) is more than --max-workers ({self.max_workers})"
        if self.min_workers == 0 and self.spare_workers == 0:
            return "--min-workers and --spare-workers are both 0: no worker would ever start"
        # Limits every worker passes at once would retire each one as it starts, forever.
        if self.max_worker_age <= 0:
            return "--max-worker-age must be more than 0"
        if self.max_worker_buffer <= 0:
            return "--max-worker-buffer must be more than 0"
        if self.max_worker_memory is not None and self.max_worker_memory <= 0:
            return "--max-worker-memory must be more than 0"
        if self.max_worker_tasks is not None and self.max_worker_tasks < 1:
            return "--max-worker-tasks must be at least 1"
        if self.surplus_idle_seconds < 0:
            return "the idle time before a surplus worker is retired must be 0 or more"
        return None


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """What the tender knows of one worker at one moment."""

    pid: int
    state: WorkerState
    age: float                  # seconds since it was started
    idle_for: float             # seconds since it last said READY (0 unless idle)
    output_bytes: int           # everything it printed
    tasks_started: int          # BUSY lines seen
    memory_mb: float | None     # resident memory of the worker and its children, when measured


class Change(enum.Enum):
    START = "start"
    RETIRE_SURPLUS = "retire"
    NONE = "none"


def retire_reason(worker: WorkerView, limits: PoolLimits) -> str | None:
    """Why this worker should be retired now, or None. A busy worker retired finishes its task first."""
    if worker.state is WorkerState.RETIRING:
        return None
    if worker.age > limits.max_worker_age:
        return f"older than --max-worker-age ({worker.age:.0f}s > {limits.max_worker_age:.0f}s)"
    if worker.output_bytes > limits.max_worker_buffer:
        return f"printed more than --max-worker-buffer ({worker.output_bytes} > {limits.max_worker_buffer} bytes)"
    if limits.max_worker_memory is not None and worker.memory_mb is not None \
            and worker.memory_mb > limits.max_worker_memory:
        return f"uses more than --max-worker-memory ({worker.memory_mb:.0f} > {limits.max_worker_memory:.0f} MB)"
    # Busy on its last task or past it (under steady load READY and BUSY may come within one tick, so the
    # tender need never see it idle): SIGTERM lets it finish the task in hand, then it exits.
    if limits.max_worker_tasks is not None and worker.tasks_started >= limits.max_worker_tasks:
        return f"ran --max-worker-tasks ({worker.tasks_started}) tasks"
    return None


def workers_to_retire(workers: list[WorkerView], limits: PoolLimits) -> list[tuple[int, str]]:
    """(pid, reason) of every worker past one of its limits."""
    return [(w.pid, reason) for w in workers if (reason := retire_reason(w, limits)) is not None]


def next_change(workers: list[WorkerView], limits: PoolLimits, may_start: bool = True) -> tuple[Change, int | None]:
    """At most one change a tick: start a worker, retire a surplus idle one (its pid), or nothing.

    Every live process counts against --max-workers, retiring ones too: the pool never exceeds it.
    A worker still starting counts as idle, so a slow start is not answered with more starts.
    """
    active = [w for w in workers if w.state is not WorkerState.RETIRING]
    ready = [w for w in active if w.state in (WorkerState.IDLE, WorkerState.STARTING)]
    room = len(workers) < limits.max_workers
    if may_start and room and len(active) < limits.min_workers:
        return Change.START, None
    if may_start and room and len(ready) < limits.spare_workers:
        return Change.START, None
    idle = [w for w in active if w.state is WorkerState.IDLE]
    if len(idle) > limits.min_workers + limits.spare_workers and len(active) > limits.min_workers:
        settled = [w for w in idle if w.idle_for >= limits.surplus_idle_seconds]
        if settled:
            oldest = max(settled, key=lambda w: w.age)
            return Change.RETIRE_SURPLUS, oldest.pid
    return Change.NONE, None


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before starting a worker after `quick_deaths` deaths in a row right after start."""
    if quick_deaths <= 0:
        return 0.0
    return min(60.0, 0.5 * 2.0 ** min(quick_deaths - 1, 16))  # exponent capped: 2 ** 1024 overflows a float
