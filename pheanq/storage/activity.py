"""What the dashboard's overview charts read: tasks ended per time bucket, and samples of how long tasks waited in
their queue.

Every read goes through the `(status, finished)` index and costs what the window's rows cost, never the history.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pheanq.status import Status
from pheanq.storage.engine import Database
from pheanq.storage.tables import task_table

_c = task_table.c
ENDED = (Status.DONE.value, Status.FAILED.value)


class ActivityStatements:
    """Reads over a recent window of the task table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def ends_per_bucket(self, buckets: list[tuple[dt.datetime, dt.datetime]], tube: str | None
                        ) -> list[tuple[int, str, int]]:
        """(bucket, status, count) of the tasks that ended done or failed in each (start, end) bucket. One
        statement: a count per bucket and status, each a range of the (status, finished) index that the database
        counts without reading a row (unless a tube is asked for: then the rows of the range are read)."""
        branches = []
        for number, (start, end) in enumerate(buckets):
            for status in ENDED:
                count = sa.select(sa.func.count()).select_from(task_table).where(
                    _c.status == status, _c.finished >= start, _c.finished < end)
                if tube is not None:
                    count = count.where(_c.tube == tube)
                branches.append(sa.select(sa.literal(number), sa.literal(status), count.scalar_subquery()))
        if not branches:
            return []
        with self.database.transaction() as conn:
            _without_jit(conn)
            return [(int(bucket), status, int(n)) for bucket, status, n in conn.execute(sa.union_all(*branches))]

    def waits(self, buckets: list[tuple[dt.datetime, dt.datetime]], per_bucket: int, tube: str | None
              ) -> list[list[float]]:
        """For each (start, end) bucket, the queue waits (started - created, in seconds) of at most `per_bucket`
        tasks that ended in it: a sample, so a busy hour costs what a quiet one does. One statement: a branch per
        bucket, each a short range of the (status, finished) index."""
        branches = []
        for number, (start, end) in enumerate(buckets):
            query = (sa.select(_c.created, _c.started)
                     .where(_c.status.in_(ENDED), _c.finished >= start, _c.finished < end, _c.started.is_not(None))
                     .limit(per_bucket))
            if tube is not None:
                query = query.where(_c.tube == tube)
            sample = query.subquery(f"b{number}")
            branches.append(sa.select(sa.literal(number).label("bucket"), sample.c.created, sample.c.started))
        found: list[list[float]] = [[] for _ in buckets]
        if not branches:
            return found
        with self.database.transaction() as conn:
            _without_jit(conn)
            for bucket, created, started in conn.execute(sa.union_all(*branches)):
                found[int(bucket)].append(max(0.0, (started - created).total_seconds()))
        return found


def _without_jit(conn: Connection) -> None:
    """PostgreSQL compiles a statement it estimates dear to machine code first (JIT): a statement of a hundred
    short index ranges looks dear and is cheap, and compiling it took seconds (15 s against 0.2 s for a day's chart
    of one tube on 10 M rows). Off for this transaction only."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL jit = off"))
