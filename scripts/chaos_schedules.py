"""The `schedules` scenario of scripts/chaos.py: three worker-tenders run one per-second schedule while they are
killed -9 and started again at random across slot boundaries; then every slot from the first to the last must
have queued exactly one task (no slot twice, none missing), and every one of those tasks must have run once.

The schedule catches every missed slot up (catch_up = "all") with a grace of an hour, so a slot passed while no
tender ran is queued later, never dropped: a gap would be a lost slot. Its tasks are the scenario's queued tasks,
counted by the usual line (done, lost, ran twice, from ran.txt and from the table); the slot figures are notes,
and a duplicate or a gap is a problem of the scenario.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from chaos import Lab, Tender

SCHEDULE = "chaos-every-second"
TENDERS = 3
WORKERS_EACH = 2
SECOND = dt.timedelta(seconds=1)


def schedules(lab: Lab) -> None:
    """Kill -9 and restart tenders across slot boundaries for a while (--tasks / 33 seconds, 8 to 60), then count
    the slots and let the queued tasks finish."""
    lab.upgrade()
    section = {"cron": "* * * * * *", "command": "chaos", "args": ["0.05"], "tube": lab.tube, "catch_up": "all",
               "grace": 3600, "max_catch_up": 10_000, "ttr": 5}
    with lab.config.open("a") as config:
        config.write(f"[schedules.{SCHEDULE}]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                                            for key, value in section.items()))
    seconds = min(60.0, max(8.0, lab.plan.tasks / 33))
    # A first look catches nothing up (pheanq.schedules.first_cursor): the first slot is the one the first tender
    # finds within its grace.
    running: list[Tender] = [_start(lab) for _ in range(TENDERS)]
    kills = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        # Next: a slot boundary, give or take 50 ms (before it, at its instant, in the middle of its decision).
        boundary = int(time.time()) + lab.rng.randint(1, 3)
        time.sleep(max(0.0, boundary + lab.rng.uniform(-0.05, 0.05) - time.time()))  # the instant of the kill
        victim = lab.rng.choice(running)
        victim.kill()
        running.remove(victim)
        kills += 1
        if not running or lab.rng.random() < 0.7:
            time.sleep(lab.rng.uniform(0.0, 2.5))   # the time the host is down (slots pass meanwhile)
            running.append(_start(lab))
        elif len(running) < TENDERS:
            running.append(_start(lab))
    lab.outcome.figures["tenders killed"] = kills
    for tender in running:  # SIGTERM: each scheduler ends the decision it is in
        tender.terminate(90)
    # One tender without a scheduler runs what is still queued.
    _start(lab, "--no-scheduler")
    slots = _slots(lab)
    lab.queued = [task_id for _, task_id in slots if task_id is not None]
    lab.finish(120)
    _check_slots(lab, slots, kills)


def _start(lab: Lab, *extra: str) -> Tender:
    # Every tender has the same run directory here: --allow-second-tender, as three hosts would not need.
    return lab.start_tender(WORKERS_EACH, "--allow-second-tender", *extra)


def _slots(lab: Lab) -> list[tuple[dt.datetime, int | None]]:
    """The decided slots of the schedule, oldest first, with their tasks."""
    query = sa.text("SELECT slot, task_id FROM pheanq_schedule_run WHERE schedule = :name AND outcome = 'queued' "
                    "ORDER BY slot")
    with lab.engine().connect() as conn:
        return [(_moment(row[0]), None if row[1] is None else int(row[1]))
                for row in conn.execute(query, {"name": SCHEDULE})]


def _moment(value: object) -> dt.datetime:
    """A slot as a datetime (SQLite's driver hands a text back through a text query)."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _check_slots(lab: Lab, slots: list[tuple[dt.datetime, int | None]], kills: int) -> None:
    if not slots:
        lab.problem("no slot was queued")
        return
    first, last = slots[0][0], slots[-1][0]
    expected = int((last - first) / SECOND) + 1
    seen = collections.Counter(slot for slot, _ in slots)
    gaps = expected - len(seen)
    with lab.engine().connect() as conn:
        per_slot = collections.Counter(_moment(value) for value in conn.execute(
            sa.text("SELECT scheduled_for FROM pheanq_task WHERE tube = :tube"), {"tube": lab.tube}).scalars())
    twice = sum(1 for n in per_slot.values() if n > 1)
    without_task = sum(1 for _, task_id in slots if task_id is None)
    lab.outcome.figures.update({"slots": expected, "slot gaps": gaps, "slots queued twice": twice})
    lab.note(f"{kills} tender(s) killed -9 across slot boundaries; {len(seen)} of {expected} slots from "
             f"{first:%H:%M:%S} to {last:%H:%M:%S} queued, {twice} twice, {gaps} missing")
    if gaps:
        lab.problem(f"{gaps} slot(s) between the first and the last were never queued")
    if twice:
        lab.problem(f"{twice} slot(s) queued more than one task")
    if without_task:
        lab.problem(f"{without_task} queued slot row(s) without a task")
