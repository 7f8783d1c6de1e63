"""The number of tasks per tube and status, read from counts the database keeps, not by counting the table.

Triggers on `pheanq_task` (revision 0011) note every insert, delete and move as rows of `pheanq_count_change`
(+1 for where a task went, -1 for where it left), in the transaction that makes it; nothing is updated in place,
so writers never wait on one another for a count. `fold` moves those changes into `pheanq_count` (the reconciler
does so at each pass, and `count_tasks` before it reads); a count is its `pheanq_count` row plus the changes not
folded yet, read in one statement, so it is exact whenever it is read, folded or not.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq.status import Status
from pheanq.storage.engine import Database
from pheanq.storage.tables import count_change_table, count_table, task_table

# Changes folded in one transaction: a fold after millions of them (a bulk load) commits as it goes.
FOLD_PAGE = 50_000

_k, _ch = count_table.c, count_change_table.c

_COUNTS: Any = (
    sa.select(sa.literal_column("tube"), sa.literal_column("status"), sa.func.sum(sa.literal_column("n")))
    .select_from(sa.union_all(sa.select(_k.tube, _k.status, _k.n), sa.select(_ch.tube, _ch.status, _ch.n))
                 .subquery("counted"))
    .group_by(sa.literal_column("tube"), sa.literal_column("status"))
    .having(sa.func.sum(sa.literal_column("n")) != 0)
    .order_by(sa.literal_column("tube"), sa.literal_column("status"))
)


def count_tasks(database: Database) -> list[tuple[str, Status, int]]:
    """(tube, status, count) for every tube and status that has tasks, after a fold."""
    fold(database)
    with database.transaction() as conn:
        return [(tube, Status(status), int(n)) for tube, status, n in conn.execute(_COUNTS)]


def finished_since(database: Database, since: dt.datetime) -> list[tuple[str, Status, int]]:
    """(tube, status, count) of the tasks that ended done or failed at `since` (naive UTC) or later: read through
    the (status, finished) index, so it costs what those recent rows cost, not the history. A task deleted since
    (task-cleanup) is no longer counted; its end was longer ago than any window this is asked for."""
    c = task_table.c
    # Grouped by an expression of the tube, not the column: grouping by (tube, status) led SQLite to walk the
    # whole (tube, status) index (17 s on 10 M rows) instead of the last minute of (status, finished).
    tube = sa.func.coalesce(c.tube, "").label("tube")
    query = (sa.select(tube, c.status, sa.func.count())
             .where(c.status.in_([Status.DONE.value, Status.FAILED.value]), c.finished >= since)
             .group_by(tube, c.status).order_by(tube, c.status))
    with database.transaction() as conn:
        return [(tube, Status(status), int(n)) for tube, status, n in conn.execute(query)]


def fold(database: Database, page: int = FOLD_PAGE) -> None:
    """Move the changes noted so far into `pheanq_count`, `page` ids a transaction. Two folds at once never count
    a change twice: each change is deleted by the transaction that adds it to its count."""
    with database.transaction() as conn:
        first, last = conn.execute(sa.select(sa.func.min(_ch.id), sa.func.max(_ch.id))).one()
    if first is None:
        return
    for low in range(int(first), int(last) + 1, page):
        with database.transaction() as conn:
            _fold_range(conn, low, min(low + page - 1, int(last)))


def _fold_range(conn: Connection, low: int, high: int) -> None:
    in_range = _ch.id.between(low, high)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql  # lazy: the dialect of the database in use only

        # One statement: the DELETE locks what it takes, so a fold running beside this one skips those rows.
        gone = count_change_table.delete().where(in_range).returning(_ch.tube, _ch.status, _ch.n).cte("gone")
        summed = sa.select(gone.c.tube, gone.c.status, sa.func.sum(gone.c.n)).group_by(gone.c.tube, gone.c.status)
        insert = postgresql.insert(count_table).from_select(["tube", "status", "n"], summed)
        conn.execute(insert.on_conflict_do_update(index_elements=[_k.tube, _k.status],
                                                  set_={"n": _k.n + insert.excluded.n}))
        return
    if dialect != "sqlite":
        # MariaDB/MySQL: lock the range's changes first, so that a fold beside this one waits, then finds them gone.
        conn.execute(sa.select(sa.func.count()).select_from(count_change_table).where(in_range).with_for_update())
    summed = sa.select(_ch.tube, _ch.status, sa.func.sum(_ch.n)).where(in_range).group_by(_ch.tube, _ch.status)
    conn.execute(_add_to_counts(dialect, summed))
    conn.execute(count_change_table.delete().where(in_range))


def _add_to_counts(dialect: str, summed: Any) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        upsert = sqlite.insert(count_table).from_select(["tube", "status", "n"], summed)
        return upsert.on_conflict_do_update(index_elements=[_k.tube, _k.status], set_={"n": _k.n + upsert.excluded.n})
    from sqlalchemy.dialects import mysql

    added = mysql.insert(count_table).from_select(["tube", "status", "n"], summed)
    return added.on_duplicate_key_update(n=_k.n + added.inserted.n)
