"""A worker's claim of a task, compare-and-set, and the lease it then renews.

A claim names its row by id and nonce, and moves it to `working` only for a job reserved from the row's own
tube, for a command the worker may run, when the task is due and nobody holds it (or its holder's lease is
stale). Every other answer says why not, so the dispatcher can bury, delay or delete the job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq import tasklog
from pheanq.clock import utc_now
from pheanq.lease import stale_after
from pheanq.run_at import EARLY_TOLERANCE, is_early
from pheanq.status import CLAIMABLE, Status
from pheanq.storage.engine import Database, any_of, same
from pheanq.storage.limit_places import LimitPlaces, take_places
from pheanq.storage.tables import TaskRow, select_task, task_row, task_table
from pheanq.task_limits import LimitTable, Place

_c = task_table.c


@functools.lru_cache(maxsize=16)
def _claim_statement(tubes: int, commands: int, returning: bool) -> Any:
    """The compare-and-set claim for a worker of `tubes` tubes and `commands` commands (parameters `tube_<n>` and
    `command_<n>`), answering with the claimed row where the database can (PostgreSQL, SQLite 3.35+: one
    statement instead of the claim and a read). A list of a worker's tubes as one expanding parameter would be
    rendered into the SQL anew at every claim."""
    statement = (
        task_table.update()
        .where(_c.id == sa.bindparam("task"), any_of(_c.status, [s.value for s in CLAIMABLE]),
               sa.func.coalesce(_c.nonce, "") == sa.bindparam("job_nonce"),
               _c.tube.in_([sa.bindparam(f"tube_{n}", type_=_c.tube.type) for n in range(tubes)]),
               _c.command.in_([sa.bindparam(f"command_{n}", type_=_c.command.type) for n in range(commands)]),
               sa.or_(_c.run_at.is_(None), _c.run_at <= sa.bindparam("due_before")))
        .values(status=Status.WORKING.value, job_id=sa.bindparam("job"), worker=sa.bindparam("holder"),
                attempts=_c.attempts + 1, started=sa.bindparam("claimed_at"), finished=None, exit_code=None,
                modified=sa.bindparam("claimed_at"), heartbeat=sa.bindparam("claimed_at"))
    )
    return statement.returning(*task_table.c) if returning else statement


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    OWN_CLAIM = "own claim"        # claimed by this worker under this job already (the claim's answer was lost)
    CANCEL_REQUESTED = "cancel"    # held under a stale lease with a cancel requested: it ends, it does not run
    MISSING = "missing"            # no row with that id
    FINISHED = "finished"          # done, failed: the job is a leftover
    HELD_ELSEWHERE = "held"        # working under another job: this job is a duplicate
    HELD_ALIVE = "alive"           # working under this job, and its holder still renews its lease
    EARLY = "early"                # not to run before its run_at: the job must wait
    OTHER_TUBE = "other tube"      # the row's tube is not one the worker takes from: the job was moved or forged
    OTHER_ROW = "other row"        # the row's nonce is not the job's: the job is an earlier task's, or forged
    UNREGISTERED = "unregistered"  # the row's command is not one the worker may run
    LIMITED = "limited"            # a limit it falls under has no free place: nothing was written, the job must wait


class _OverLimit(Exception):
    """Rolls a claim back: a limit of its task had no free place."""

    def __init__(self, row: TaskRow, wait: float) -> None:
        self.row, self.wait = row, wait


class _PlacesMissing(Exception):
    """Rolls a claim back: the rows of a limit of its task must be made first (in transactions of their own)."""

    def __init__(self, places: list[Place]) -> None:
        self.places = places


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    row: TaskRow | None          # LIMITED: the row as the claim would have left it (nothing was written)
    wait: float = 0.0            # LIMITED: seconds until a place may free, where known (a rate limit's)


class ClaimStatements:
    """The statements of a worker's claim and of the lease it holds."""

    def __init__(self, database: Database, places: LimitPlaces) -> None:
        self.database = database
        self.places = places

    def claim_task(self, task_id: int, nonce: str | None, job_id: int, worker: str, tubes: Sequence[str],
                   commands: Sequence[str], limits: LimitTable | None = None) -> Claim:
        """Move the task to `working` for this job, or say why not (see _claim_task). With `limits`, the claim
        also takes a place of every limit the task falls under, in the same transaction, or writes nothing
        (LIMITED)."""
        for _ in range(2):
            try:
                return self._claim_task(task_id, nonce, job_id, worker, tubes, commands, limits)
            except _PlacesMissing as missing:
                self.places.make_places(missing.places)
            except _OverLimit as over:
                return Claim(ClaimOutcome.LIMITED, over.row, over.wait)
        raise AssertionError("a limit's places were made, yet missing")  # pragma: no cover

    def _claim_task(self, task_id: int, nonce: str | None, job_id: int, worker: str, tubes: Sequence[str],
                    commands: Sequence[str], limits: LimitTable | None) -> Claim:
        """Move the task to `working` for this job, or say why not. Compare-and-set UPDATEs only.

        Only the row the job names is claimed: its id *and* its nonce (a job without one names only a row
        without one). Only a task of one of `tubes` (those the worker reserved the job from) whose command is
        one of `commands` (those the worker may run) is claimed: otherwise the row is left untouched
        (OTHER_ROW, OTHER_TUBE, UNREGISTERED), whatever the job says.

        A `working` row under this very job and this worker is this worker's own claim whose answer it lost:
        it is taken up as it is (OWN_CLAIM), the same attempt. A `working` row under this very job was
        otherwise held by a worker that lost its reservation. It is taken over only once that holder's lease
        is stale (it died, or it was cut off and has stopped
        its child); while the lease is renewed, the answer is HELD_ALIVE and the job must wait.
        """
        c = task_table.c
        now = utc_now()
        claimed = dict(status=Status.WORKING.value, job_id=job_id, worker=worker, attempts=c.attempts + 1,
                       started=now, finished=None, exit_code=None, modified=now, heartbeat=now)
        values = {"task": task_id, "job_nonce": nonce or "", "due_before": now + EARLY_TOLERANCE, "job": job_id,
                  "holder": worker, "claimed_at": now, **{f"tube_{n}": tube for n, tube in enumerate(tubes)},
                  **{f"command_{n}": command for n, command in enumerate(commands)}}
        with self.database.transaction() as conn:
            returning = conn.dialect.update_returning
            statement = _claim_statement(len(tubes), len(commands), returning)
            if returning:
                found = conn.execute(statement, values).mappings().first()
                changed = 0 if found is None else 1
                row = task_row(found) if found is not None else select_task(conn, task_id)
            else:
                changed = conn.execute(statement, values).rowcount
                row = select_task(conn, task_id)
            if row is not None and changed == 0:
                refused = _refusal(row, nonce, job_id, tubes, commands)
                if refused is not None:
                    return Claim(refused, row)
                if row.status in CLAIMABLE and is_early(row.run_at, now):
                    return Claim(ClaimOutcome.EARLY, row)
                if row.status is Status.WORKING and row.job_id == job_id and row.worker == worker:
                    # This worker's own claim, committed although its answer was lost (the connection died after
                    # the COMMIT): a worker holds one task at a time and holds none while it claims, so nothing
                    # runs it. The same attempt is taken up, so `attempts` and the log agree.
                    renewed = conn.execute(
                        task_table.update().where(c.id == task_id, c.status == Status.WORKING.value,
                                                  c.attempts == row.attempts, c.worker == worker, c.job_id == job_id)
                        .values(started=now, modified=now, heartbeat=now)
                    ).rowcount
                    row = select_task(conn, task_id)
                    if renewed == 1 and row is not None:
                        return Claim(ClaimOutcome.OWN_CLAIM, row)
                elif row.status is Status.WORKING and row.job_id == job_id:
                    if not is_stale(row, now):
                        return Claim(ClaimOutcome.HELD_ALIVE, row)
                    if row.cancel_requested_by is not None:
                        return Claim(ClaimOutcome.CANCEL_REQUESTED, row)
                    # The same row, unchanged since it was read stale: nobody renewed the lease in between.
                    changed = conn.execute(
                        task_table.update().where(c.id == task_id, c.status == Status.WORKING.value,
                                                  c.attempts == row.attempts, same(c.heartbeat, row.heartbeat))
                        .values(**claimed, log=sa.func.coalesce(c.log, "")
                                + tasklog.holder_gone(row.attempts, row.worker))
                    ).rowcount
                    row = select_task(conn, task_id)
            if changed == 1 and row is not None and limits:
                self._take_places(conn, row, limits, now)
        if row is None:
            return Claim(ClaimOutcome.MISSING, None)
        if changed == 1:
            return Claim(ClaimOutcome.CLAIMED, row)
        if row.status is Status.WORKING:
            return Claim(ClaimOutcome.HELD_ALIVE if row.job_id == job_id else ClaimOutcome.HELD_ELSEWHERE, row)
        return Claim(ClaimOutcome.FINISHED, row)

    def _take_places(self, conn: Connection, row: TaskRow, limits: LimitTable, now: dt.datetime) -> None:
        """Take the places of the claimed row's limits in the claim's transaction, or raise to roll it back."""
        places = limits.places_for(row.command, row.tube, row.limit_key)
        if not places:
            return
        if not self.places.made(places):
            raise _PlacesMissing(places)
        wait = take_places(conn, places, row.id, row.attempts, now)
        if wait is not None:
            raise _OverLimit(row, wait)

    def renew_lease(self, task_id: int, attempt: int) -> bool:
        """The holder's heartbeat; False when this attempt no longer holds the task."""
        c = task_table.c
        with self.database.transaction() as conn:
            return conn.execute(
                task_table.update().where(c.id == task_id, c.status == Status.WORKING.value, c.attempts == attempt)
                .values(heartbeat=utc_now())
            ).rowcount == 1

    def record_progress(self, task_id: int, attempt: int, progress: str) -> bool:
        """A Python task's progress (JSON), written while this attempt holds the task; False when it does not."""
        c = task_table.c
        with self.database.transaction() as conn:
            return conn.execute(
                task_table.update().where(c.id == task_id, c.status == Status.WORKING.value, c.attempts == attempt)
                .values(progress=progress)
            ).rowcount == 1


def _refusal(row: TaskRow, nonce: str | None, job_id: int, tubes: Sequence[str],
             commands: Sequence[str]) -> ClaimOutcome | None:
    """Why the job must not touch `row` at all, if it must not: it names another row, was moved to a tube the
    row is not in, or would run a command this worker may not run."""
    if row.nonce != nonce:
        return ClaimOutcome.OTHER_ROW
    if row.tube not in tubes:
        return ClaimOutcome.OTHER_TUBE
    would_run = row.status in CLAIMABLE or (row.status is Status.WORKING and row.job_id == job_id)
    if would_run and row.command not in commands:
        return ClaimOutcome.UNREGISTERED
    return None


def is_stale(row: TaskRow, now: dt.datetime) -> bool:
    """Whether a `working` row's holder stopped renewing its lease (see pheanq.lease)."""
    last = row.heartbeat or row.started or row.modified
    return (now - last).total_seconds() > stale_after(row.ttr)
