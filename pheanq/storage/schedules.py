"""The statements of recurring schedules (pheanq.schedules): each schedule's cursor, and one row per decided slot.

A slot queues its task exactly once however many schedulers race for it, on however many hosts: the slot's row in
`pheanq_schedule_run` (primary key: schedule and slot) is inserted in the transaction that inserts the task, so
either both are committed or neither, and a second insert of the slot fails on the key and rolls its own task
back. No lock that could expire while a scheduler is held up (a pause, a slow disk) stands in for that.

`pheanq_schedule.decided_until` is a cursor: every slot at or before it has been decided (queued, skipped, or
dropped by the catch-up policy). It only moves forwards, and only after the slots before it are committed: a
scheduler killed half-way leaves the cursor where it was, and the next one finds the same slots, the rows of
those already queued answering for them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pheanq.clock import utc_now
from pheanq.status import FINAL, Status
from pheanq.storage.engine import Database
from pheanq.storage.tables import schedule_run_table, schedule_table, task_table
from pheanq.storage.tasks import NewTask, TaskStatements

QUEUED = "queued"
SKIPPED = "skipped"
TAKEN = "taken"         # not a row's outcome: another scheduler had decided the slot
_s, _r, _t = schedule_table.c, schedule_run_table.c, task_table.c
_FINAL = [status.value for status in FINAL]


@dataclasses.dataclass(frozen=True)
class SlotDecision:
    """What came of queueing a slot: `queued` (its task), `skipped` (why), or `taken` by another scheduler."""

    outcome: str
    task_id: int | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class ScheduleRun:
    """A decided slot, with its task's status when it queued one that still exists."""

    schedule: str
    slot: dt.datetime
    outcome: str
    task_id: int | None
    reason: str | None
    created: dt.datetime
    task_status: Status | None = None


class ScheduleStatements:
    """Cursors and slot rows of the schedules. Times are naive UTC, as every column (pheanq.clock)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._tasks = TaskStatements(database)

    def cursor(self, name: str, first: dt.datetime) -> dt.datetime:
        """The schedule's `decided_until`; a schedule seen for the first time gets `first`."""
        with self.database.transaction() as conn:
            found = conn.execute(sa.select(_s.decided_until).where(_s.name == name)).scalar()
        if found is not None:
            return found  # type: ignore[no-any-return]
        try:
            with self.database.transaction() as conn:
                conn.execute(schedule_table.insert().values(name=name, decided_until=first, modified=utc_now()))
            return first
        except IntegrityError:  # another scheduler saw it first at the same moment: its cursor stands
            with self.database.transaction() as conn:
                return conn.execute(sa.select(_s.decided_until).where(_s.name == name)).scalar_one()  # type: ignore[no-any-return]

    def queue_slot(self, name: str, slot: dt.datetime, task: NewTask, no_overlap: bool = False,
                   decided_at: dt.datetime | None = None) -> SlotDecision:
        """Decide a slot in one transaction: its row and its task, or its row `skipped` while the task of the
        schedule's previous queued slot has not ended (with `no_overlap`). `taken` when another scheduler decided
        the slot first (its row's key), and then nothing of this one is kept. The row's `created` is
        `decided_at`, the time its scheduler decided it by (whether it was on time or caught up)."""
        try:
            with self.database.transaction() as conn:
                # The slot's row first: a second scheduler waits here (or fails at once) before inserting a task.
                conn.execute(schedule_run_table.insert().values(schedule=name, slot=slot, outcome=QUEUED,
                                                                created=decided_at or utc_now()))
                if no_overlap:
                    running = self._previous_unended(conn, name, slot)
                    if running is not None:
                        reason = f"task {running[0]} of the slot before is still {running[1]}"
                        conn.execute(schedule_run_table.update().where(_r.schedule == name, _r.slot == slot)
                                     .values(outcome=SKIPPED, reason=reason))
                        return SlotDecision(SKIPPED, None, reason)
                inserted = self._tasks.insert_task(dataclasses.replace(task, scheduled_for=slot), conn)
                conn.execute(schedule_run_table.update().where(_r.schedule == name, _r.slot == slot)
                             .values(task_id=inserted.task_id))
                return SlotDecision(QUEUED, inserted.task_id)
        except IntegrityError:
            return SlotDecision(TAKEN)

    def advance(self, name: str, to: dt.datetime) -> None:
        """Move the cursor forwards to `to`; never backwards (a scheduler with an older `now` changes nothing)."""
        with self.database.transaction() as conn:
            conn.execute(schedule_table.update().where(_s.name == name, _s.decided_until < to)
                         .values(decided_until=to, modified=utc_now()))

    def cursors(self) -> dict[str, dt.datetime]:
        """Every schedule's cursor, by name (those no longer declared too)."""
        with self.database.transaction() as conn:
            return {row.name: row.decided_until for row in conn.execute(sa.select(_s.name, _s.decided_until))}

    def runs(self, name: str, limit: int = 1000, since: dt.datetime | None = None) -> list[ScheduleRun]:
        """The schedule's newest decided slots (at most `limit`, after `since` when given), newest first."""
        query = (sa.select(*_RUN_COLUMNS).select_from(schedule_run_table.outerjoin(task_table, _t.id == _r.task_id))
                 .where(_r.schedule == name).order_by(_r.slot.desc()).limit(limit))
        if since is not None:
            query = query.where(_r.slot > since)
        with self.database.transaction() as conn:
            return [_run(row) for row in conn.execute(query)]

    def last_runs(self) -> dict[str, ScheduleRun]:
        """Each schedule's newest decided slot, by name."""
        newest = (sa.select(_r.schedule, sa.func.max(_r.slot).label("slot")).group_by(_r.schedule)).subquery()
        query = (sa.select(*_RUN_COLUMNS)
                 .select_from(schedule_run_table.join(newest, sa.and_(newest.c.schedule == _r.schedule,
                                                                      newest.c.slot == _r.slot))
                              .outerjoin(task_table, _t.id == _r.task_id)))
        with self.database.transaction() as conn:
            return {row.schedule: _run(row) for row in conn.execute(query)}

    @staticmethod
    def _previous_unended(conn: Any, name: str, slot: dt.datetime) -> tuple[int, str] | None:
        """The task of the schedule's newest queued slot before `slot`, with its status, if it has not ended."""
        row = conn.execute(sa.select(_t.id, _t.status).select_from(schedule_run_table.join(task_table,
                                                                                           _t.id == _r.task_id))
                           .where(_r.schedule == name, _r.slot < slot, _r.outcome == QUEUED)
                           .order_by(_r.slot.desc()).limit(1)).first()
        if row is None or row.status in _FINAL:
            return None
        return int(row.id), str(row.status)


_RUN_COLUMNS = (_r.schedule, _r.slot, _r.outcome, _r.task_id, _r.reason, _r.created, _t.status.label("task_status"))


def _run(row: Any) -> ScheduleRun:
    return ScheduleRun(row.schedule, row.slot, row.outcome, row.task_id, row.reason, row.created,
                       None if row.task_status is None else Status(row.task_status))
