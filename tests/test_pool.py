"""The worker-tender's policy (pheanq/pool.py), as plain unit tests of pure functions.

It proves the rules of the pool: start a worker below --min-workers or below --spare-workers idle
ones, never beyond --max-workers (retiring workers count too), retire a surplus idle worker only
after it has been idle a while and never below --min-workers, treat a starting worker as idle so a
slow start is not answered with more starts; retire a worker past its age, output, memory or task
limit; and give a crash loop a growing, capped delay. A seeded random search checks the two
invariants over many pools, and a simulation drives `next_change` through load and quiet and
counts every start and retirement to show the pool grows to the maximum, shrinks back, and does
not oscillate.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from pheanq.tender.pool import (
    Change,
    PoolLimits,
    WorkerState,
    WorkerView,
    next_change,
    restart_delay,
    retire_reason,
    workers_to_retire,
)

STA, IDL, BSY, RET = WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING
SETTLED = 60.0  # idle for longer than any surplus_idle_seconds used here


def view(state: WorkerState, pid: int = 1, age: float = 100.0, idle_for: float | None = None,
         output_bytes: int = 0, tasks_started: int = 0, memory_mb: float | None = None) -> WorkerView:
    if idle_for is None:
        idle_for = SETTLED if state is WorkerState.IDLE else 0.0
    return WorkerView(pid, state, age, idle_for, output_bytes, tasks_started, memory_mb)


def pool(*states: WorkerState) -> list[WorkerView]:
    """Workers in these states, pids 1, 2, ...; a later worker is younger."""
    return [view(state, pid=n, age=1000.0 - n) for n, state in enumerate(states, start=1)]


def limits(min_workers: int = 2, spare_workers: int = 1, max_workers: int = 5, **rest: object) -> PoolLimits:
    return PoolLimits(min_workers, spare_workers, max_workers, **rest)  # type: ignore[arg-type]


# --- next_change: one table ------------------------------------------------------------------

START = (Change.START, None)
NOTHING = (Change.NONE, None)


def retire(pid: int) -> tuple[Change, int | None]:
    return (Change.RETIRE_SURPLUS, pid)


NEXT_CHANGE_CASES: list[tuple[str, PoolLimits, list[WorkerView], tuple[Change, int | None]]] = [
    ("empty pool below min starts one", limits(), pool(), START),
    ("one idle below min starts one", limits(), pool(IDL), START),
    ("min idle workers with enough spare do nothing", limits(), pool(IDL, IDL), NOTHING),
    ("all busy and no spare starts one", limits(), pool(BSY, BSY), START),
    ("four busy under max starts the fifth", limits(), pool(BSY, BSY, BSY, BSY), START),
    ("all busy at max starts nothing", limits(), pool(BSY, BSY, BSY, BSY, BSY), NOTHING),
    ("a retiring worker counts against max", limits(), pool(BSY, BSY, BSY, BSY, RET), NOTHING),
    ("a retiring worker does not count towards min", limits(), pool(IDL, RET), START),
    ("a starting worker counts as the spare", limits(), pool(BSY, BSY, STA), NOTHING),
    ("starting workers count towards min", limits(), pool(STA, STA), NOTHING),
    ("two starting workers are not answered with a third", limits(spare_workers=2), pool(STA, STA), NOTHING),
    ("min == max at max with all busy starts nothing", limits(2, 1, 2), pool(BSY, BSY), NOTHING),
    ("min == max below min with a retiring worker at max waits", limits(2, 1, 2), pool(BSY, RET), NOTHING),
    ("min == max with room below min starts", limits(2, 0, 2), pool(BSY), START),
    ("min 0 spare 0: an empty pool stays empty", limits(0, 0, 3), pool(), NOTHING),
    ("min 0 spare 0: a settled idle worker is retired", limits(0, 0, 3), pool(IDL), retire(1)),
    ("min 0 spare 0: a busy worker is left alone", limits(0, 0, 3), pool(BSY), NOTHING),
    ("min 0 spare 1: an empty pool starts one", limits(0, 1, 3), pool(), START),
    ("min 0 spare 1: one idle is enough", limits(0, 1, 3), pool(IDL), NOTHING),
    ("min 0 spare 1: two idle, the older is retired", limits(0, 1, 3), pool(IDL, IDL), retire(1)),
    ("spare 0: busy workers at min get no spare", limits(1, 0, 3), pool(BSY), NOTHING),
    ("spare 0: min idle workers beside a busy one are kept", limits(1, 0, 3), pool(BSY, IDL), NOTHING),
    ("spare 0: more idle than min, the older is retired", limits(1, 0, 3), pool(BSY, IDL, IDL), retire(2)),
    ("max 1: the one worker busy, no spare is started", limits(1, 1, 1), pool(BSY), NOTHING),
    ("max 1: the one worker retiring, no replacement yet", limits(1, 1, 1), pool(RET), NOTHING),
    ("max 1: an empty pool starts one", limits(1, 1, 1), pool(), START),
    ("all retiring below max starts a replacement", limits(), pool(RET, RET, RET), START),
    ("all retiring at max waits for one to end", limits(), pool(RET, RET, RET, RET, RET), NOTHING),
    ("exactly min + spare idle is kept", limits(), pool(IDL, IDL, IDL), NOTHING),
    ("one more than min + spare idle: the oldest is retired", limits(), pool(IDL, IDL, IDL, IDL), retire(1)),
    ("busy workers do not make idle ones surplus", limits(), pool(BSY, BSY, IDL, IDL, IDL), NOTHING),
    ("a starting worker is not retired as surplus", limits(), pool(IDL, IDL, IDL, STA), NOTHING),
    ("surplus idle with a starting one: an idle one goes", limits(), pool(STA, IDL, IDL, IDL, IDL), retire(2)),
    ("retiring workers are not surplus", limits(), pool(RET, IDL, IDL, IDL), NOTHING),
]


@pytest.mark.parametrize(("workers", "pool_limits", "expected"),
                         [pytest.param(w, lim, exp, id=name) for name, lim, w, exp in NEXT_CHANGE_CASES])
def test_next_change_follows_the_pool_rules(workers: list[WorkerView], pool_limits: PoolLimits,
                                            expected: tuple[Change, int | None]) -> None:
    assert next_change(workers, pool_limits) == expected


def test_a_surplus_idle_worker_is_only_retired_after_being_idle_a_while() -> None:
    quiet = limits(surplus_idle_seconds=5.0)
    recent = [view(IDL, pid=n, age=50.0, idle_for=4.9) for n in range(1, 5)]
    assert next_change(recent, quiet) == NOTHING
    one_settled = [*recent[:3], view(IDL, pid=4, age=10.0, idle_for=5.0)]
    assert next_change(one_settled, quiet) == retire(4)


def test_the_oldest_of_the_settled_idle_workers_is_retired() -> None:
    workers = [view(IDL, pid=1, age=900.0, idle_for=1.0),    # oldest, but idle only briefly
               view(IDL, pid=2, age=300.0, idle_for=30.0),
               view(IDL, pid=3, age=700.0, idle_for=30.0),   # oldest of the settled ones
               view(IDL, pid=4, age=100.0, idle_for=30.0)]
    assert next_change(workers, limits(surplus_idle_seconds=5.0)) == retire(3)


def test_no_start_while_starts_are_held_back_but_surplus_is_still_retired() -> None:
    assert next_change(pool(), limits(), may_start=False) == NOTHING
    assert next_change(pool(BSY, BSY), limits(), may_start=False) == NOTHING
    assert next_change(pool(IDL, IDL, IDL, IDL), limits(), may_start=False) == retire(1)


# --- retiring past a limit ---------------------------------------------------------------------

CAPPED = limits(max_worker_age=600.0, max_worker_buffer=1000, max_worker_memory=200.0, max_worker_tasks=10)
UNCAPPED = limits(max_worker_age=600.0, max_worker_buffer=1000, max_worker_memory=None, max_worker_tasks=None)

RETIRE_CASES: list[tuple[str, PoolLimits, WorkerView, str | None]] = [
    ("a young quiet worker stays", CAPPED, view(IDL, age=10.0, output_bytes=10, tasks_started=1, memory_mb=50.0), None),
    ("older than max age", CAPPED, view(IDL, age=600.5), "--max-worker-age"),
    ("exactly max age stays", CAPPED, view(IDL, age=600.0), None),
    ("busy and too old: retired, it finishes its task first", CAPPED, view(BSY, age=601.0), "--max-worker-age"),
    ("still starting and too old", CAPPED, view(STA, age=601.0), "--max-worker-age"),
    ("printed more than the buffer", CAPPED, view(IDL, output_bytes=1001), "--max-worker-buffer"),
    ("printed exactly the buffer stays", CAPPED, view(IDL, output_bytes=1000), None),
    ("busy and printed too much", CAPPED, view(BSY, output_bytes=5000), "--max-worker-buffer"),
    ("over the memory limit", CAPPED, view(IDL, memory_mb=200.5), "--max-worker-memory"),
    ("busy and over the memory limit", CAPPED, view(BSY, memory_mb=999.0), "--max-worker-memory"),
    ("memory not measured yet stays", CAPPED, view(IDL, memory_mb=None), None),
    ("no memory limit: any memory stays", UNCAPPED, view(IDL, memory_mb=1e9), None),
    ("ran max tasks and idle", CAPPED, view(IDL, tasks_started=10), "--max-worker-tasks"),
    ("one task short of max stays", CAPPED, view(IDL, tasks_started=9), None),
    ("started its last task: retired now, finishes it first", CAPPED, view(BSY, tasks_started=10),
     "--max-worker-tasks"),
    # A worker under steady load says READY and BUSY within one tick, so the tender may never see it idle.
    ("past max tasks and busy again", CAPPED, view(BSY, tasks_started=11), "--max-worker-tasks"),
    ("no task limit: any number of tasks stays", UNCAPPED, view(IDL, tasks_started=10**6), None),
    ("already retiring: not retired again", CAPPED,
     view(RET, age=10**6, output_bytes=10**9, memory_mb=10**6, tasks_started=10**6), None),
]


@pytest.mark.parametrize(("worker", "pool_limits", "mentions"),
                         [pytest.param(w, lim, m, id=name) for name, lim, w, m in RETIRE_CASES])
def test_retire_reason_names_the_limit_a_worker_passed(worker: WorkerView, pool_limits: PoolLimits,
                                                       mentions: str | None) -> None:
    reason = retire_reason(worker, pool_limits)
    if mentions is None:
        assert reason is None
    else:
        assert reason is not None and mentions in reason, reason


def test_a_retire_reason_gives_the_figures() -> None:
    assert retire_reason(view(IDL, age=700.0), CAPPED) == "older than --max-worker-age (700s > 600s)"
    assert retire_reason(view(IDL, output_bytes=1234), CAPPED) == \
        "printed more than --max-worker-buffer (1234 > 1000 bytes)"
    assert retire_reason(view(IDL, memory_mb=321.4), CAPPED) == "uses more than --max-worker-memory (321 > 200 MB)"


def test_workers_to_retire_lists_exactly_the_workers_past_a_limit() -> None:
    workers = [view(IDL, pid=1), view(BSY, pid=2, age=601.0), view(IDL, pid=3, output_bytes=1001),
               view(RET, pid=4, age=10**6), view(STA, pid=5, age=1.0), view(IDL, pid=6, tasks_started=10)]
    found = workers_to_retire(workers, CAPPED)
    assert [pid for pid, _ in found] == [2, 3, 6]
    assert all(reason for _, reason in found)
    assert workers_to_retire([], CAPPED) == []


# --- crash loops ------------------------------------------------------------------------------

def test_a_crash_loop_gets_a_growing_capped_delay() -> None:
    assert restart_delay(0) == 0.0
    assert restart_delay(-3) == 0.0
    assert [restart_delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    delays = [restart_delay(n) for n in range(0, 50)]
    assert delays == sorted(delays)
    assert max(delays) == 60.0


def test_a_crash_loop_of_a_whole_weekend_still_gets_the_capped_delay() -> None:
    # At the 60 s cap, 1100 quick deaths in a row are about 18 hours of an unreachable database.
    assert restart_delay(1100) == 60.0
    assert restart_delay(10**6) == 60.0


# --- limits that cannot work --------------------------------------------------------------------

PROBLEM_CASES: list[tuple[str, PoolLimits, str | None]] = [
    ("the defaults work", PoolLimits(), None),
    ("min == max works", limits(3, 0, 3), None),
    ("min 0 with a spare works", limits(0, 1, 1), None),
    ("negative min", limits(-1, 1, 5), "--min-workers"),
    ("negative spare", limits(2, -1, 5), "--spare-workers"),
    ("max 0", limits(0, 1, 0), "--max-workers"),
    ("min above max", limits(6, 1, 5), "--min-workers (6) is more than --max-workers (5)"),
    ("min 0 and spare 0 never start a worker", limits(0, 0, 5), "no worker would ever start"),
    ("max age 0 retires every worker as it starts", limits(max_worker_age=0.0), "--max-worker-age"),
    ("buffer 0 retires every worker at its first line", limits(max_worker_buffer=0), "--max-worker-buffer"),
    ("memory limit 0", limits(max_worker_memory=0.0), "--max-worker-memory"),
    ("task limit 0", limits(max_worker_tasks=0), "--max-worker-tasks"),
    ("negative surplus idle time", limits(surplus_idle_seconds=-1.0), "idle"),
]


@pytest.mark.parametrize(("pool_limits", "mentions"),
                         [pytest.param(lim, m, id=name) for name, lim, m in PROBLEM_CASES])
def test_limits_that_cannot_work_are_named(pool_limits: PoolLimits, mentions: str | None) -> None:
    problem = pool_limits.problem()
    if mentions is None:
        assert problem is None
    else:
        assert problem is not None and mentions in problem and "\n" not in problem, problem


# --- invariants over random pools ---------------------------------------------------------------

def test_random_pools_never_start_beyond_max_nor_retire_below_min() -> None:
    rng = random.Random(20240611)
    states = list(WorkerState)
    for _ in range(20_000):
        min_workers = rng.randint(0, 4)
        pool_limits = limits(min_workers, rng.randint(0, 3), rng.randint(max(1, min_workers), 6),
                             surplus_idle_seconds=rng.choice([0.0, 5.0]))
        workers = [view(rng.choice(states), pid=n, age=rng.uniform(0, 100), idle_for=rng.choice([0.0, 2.0, 10.0]))
                   for n in range(rng.randint(0, 8))]
        may_start = rng.random() < 0.8
        change, pid = next_change(workers, pool_limits, may_start)
        active = [w for w in workers if w.state is not RET]
        ready = [w for w in active if w.state in (STA, IDL)]
        context = (pool_limits, workers, may_start, change, pid)
        if change is Change.START:
            assert may_start and len(workers) < pool_limits.max_workers, context
            assert len(active) < pool_limits.min_workers or len(ready) < pool_limits.spare_workers, context
            assert pid is None, context
        elif change is Change.RETIRE_SURPLUS:
            retired = next(w for w in workers if w.pid == pid)
            assert retired.state is IDL and retired.idle_for >= pool_limits.surplus_idle_seconds, context
            assert len(active) - 1 >= pool_limits.min_workers, context
            assert len(active) - 1 >= min(pool_limits.min_workers + pool_limits.spare_workers,
                                          pool_limits.max_workers), context
        else:
            # Doing nothing is only right when there is no room, or no need, to start.
            needs = len(active) < pool_limits.min_workers or len(ready) < pool_limits.spare_workers
            assert not (may_start and needs and len(workers) < pool_limits.max_workers), context


# --- a simulated pool under load ----------------------------------------------------------------

@dataclasses.dataclass
class SimWorker:
    pid: int
    started: float
    state: WorkerState = WorkerState.STARTING
    state_since: float = 0.0


@dataclasses.dataclass
class SimPool:
    """A pool driven only by next_change: workers report READY a few ticks after their start, take a task
    whenever there is one, and a retired worker ends at the next tick (after its task, if it has one)."""

    limits: PoolLimits
    tick_seconds: float = 0.5
    start_ticks: int = 3
    now: float = 0.0
    workers: dict[int, SimWorker] = dataclasses.field(default_factory=dict)
    starts: int = 0
    retires: int = 0
    largest: int = 0
    _pids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(100))

    def tick(self, tasks_wanted: int) -> Change:
        """One tick with `tasks_wanted` tasks available to run at once; returns the change the policy made."""
        self.now += self.tick_seconds
        for worker in list(self.workers.values()):
            if worker.state is RET:
                del self.workers[worker.pid]
            elif worker.state is STA and self.now - worker.started >= self.start_ticks * self.tick_seconds:
                self._become(worker, IDL)
        busy = [w for w in self.workers.values() if w.state is BSY]
        for worker in busy[tasks_wanted:]:          # the tasks beyond what is wanted are done
            self._become(worker, IDL)
        idle = [w for w in self.workers.values() if w.state is IDL]
        for worker in idle[:max(0, tasks_wanted - len(busy))]:
            self._become(worker, BSY)
        views = [WorkerView(w.pid, w.state, self.now - w.started,
                            self.now - w.state_since if w.state is IDL else 0.0, 0, 0, None)
                 for w in self.workers.values()]
        change, pid = next_change(views, self.limits)
        if change is Change.START:
            new = SimWorker(next(self._pids), self.now, state_since=self.now)
            self.workers[new.pid] = new
            self.starts += 1
        elif change is Change.RETIRE_SURPLUS:
            assert pid is not None
            self.workers[pid].state = RET
            self.retires += 1
        self.largest = max(self.largest, len(self.workers))
        assert len(self.workers) <= self.limits.max_workers
        return change

    def run(self, ticks: int, tasks_wanted: int) -> list[Change]:
        return [self.tick(tasks_wanted) for _ in range(ticks)]

    def count(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers.values() if w.state is state)

    def _become(self, worker: SimWorker, state: WorkerState) -> None:
        worker.state = state
        worker.state_since = self.now


FULL_LOAD = 1000

SIM_LIMITS = [
    pytest.param(limits(2, 1, 5), id="min2-spare1-max5"),
    pytest.param(limits(0, 1, 4), id="min0-spare1-max4"),
    pytest.param(limits(1, 0, 3), id="min1-spare0-max3"),
    pytest.param(limits(3, 3, 4), id="min3-spare3-max4"),
    pytest.param(limits(2, 2, 2), id="min2-max2"),
    pytest.param(limits(1, 1, 1), id="max1"),
]


def grown(pool_limits: PoolLimits, size: int, tasks: int) -> int:
    """The pool a steady load of `tasks` makes of one of `size`: enough for every task and the spare ones, up to
    the maximum. With no spare workers wanted, the pool never grows beyond what it has."""
    if pool_limits.spare_workers == 0:
        return size
    return min(pool_limits.max_workers, max(size, tasks + pool_limits.spare_workers))


@pytest.mark.parametrize("pool_limits", SIM_LIMITS)
def test_the_pool_grows_to_max_under_load_and_settles_at_min_plus_spare_when_idle(pool_limits: PoolLimits) -> None:
    sim = SimPool(pool_limits)
    cold = min(max(pool_limits.min_workers, pool_limits.spare_workers), pool_limits.max_workers)
    sim.run(40, tasks_wanted=0)
    # Starting workers count as idle: a start taking three ticks is not answered with more starts.
    assert (sim.starts, sim.retires, len(sim.workers), sim.count(IDL)) == (cold, 0, cold, cold)

    sim.starts = sim.retires = 0
    sim.run(60, tasks_wanted=FULL_LOAD)
    loaded = grown(pool_limits, cold, FULL_LOAD)
    assert (len(sim.workers), sim.count(BSY)) == (loaded, loaded)
    assert (sim.starts, sim.retires, sim.largest) == (loaded - cold, 0, loaded)
    if pool_limits.spare_workers:
        assert loaded == pool_limits.max_workers

    sim.starts = sim.retires = 0
    settled = min(max(pool_limits.min_workers + pool_limits.spare_workers, cold), loaded)
    changes = sim.run(120, tasks_wanted=0)
    assert (len(sim.workers), sim.count(IDL)) == (settled, settled)
    assert (sim.starts, sim.retires) == (0, loaded - settled)
    assert set(changes[-60:]) == {Change.NONE}, "the pool kept changing once idle"


@pytest.mark.parametrize("pool_limits", SIM_LIMITS)
def test_a_steady_partial_load_gets_a_steady_pool(pool_limits: PoolLimits) -> None:
    sim = SimPool(pool_limits)
    sim.run(20, tasks_wanted=0)
    for tasks in (1, 2, 3):
        expected = grown(pool_limits, len(sim.workers), tasks)
        sim.starts = sim.retires = 0
        changes = sim.run(80, tasks_wanted=tasks)
        assert (len(sim.workers), sim.count(BSY)) == (expected, min(tasks, expected)), tasks
        assert sim.retires == 0, "a growing load retired a worker"
        assert set(changes[-40:]) == {Change.NONE}, f"the pool kept changing under a steady load of {tasks}"


def test_bursts_of_load_do_not_make_the_pool_oscillate() -> None:
    pool_limits = limits(2, 1, 6, surplus_idle_seconds=5.0)
    sim = SimPool(pool_limits)
    sim.run(20, tasks_wanted=0)
    # Short bursts separated by pauses shorter than surplus_idle_seconds: the grown pool is kept for the next one.
    sim.starts = sim.retires = 0
    for _ in range(10):
        sim.run(16, tasks_wanted=FULL_LOAD)
        sim.run(6, tasks_wanted=0)   # 3 s idle, less than the 5 s a surplus worker must wait
    assert sim.retires == 0
    assert sim.starts == pool_limits.max_workers - 2
    assert len(sim.workers) == pool_limits.max_workers
