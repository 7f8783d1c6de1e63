"""The places of the cluster-wide limits (pheanq.task_limits) in `pheanq_limit_slot`, and how a claim takes them.

A limit of N is N rows of its scope and kind. A claim takes one free row of each limit its task falls under by a
compare-and-set UPDATE on the row as it read it, in the claim's own transaction: two claims that read the same free
row cannot both change it, so however many workers on however many hosts claim at once, no more than N hold a
concurrency limit's rows, and no row of a rate limit serves two starts within its period. A concurrency row is free
again once its holder's attempt is no longer `working` under a live lease (it ended, or its worker died and the
lease went stale; pheanq.lease): nothing has to release it, so a killed worker's place comes back by itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pheanq.lease import stale_after
from pheanq.status import CLAIMABLE, Status
from pheanq.storage.engine import Database, any_of
from pheanq.storage.tables import limit_slot_table, task_table
from pheanq.task_limits import CONCURRENCY, RATE, LimitTable, Place

_s, _t = limit_slot_table.c, task_table.c
# The column of pheanq_task a scope ("command:NAME", "tube:NAME", "key:KEY") names its tasks by.
_SCOPE_COLUMNS = {"command": _t.command, "tube": _t.tube, "key": _t.limit_key}
# `pheanq status` shows the key limits of at most this many keys (those with places, or with tasks yet to start).
MAX_KEYS_SHOWN = 100

# The rows of one limit with their holders as the claim must judge them: a holder counts while its attempt is
# `working` and its lease is not stale.
_HELD = (
    sa.select(_s.slot, _s.task_id, _s.attempt, _s.taken, _t.status, _t.attempts, _t.heartbeat, _t.started,
              _t.modified, _t.ttr)
    .select_from(limit_slot_table.outerjoin(task_table, _t.id == _s.task_id))
    .where(_s.scope == sa.bindparam("scope"), _s.kind == sa.bindparam("kind"), _s.slot < sa.bindparam("size"))
    .order_by(_s.slot)
)


# A place taken by compare-and-set on its `taken` as read (never taken: NULL), built once.
_TAKE_WHERE = (_s.scope == sa.bindparam("of_scope"), _s.kind == sa.bindparam("of_kind"),
               _s.slot == sa.bindparam("place"))
_TAKE_VALUES: dict[str, Any] = {"task_id": sa.bindparam("task"), "attempt": sa.bindparam("for_attempt"),
                                "taken": sa.bindparam("now")}
_TAKE = limit_slot_table.update().where(*_TAKE_WHERE, _s.taken == sa.bindparam("read_taken")).values(_TAKE_VALUES)
_TAKE_UNUSED = limit_slot_table.update().where(*_TAKE_WHERE, _s.taken.is_(None)).values(_TAKE_VALUES)


@dataclasses.dataclass(frozen=True)
class LimitUse:
    """One limit as `pheanq status` shows it: its places, how many are in use, and how many tasks wait for it."""

    scope: str
    kind: str
    size: int
    period: int
    in_use: int
    waiting: int


def take_places(conn: Connection, places: Sequence[Place], task_id: int, attempt: int,
                now: dt.datetime) -> float | None:
    """Take one place of each limit in `places` for the attempt, in the caller's transaction: None when every one
    was taken; else the seconds until a place of the first full limit frees, as far as that can be known (the
    oldest start of a rate limit; 0 for a concurrency limit), and the caller must roll back what was taken."""
    for place in places:
        wait = (_take_concurrency if place.kind == CONCURRENCY else _take_rate)(conn, place, task_id, attempt, now)
        if wait is not None:
            return wait
    return None


class LimitPlaces:
    """The rows of the limits: made before their first claim, and counted for `pheanq status`."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._made: set[tuple[str, str, int]] = set()

    def made(self, places: Sequence[Place]) -> bool:
        """Whether this process made (or found) the rows of every limit in `places`."""
        return all((place.scope, place.kind, place.size) in self._made for place in places)

    def make_places(self, places: Sequence[Place]) -> None:
        """Insert the rows a limit lacks (a first claim, or a limit made bigger); once per limit and process."""
        for place in places:
            if (place.scope, place.kind, place.size) in self._made:
                continue
            with self.database.transaction() as conn:
                have = set(conn.execute(sa.select(_s.slot).where(_s.scope == place.scope, _s.kind == place.kind,
                                                                 _s.slot < place.size)).scalars())
            for slot in sorted(set(range(place.size)) - have):
                try:
                    with self.database.transaction() as conn:
                        conn.execute(limit_slot_table.insert().values(scope=place.scope, kind=place.kind, slot=slot))
                except IntegrityError:
                    pass  # another process made it first
            self._made.add((place.scope, place.kind, place.size))

    def waiting_jobs(self, scope: str, tube: str, now: dt.datetime, count: int = 3) -> list[int]:
        """The job ids of the scope's oldest tasks in `tube` that are `new` with a job and due: those a freed place
        of the scope may wake."""
        column = _SCOPE_COLUMNS[scope.partition(":")[0]]
        with self.database.transaction() as conn:
            return [int(job_id) for job_id in conn.execute(
                sa.select(_t.job_id).where(_t.status == Status.NEW.value, column == scope.partition(":")[2],
                                           _t.tube == tube, _t.job_id.is_not(None),
                                           sa.or_(_t.run_at.is_(None), _t.run_at <= now))
                .order_by(_t.id).limit(count)).scalars()]

    def usage(self, table: LimitTable, now: dt.datetime) -> list[LimitUse]:
        """Every declared limit with its use now, key limits once per key that has places or tasks yet to start (at
        most MAX_KEYS_SHOWN keys); in claim order."""
        with self.database.transaction() as conn:
            placed = conn.execute(sa.select(_s.scope).where(_s.scope.like("key:%")).distinct()
                                  .limit(MAX_KEYS_SHOWN)).scalars().all()
            queued = conn.execute(sa.select(_t.limit_key).where(_t.limit_key.is_not(None),
                                                                 any_of(_t.status, [s.value for s in CLAIMABLE]))
                                  .distinct().limit(MAX_KEYS_SHOWN)).scalars().all()
            keys = sorted({scope.removeprefix("key:") for scope in placed} | {str(key) for key in queued})
            declared = table.declared_places(keys[:MAX_KEYS_SHOWN])
            return [LimitUse(place.scope, place.kind, place.size, place.period, _in_use(conn, place, now),
                             _waiting(conn, place.scope)) for place in declared]


def _take_concurrency(conn: Connection, place: Place, task_id: int, attempt: int, now: dt.datetime) -> float | None:
    rows = conn.execute(_HELD, {"scope": place.scope, "kind": place.kind, "size": place.size}).all()
    for row in rows:
        if not _holds(row, now) and _take(conn, place, row, task_id, attempt, now):
            return None
    return 0.0


def _take_rate(conn: Connection, place: Place, task_id: int, attempt: int, now: dt.datetime) -> float | None:
    rows = conn.execute(_HELD, {"scope": place.scope, "kind": place.kind, "size": place.size}).all()
    served_before = now - dt.timedelta(seconds=place.period)
    # The place used longest ago first: the one a start may take soonest.
    for row in sorted(rows, key=lambda row: row.taken or dt.datetime.min):
        if row.taken is not None and row.taken > served_before:
            break
        if _take(conn, place, row, task_id, attempt, now):
            return None
    oldest = min((row.taken for row in rows if row.taken is not None), default=None)
    return 0.0 if oldest is None else max(0.0, (oldest - served_before).total_seconds())


def _take(conn: Connection, place: Place, row: Any, task_id: int, attempt: int, now: dt.datetime) -> bool:
    """Take the place `row` read, if it is still as it was read: every take writes its own `taken`, so an unchanged
    `taken` means nobody took the place in between."""
    statement = _TAKE_UNUSED if row.taken is None else _TAKE
    return bool(conn.execute(statement, {"of_scope": place.scope, "of_kind": place.kind, "place": row.slot,
                                         "read_taken": row.taken, "task": task_id, "for_attempt": attempt,
                                         "now": now}).rowcount == 1)


def _holds(row: Any, now: dt.datetime) -> bool:
    """Whether the row's holder still counts: its attempt is `working` under a lease that is not stale."""
    if row.task_id is None or row.status != Status.WORKING.value or row.attempts != row.attempt:
        return False
    last = row.heartbeat or row.started or row.modified
    return bool((now - last).total_seconds() <= stale_after(row.ttr))


def _in_use(conn: Connection, place: Place, now: dt.datetime) -> int:
    rows = conn.execute(_HELD, {"scope": place.scope, "kind": place.kind, "size": place.size}).all()
    if place.kind == RATE:
        served_before = now - dt.timedelta(seconds=place.period)
        return sum(1 for row in rows if row.taken is not None and row.taken > served_before)
    return sum(1 for row in rows if _holds(row, now))


def _waiting(conn: Connection, scope: str) -> int:
    """The tasks of the scope that have yet to start: queued, or waiting for a retry."""
    what, _, name = scope.partition(":")
    column = _SCOPE_COLUMNS[what]
    return int(conn.execute(sa.select(sa.func.count()).select_from(task_table)
                            .where(column == name, any_of(_t.status, [s.value for s in CLAIMABLE]))).scalar_one())

