"""Counts of tasks per tube and status, kept by the database itself, so that `pheanq status` reads a few rows
instead of counting the whole table (seconds on 10 million rows).

Every insert, delete and change of status or tube of a `pheanq_task` row adds rows to `pheanq_count_change`
(+1 for the new tube and status, -1 for the old), in the same transaction, by triggers: no code path can forget
it, and no counter row is updated in place, so concurrent transactions never wait on one another for it. A
fold (pheanq.storage.counts) moves those changes into `pheanq_count` from time to time; the count of a tube and
status is its `pheanq_count` row plus its changes not folded yet, read in one statement.

On PostgreSQL the triggers are per statement, over its transition tables: a `queue_many` of 500 rows adds one
change row per tube and status, not 500. SQLite and MariaDB have only row triggers.

The upgrade counts the rows there are, with the task table locked against writers, so that a task written
meanwhile is counted once: on PostgreSQL and SQLite in the transaction that creates the triggers; MariaDB
commits each DDL statement by itself, so there the count is made after the triggers exist, under LOCK TABLES,
and the changes they noted before it are dropped (the count has them). Building the count reads the whole
table once (the (tube, status) index): seconds on 10 million rows, during which tasks cannot be written.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_POSTGRESQL_TRIGGERS = [
    # One function per event: each reads the transition tables its trigger names.
    ("insert", "INSERT", "REFERENCING NEW TABLE AS new_rows",
     "INSERT INTO pheanq_count_change (tube, status, n) "
     "SELECT tube, status, count(*) FROM new_rows GROUP BY tube, status"),
    ("delete", "DELETE", "REFERENCING OLD TABLE AS old_rows",
     "INSERT INTO pheanq_count_change (tube, status, n) "
     "SELECT tube, status, -count(*) FROM old_rows GROUP BY tube, status"),
    ("update", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
     "INSERT INTO pheanq_count_change (tube, status, n) "
     "SELECT tube, status, sum(n) FROM ("
     " SELECT o.tube, o.status, -1 AS n FROM old_rows o JOIN new_rows w ON w.id = o.id"
     "  WHERE o.status <> w.status OR o.tube <> w.tube"
     " UNION ALL"
     " SELECT w.tube, w.status, 1 AS n FROM old_rows o JOIN new_rows w ON w.id = o.id"
     "  WHERE o.status <> w.status OR o.tube <> w.tube"
     ") AS moved GROUP BY tube, status HAVING sum(n) <> 0"),
]

_ROW_TRIGGERS = {
    "insert": ("AFTER INSERT", None, ["(NEW.tube, NEW.status, 1)"]),
    "delete": ("AFTER DELETE", None, ["(OLD.tube, OLD.status, -1)"]),
    "update": ("AFTER UPDATE", "OLD.status <> NEW.status OR OLD.tube <> NEW.tube",
               ["(OLD.tube, OLD.status, -1)", "(NEW.tube, NEW.status, 1)"]),
}


def upgrade() -> None:
    op.create_table(
        "pheanq_count",
        sa.Column("tube", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "pheanq_count_change",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("tube", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    count = "INSERT INTO pheanq_count (tube, status, n) SELECT tube, status, count(*) FROM pheanq_task GROUP BY " \
            "tube, status"
    if dialect == "postgresql":
        op.execute("LOCK TABLE pheanq_task IN SHARE ROW EXCLUSIVE MODE")
        _create_postgresql_triggers()
        op.execute(count)
    elif dialect == "sqlite":
        _create_row_triggers(sqlite=True)
        op.execute(count)
    else:
        _create_row_triggers(sqlite=False)
        op.execute("LOCK TABLES pheanq_task READ, pheanq_count WRITE, pheanq_count_change WRITE")
        try:
            op.execute("DELETE FROM pheanq_count_change")
            op.execute(count)
        finally:
            op.execute("UNLOCK TABLES")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for event in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS pheanq_count_{event}" + (" ON pheanq_task" if dialect == "postgresql"
                                                                       else ""))
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS pheanq_count_{event}()")
    op.drop_table("pheanq_count_change")
    op.drop_table("pheanq_count")


def _create_postgresql_triggers() -> None:
    for event, verb, transition, statement in _POSTGRESQL_TRIGGERS:
        op.execute(f"CREATE OR REPLACE FUNCTION pheanq_count_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {statement}; RETURN NULL; END $$")
        op.execute(f"CREATE TRIGGER pheanq_count_{event} AFTER {verb} ON pheanq_task {transition} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION pheanq_count_{event}()")


def _create_row_triggers(sqlite: bool) -> None:
    for event, (timing, condition, rows) in _ROW_TRIGGERS.items():
        statement = f"INSERT INTO pheanq_count_change (tube, status, n) VALUES {', '.join(rows)}"
        if sqlite:
            body = ("" if condition is None else f"WHEN {condition} ") + f"BEGIN {statement}; END"
        else:  # MariaDB/MySQL: a trigger's body is one statement, a condition an IF in it
            body = statement if condition is None else f"BEGIN IF {condition} THEN {statement}; END IF; END"
        op.execute(f"CREATE TRIGGER pheanq_count_{event} {timing} ON pheanq_task FOR EACH ROW {body}")
