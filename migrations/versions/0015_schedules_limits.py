"""Recurring schedules and cluster-wide limits.

`pheanq_schedule` keeps, per schedule, the time up to which every slot has been decided (`decided_until`), and
`pheanq_schedule_run` one row per slot that was decided: the slot's primary key is what makes a slot queue its task
exactly once however many schedulers race for it (the row is inserted in the transaction that inserts the task).
`pheanq_limit_slot` holds the places of the concurrency and rate limits: a task takes one by compare-and-set in
the transaction of its claim. A task's row gains the slot it was queued for (`scheduled_for`) and the key its
key limits are counted by (`limit_key`), with an index of the unended tasks per key (partial on PostgreSQL and
SQLite: a task without a key costs it nothing).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
HAS_LIMIT_KEY = "limit_key IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "pheanq_schedule",
        sa.Column("name", sa.String(191), primary_key=True),
        sa.Column("decided_until", _Timestamp, nullable=False),
        sa.Column("modified", _Timestamp, nullable=False),
    )
    op.create_table(
        "pheanq_schedule_run",
        sa.Column("schedule", sa.String(191), primary_key=True),
        sa.Column("slot", _Timestamp, primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("created", _Timestamp, nullable=False),
    )
    op.create_table(
        "pheanq_limit_slot",
        sa.Column("scope", sa.String(300), primary_key=True),
        sa.Column("kind", sa.String(12), primary_key=True),
        sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("taken", _Timestamp, nullable=True),
    )
    # Plain ADD COLUMN (no batch copy on SQLite): a copy of pheanq_task would drop its count triggers.
    op.add_column("pheanq_task", sa.Column("scheduled_for", _Timestamp, nullable=True))
    op.add_column("pheanq_task", sa.Column("limit_key", sa.String(191), nullable=True))
    op.create_index("ix_pheanq_task_limit_key", "pheanq_task", ["limit_key", "status"],
                    postgresql_where=sa.text(HAS_LIMIT_KEY), sqlite_where=sa.text(HAS_LIMIT_KEY))


def downgrade() -> None:
    op.drop_index("ix_pheanq_task_limit_key", "pheanq_task")
    with op.batch_alter_table("pheanq_task", recreate="never") as batch:
        batch.drop_column("limit_key")
        batch.drop_column("scheduled_for")
    op.drop_table("pheanq_limit_slot")
    op.drop_table("pheanq_schedule_run")
    op.drop_table("pheanq_schedule")
