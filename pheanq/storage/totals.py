"""Totals that only grow: how many times the tasks of each tube and command entered each status, and histograms of
how long attempts ran and how long tasks waited for a worker (the Prometheus metrics' counters, pheanq.ops.metrics).

The count triggers (revisions 0011 and 0014) note on the change row of a task entering a status its command, and on
the move that ends an attempt with a verdict, or on a claim, the run or wait in seconds. The fold of
pheanq.storage.counts, which consumes each change row exactly once in the transaction that deletes it, adds those
rows here as well (`additions`). Nothing lowers these tables: a deleted task notes a -1 for its count, never for a
total, so the totals stay right after `task-cleanup`, and are the same whichever host reads them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import sqlalchemy as sa

from pheanq.status import Status
from pheanq.storage.engine import Database
from pheanq.storage.tables import duration_table, status_total_table

# The upper bounds (seconds) of the histograms' buckets, from a millisecond to six hours; the last bucket takes
# everything above. A bound is stored as its text in pheanq_duration.le: changing them needs a migration that
# moves the stored buckets (a reader puts a bound it does not know into the next one up).
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600,
                              1800, 3600, 7200, 21600)
INFINITY = "+Inf"
# The histograms: the column of the change row each observes.
METRICS = {"run": "run_seconds", "wait": "wait_seconds"}


@dataclasses.dataclass(frozen=True)
class Histogram:
    """One histogram of a tube and command: how many observations were at most each bound of BUCKETS and
    `INFINITY` (cumulative, as Prometheus has them), their count and their sum in seconds."""

    tube: str
    command: str
    metric: str
    buckets: list[tuple[float, int]]
    count: int
    sum: float


def bound_text(bound: float) -> str:
    return f"{bound:g}"


def additions(dialect: str, changes: Any) -> list[Any]:
    """The upserts that add `changes` (rows of pheanq_count_change: a range of them, or those a DELETE took) to the
    totals and to the histograms."""
    entered = (sa.select(changes.c.tube, changes.c.command, changes.c.status, sa.func.sum(changes.c.n))
               .where(changes.c.command.is_not(None), changes.c.n > 0)
               .group_by(changes.c.tube, changes.c.command, changes.c.status))
    statements = [adding(dialect, status_total_table, ["tube", "command", "status", "n"], entered, ["n"])]
    for metric, column in METRICS.items():
        seconds = changes.c[column]
        bucket = sa.case(*((seconds <= sa.literal_column(repr(float(bound))),
                            sa.literal_column(f"'{bound_text(bound)}'")) for bound in BUCKETS),
                         else_=sa.literal_column(f"'{INFINITY}'"))
        # Bucketed in a subquery and grouped by its column: PostgreSQL would not match a GROUP BY on the CASE
        # itself to the selected CASE once each has its own parameters.
        observed = (sa.select(changes.c.tube, changes.c.command, bucket.label("le"), seconds.label("seconds"))
                    .where(seconds.is_not(None), changes.c.command.is_not(None)).subquery("observed"))
        o = observed.c
        summed = (sa.select(o.tube, o.command, sa.literal_column(f"'{metric}'"), o.le, sa.func.count(),
                            sa.func.sum(o.seconds))
                  .where(sa.true())  # SQLite: an upsert's SELECT needs a WHERE (else ON could begin a join)
                  .group_by(o.tube, o.command, o.le))
        statements.append(adding(dialect, duration_table, ["tube", "command", "metric", "le", "n", "seconds"],
                                 summed, ["n", "seconds"]))
    return statements


def adding(dialect: str, table: sa.Table, columns: list[str], rows: Any, added: list[str]) -> Any:
    """INSERT `rows` into `table`; where a row of the same key is there, add the `added` columns to it instead."""
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql as chosen  # lazy: the dialect of the database in use only
        else:
            from sqlalchemy.dialects import sqlite as chosen  # type: ignore[no-redef]
        upsert = chosen.insert(table).from_select(columns, rows)
        return upsert.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                            set_={name: table.c[name] + upsert.excluded[name] for name in added})
    from sqlalchemy.dialects import mysql

    inserted = mysql.insert(table).from_select(columns, rows)
    return inserted.on_duplicate_key_update({name: table.c[name] + inserted.inserted[name] for name in added})


def status_totals(database: Database) -> list[tuple[str, str, Status, int]]:
    """(tube, command, status, how many times a task of them entered it) as folded so far."""
    t = status_total_table.c
    with database.transaction() as conn:
        return [(tube, command, Status(status), int(n)) for tube, command, status, n in conn.execute(
            sa.select(t.tube, t.command, t.status, t.n).order_by(t.tube, t.command, t.status))]


def histograms(database: Database) -> list[Histogram]:
    """Every histogram of every tube and command, as folded so far."""
    d = duration_table.c
    found: dict[tuple[str, str, str], dict[float, tuple[int, float]]] = {}
    with database.transaction() as conn:
        for tube, command, metric, le, n, seconds in conn.execute(
                sa.select(d.tube, d.command, d.metric, d.le, d.n, d.seconds)):
            bound = _known_bound(le)
            buckets = found.setdefault((tube, command, metric), {})
            count, total = buckets.get(bound, (0, 0.0))
            buckets[bound] = (count + int(n), total + float(seconds))
    made = []
    for (tube, command, metric), buckets in sorted(found.items()):
        cumulative, running = [], 0
        for bound in [*BUCKETS, math.inf]:
            running += buckets.get(bound, (0, 0.0))[0]
            cumulative.append((bound, running))
        made.append(Histogram(tube, command, metric, cumulative, running,
                              sum(total for _, total in buckets.values())))
    return made


def _known_bound(le: str) -> float:
    """The bound of BUCKETS (or infinity) whose bucket holds what was stored under `le`: itself, or the next one
    up for a bound of other buckets than these."""
    value = math.inf if le == INFINITY else float(le)
    return next((bound for bound in BUCKETS if bound >= value), math.inf)
