"""Counts of tasks per tube and status, kept by the database itself, so that `pheanq status` reads a few rows
instead of counting the whole table (seconds on 10 million rows).

Every insert, delete and change of status or tube of a `pheanq_task` row adds rows to `pheanq_count_change`
(+1 for the new tube and status, -1 for the old), in the same transaction, by triggers: no code path can forget
it, and no counter row is updated in place, so concurrent transactions never wait on one another for it. A
fold (pheanq.storage.counts) moves those changes into `pheanq_count` from time to time; the count of a tube and
status is its `pheanq_count` row plus its changes not folded yet, read in one statement.

The triggers are row triggers on every database; on PostgreSQL the update's fires its function only when the
status or the tube changed (its WHEN clause), so writing a job id or a heartbeat costs nothing. (Statement
triggers over PostgreSQL's transition tables were tried: every UPDATE paid for them, and scripts/bench's end to end
on PostgreSQL went from 0.43x of its floor without triggers to 0.33x; with row triggers, 0.40x.)

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
    _create_row_triggers(dialect)
    if dialect in ("postgresql", "sqlite"):
        op.execute(count)
    else:
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


def _create_row_triggers(dialect: str) -> None:
    for event, (timing, condition, rows) in _ROW_TRIGGERS.items():
        statement = f"INSERT INTO pheanq_count_change (tube, status, n) VALUES {', '.join(rows)}"
        if dialect == "postgresql":
            op.execute(f"CREATE OR REPLACE FUNCTION pheanq_count_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                       f"BEGIN {statement}; RETURN NULL; END $$")
            when = "" if condition is None else f"WHEN ({condition}) "
            op.execute(f"CREATE TRIGGER pheanq_count_{event} {timing} ON pheanq_task FOR EACH ROW {when}"
                       f"EXECUTE FUNCTION pheanq_count_{event}()")
            continue
        if dialect == "sqlite":
            body = ("" if condition is None else f"WHEN {condition} ") + f"BEGIN {statement}; END"
        else:  # MariaDB/MySQL: a trigger's body is one statement, a condition an IF in it
            body = statement if condition is None else f"BEGIN IF {condition} THEN {statement}; END IF; END"
        op.execute(f"CREATE TRIGGER pheanq_count_{event} {timing} ON pheanq_task FOR EACH ROW {body}")
