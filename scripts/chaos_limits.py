"""The `limits` scenario of scripts/chaos.py: a cluster-wide concurrency limit while workers are killed -9.

The scenario's command is limited to `concurrency = 2`; two worker-tenders of three workers each run its tasks
while busy workers are killed -9 at random. Besides the counts of every scenario (every task `done`, none lost,
none completed twice), the commands' own record says how many ran at once, which must never be more than 2. Each
run appends ``start <unix time> <pid> <worker pid> <task id>`` when it starts and ``end ...`` when it ends (one
O_APPEND write each). A killed worker's command dies with it (PDEATHSIG; the tender kills what survives before the
task is sent again), so a run without an end ended when its worker was killed, which this scenario notes itself.

Imported by scripts/chaos.py, which registers the scenario; it only drives the Lab it is given.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:  # chaos.py imports this module: at run time the Lab comes as an argument
    from chaos import Lab

CONCURRENCY = 2
TENDERS, WORKERS = 2, 3
# $1: ran.txt (the harness's count), $2: the record, $3: the task's seconds. $PPID is the worker: the command is
# its child (setpriv --pdeathsig execs it).
RECORDING = ('echo "start $(date +%s.%N) $$ $PPID $PHEANQ_TASK_ID" >> "$2"; sleep "$3"; '
             'echo "end $(date +%s.%N) $$ $PPID $PHEANQ_TASK_ID" >> "$2"; echo "$PHEANQ_TASK_ID" >> "$1"')
OVER_A_LIMIT = "is over a limit"  # the dispatcher's log line for a job released because of a limit


def limits_under_kills(lab: Lab) -> None:
    """Tasks of a command limited to 2 at a time, on two tenders whose busy workers are killed -9 at random."""
    tasks = max(20, lab.plan.tasks // 20)   # a limit of 2 runs far fewer tasks in a minute than the other scenarios
    record = lab.directory / "record.txt"
    record.touch()
    _limit_the_command(lab, record)
    lab.upgrade()
    for _ in range(TENDERS):
        lab.start_tender(WORKERS, "--allow-second-tender")
    lab.feed(tasks, lambda rng: rng.uniform(0.1, 0.5), seconds=2.0)
    limit = 60.0 + 2.0 * tasks
    kills = _kill_busy_workers(lab, max(10, tasks // 8), limit)
    lab.finish(limit)
    _check_the_record(lab, record, kills)


def _limit_the_command(lab: Lab, record: Path) -> None:
    """The Lab's pheanq.toml with its command recording each run, and limited to CONCURRENCY at once."""
    argv = ["/bin/sh", "-c", RECORDING, "chaos", str(lab.ran_file), str(record)]
    lines = [f"chaos = {json.dumps(argv)}" if line.startswith("chaos = ") else line
             for line in lab.config.read_text().splitlines()]
    lab.config.write_text("\n".join([*lines, "[limits.commands.chaos]", f"concurrency = {CONCURRENCY}"]) + "\n")


def _kill_busy_workers(lab: Lab, budget: int, limit: float) -> dict[int, float]:
    """Kill -9 a busy worker of either tender now and then, until `budget` kills or every task is done; returns
    when each was killed (unix time, taken just before the kill: its command dies just after), by pid."""
    kills: dict[int, float] = {}
    end = time.monotonic() + limit
    while len(kills) < budget and time.monotonic() < end and not lab.all_finished():
        busy = [worker for tender in lab.tenders for worker in tender.busy_workers()]
        if busy:
            victim = lab.rng.choice(busy)
            with contextlib.suppress(psutil.Error):
                when = time.time()
                victim.kill()
                kills[victim.pid] = when
        # The pace of the kills: at most 2 commands run at once, so most moments have no busy worker to kill.
        time.sleep(lab.rng.uniform(0.3, 1.0) if busy else 0.05)
    return kills


def _check_the_record(lab: Lab, record: Path, kills: dict[int, float]) -> None:
    starts: dict[tuple[str, str], tuple[float, int]] = {}   # (pid, task id) -> (start, worker pid)
    ends: dict[tuple[str, str], float] = {}
    for line in record.read_text().splitlines():
        word, moment, pid, parent, task_id = line.split()
        if word == "start":
            starts[(pid, task_id)] = (float(moment), int(parent))
        else:
            ends[(pid, task_id)] = float(moment)
    edges: list[tuple[float, int]] = []
    cut_short = 0
    for run, (start, worker) in starts.items():
        end = ends[run] if run in ends else kills.get(worker)
        if end is None:
            lab.problem(f"task {run[1]}'s run (pid {run[0]}) never ended, yet its worker {worker} was not killed")
            continue
        cut_short += run not in ends
        edges += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(edges):  # at one moment an end sorts first: runs that touch do not overlap
        running += step
        most = max(most, running)
    over = sum(tender.log_text().count(OVER_A_LIMIT) for tender in lab.tenders)
    if most > CONCURRENCY:
        lab.problem(f"{most} tasks ran at once under concurrency = {CONCURRENCY}")
    if not over or not kills:
        lab.problem("no task was ever over the limit, or no worker was killed: the scenario proved nothing")
    lab.outcome.figures.update(killed=len(kills), most_at_once=most, cut_short=cut_short, over_limit=over)
    lab.note(f"{len(kills)} busy worker(s) killed -9; at most {most} of {len(starts)} runs at once (limit "
             f"{CONCURRENCY}), {cut_short} of them ended by a kill; {over} claims over the limit")
