"""The number of tasks per tube and status, read from counts the database keeps, not by counting the table.

Triggers on `pheanq_task` (revision 0011) note every insert, delete and move as rows of `pheanq_count_change`
(+1 for where a task went, -1 for where it left), in the transaction that makes it; nothing is updated in place,
so writers never wait on one another for a count. `fold` moves those changes into `pheanq_count` (the reconciler
does so at each pass, and `count_tasks` before it reads); a count is its `pheanq_count` row plus the changes not
folded yet, read in one statement, so it is exact whenever it is read, folded or not. Since revision 0014 the
change rows also carry what the totals and histograms of pheanq.storage.totals need, and the fold adds them there
in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq.status import Status
from pheanq.storage import totals
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


def ready_since(database: Database, now: dt.datetime,
                claimable: Iterable[tuple[str, Status]]) -> dict[str, dt.datetime]:
    """Tube -> since when (naive UTC) its longest-ready task has been ready, among the tubes and claimable statuses of
    `claimable` (those that have tasks: count_tasks says which). Ready: claimable, and its `run_at` has come; since
    it entered that status (`modified`), or since its `run_at` when that came later.

    One task per tube and status is read, the first in id order whose run_at has come, with an index in that
    order: (tube, status) on SQLite and MariaDB, whose entries end with the id; on PostgreSQL that or the pending
    index (status, id). So a scrape costs a few index lookups however long the table and the backlog are. The
    first in id order is the longest-ready one unless a task older than others entered its status again later (a
    hand-back, a release from `waiting`): then the age shown is that task's, a little less than the longest."""
    c = task_table.c
    found: dict[str, dt.datetime] = {}
    with database.transaction() as conn:
        for tube, status in claimable:
            # The status as a literal: PostgreSQL may then use the partial pending index, whatever plan it caches.
            first = conn.execute(
                sa.select(c.modified, c.run_at)
                .where(c.tube == tube, c.status == sa.literal_column(f"'{Status(status).value}'"),
                       sa.or_(c.run_at.is_(None), c.run_at <= now))
                .order_by(c.id).limit(1)).first()
            if first is not None:
                since = max(first.modified, first.run_at or first.modified)
                found[tube] = min(since, found.get(tube, since))
    return found


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
    """Add the changes of ids `low` to `high` to the counts, and to the totals (pheanq.storage.totals), and delete
    them: all in one transaction, so each change is added once, by whichever fold deletes it."""
    in_range = _ch.id.between(low, high)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # One statement: the DELETE locks what it takes, so a fold running beside this one skips those rows; every
        # addition reads what this DELETE took, and nothing else.
        gone = count_change_table.delete().where(in_range).returning(*_ch).cte("gone")
        first, *others = [_counts_added(dialect, gone), *totals.additions(dialect, gone)]
        conn.execute(first.add_cte(*(other.cte(f"added_{n}") for n, other in enumerate(others))))
        return
    if dialect != "sqlite":
        # MariaDB/MySQL: lock the range's changes first, so that a fold beside this one waits, then finds them gone.
        conn.execute(sa.select(sa.func.count()).select_from(count_change_table).where(in_range).with_for_update())
    changes = sa.select(count_change_table).where(in_range).subquery("changes")
    for statement in [_counts_added(dialect, changes), *totals.additions(dialect, changes)]:
        conn.execute(statement)
    conn.execute(count_change_table.delete().where(in_range))


def _counts_added(dialect: str, changes: Any) -> Any:
    summed = (sa.select(changes.c.tube, changes.c.status, sa.func.sum(changes.c.n)).where(sa.true())
              .group_by(changes.c.tube, changes.c.status))
    return totals.adding(dialect, count_table, ["tube", "status", "n"], summed, ["n"])
