"""Totals that only grow, for the Prometheus metrics: how many times the tasks of each tube and command entered each
status, and histograms of how long attempts ran and how long tasks waited for a worker.

The count triggers of revision 0011 are made again so that each change row they add also carries, on the row of a
task entering a status (an insert, a move), the task's `command`; on the move that ends an attempt with a verdict
(`working` → done, failed, cancelled or retrying; a late result, `stalled` → done, failed or retrying), how long it
ran, `started` to `finished` (to the move, for `retrying`, which sets no `finished`); and on a claim (a move into
`working`), how long the task had been ready: from when it entered the status it was claimed from (`modified`
before the claim), or from its `run_at` when that came later, to `started`. The database computes both, in
seconds (microseconds kept), at most 0 below: clocks of two hosts may disagree.

The fold (pheanq.storage.counts) that already consumes each change row exactly once adds those rows into
`pheanq_status_total` and `pheanq_duration`, which nothing ever lowers: deleting tasks adds change rows for the
counts, never to the totals. The totals start at the upgrade; the tasks that ended before it are not counted.

Replacing a trigger is atomic on every database: PostgreSQL replaces the triggers' functions, SQLite replaces them
in the migration's transaction, MariaDB has CREATE OR REPLACE TRIGGER; MySQL replaces them under LOCK TABLES.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COLUMNS = "(tube, status, n, command, run_seconds, wait_seconds)"
_OLD_COLUMNS = "(tube, status, n)"
# The moves that end an attempt with a verdict: its run time is noted on them.
_RUN_ENDS = ("(OLD.status = 'working' AND NEW.status IN ('done', 'failed', 'cancelled', 'retrying')) OR "
             "(OLD.status = 'stalled' AND NEW.status IN ('done', 'failed', 'retrying'))")


def _seconds(dialect: str, later: str, earlier: str) -> str:
    """`later` - `earlier` in seconds, microseconds kept, and never below 0."""
    if dialect == "postgresql":
        return f"GREATEST(0, EXTRACT(EPOCH FROM ({later} - {earlier})))"
    if dialect == "sqlite":
        # julianday() keeps milliseconds only; SQLAlchemy stores 'YYYY-MM-DD HH:MM:SS.ffffff', so whole seconds come
        # from strftime and the microseconds from the text (a value without them counts as .000000).
        return (f"max(0, (strftime('%s', {later}) - strftime('%s', {earlier})) + "
                f"(substr({later}, 21, 6) - substr({earlier}, 21, 6)) / 1000000.0)")
    return f"GREATEST(0, TIMESTAMPDIFF(MICROSECOND, {earlier}, {later}) / 1000000)"


def _latest(dialect: str, first: str, second: str) -> str:
    """The later of two times, `second` possibly NULL (PostgreSQL's GREATEST skips a NULL; the others' do not)."""
    function = "max" if dialect == "sqlite" else "GREATEST"
    return f"{function}({first}, COALESCE({second}, {first}))"


def _rows(dialect: str) -> dict[str, list[str]]:
    run = _seconds(dialect, "COALESCE(NEW.finished, NEW.modified)", "NEW.started")
    wait = _seconds(dialect, "NEW.started", _latest(dialect, "OLD.modified", "OLD.run_at"))
    entered = (f"CASE WHEN OLD.status <> NEW.status THEN NEW.command END, "
               f"CASE WHEN NEW.started IS NOT NULL AND ({_RUN_ENDS}) THEN {run} END, "
               f"CASE WHEN NEW.started IS NOT NULL AND NEW.status = 'working' AND OLD.status <> 'working' "
               f"THEN {wait} END")
    return {
        "insert": ["(NEW.tube, NEW.status, 1, NEW.command, NULL, NULL)"],
        "update": ["(OLD.tube, OLD.status, -1, NULL, NULL, NULL)", f"(NEW.tube, NEW.status, 1, {entered})"],
    }


# Revision 0011's, put back by the downgrade.
_OLD_ROWS = {
    "insert": ["(NEW.tube, NEW.status, 1)"],
    "update": ["(OLD.tube, OLD.status, -1)", "(NEW.tube, NEW.status, 1)"],
}
_TIMING = {"insert": ("AFTER INSERT", None),
           "update": ("AFTER UPDATE", "OLD.status <> NEW.status OR OLD.tube <> NEW.tube")}


def upgrade() -> None:
    op.add_column("pheanq_count_change", sa.Column("command", sa.String(255), nullable=True))
    op.add_column("pheanq_count_change", sa.Column("run_seconds", sa.Double(), nullable=True))
    op.add_column("pheanq_count_change", sa.Column("wait_seconds", sa.Double(), nullable=True))
    op.create_table(
        "pheanq_status_total",
        sa.Column("tube", sa.String(200), primary_key=True),
        sa.Column("command", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "pheanq_duration",
        sa.Column("tube", sa.String(200), primary_key=True),
        sa.Column("command", sa.String(255), primary_key=True),
        sa.Column("metric", sa.String(8), primary_key=True),
        sa.Column("le", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    _replace_triggers(dialect, _COLUMNS, _rows(dialect))


def downgrade() -> None:
    _replace_triggers(op.get_bind().dialect.name, _OLD_COLUMNS, _OLD_ROWS)
    op.drop_table("pheanq_duration")
    op.drop_table("pheanq_status_total")
    # Not in batch mode: SQLite's copy of the table would be renamed into place, which the triggers on pheanq_task
    # that name it do not allow; SQLite drops a column in place (3.35 and later).
    for column in ("wait_seconds", "run_seconds", "command"):
        op.drop_column("pheanq_count_change", column)


def _replace_triggers(dialect: str, columns: str, rows: dict[str, list[str]]) -> None:
    """Revision 0011's insert and update triggers with these change rows (its delete trigger stays as it is)."""
    statements = {event: f"INSERT INTO pheanq_count_change {columns} VALUES {', '.join(values)}"
                  for event, values in rows.items()}
    if dialect == "postgresql":
        # The triggers (and the update's WHEN clause) stay; their functions are replaced in this transaction.
        for event, statement in statements.items():
            op.execute(f"CREATE OR REPLACE FUNCTION pheanq_count_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                       f"BEGIN {statement}; RETURN NULL; END $$")
        return
    bodies = {}
    for event, statement in statements.items():
        timing, condition = _TIMING[event]
        if dialect == "sqlite":
            body = ("" if condition is None else f"WHEN {condition} ") + f"BEGIN {statement}; END"
        else:  # MariaDB/MySQL: a trigger's body is one statement, a condition an IF in it
            body = statement if condition is None else f"BEGIN IF {condition} THEN {statement}; END IF; END"
        bodies[event] = f"TRIGGER pheanq_count_{event} {timing} ON pheanq_task FOR EACH ROW {body}"
    if dialect == "sqlite":
        for event, body in bodies.items():
            op.execute(f"DROP TRIGGER pheanq_count_{event}")
            op.execute(f"CREATE {body}")
    elif op.get_bind().dialect.is_mariadb:
        for body in bodies.values():
            op.execute(f"CREATE OR REPLACE {body}")
    else:  # MySQL has no CREATE OR REPLACE TRIGGER: no task is written between the DROP and the CREATE
        op.execute("LOCK TABLES pheanq_task WRITE, pheanq_count_change WRITE")
        try:
            for event, body in bodies.items():
                op.execute(f"DROP TRIGGER pheanq_count_{event}")
                op.execute(f"CREATE {body}")
        finally:
            op.execute("UNLOCK TABLES")
