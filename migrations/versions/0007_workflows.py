"""Workflows: retries, unique keys, dependencies and batches.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("pheanq_task") as task:
        task.add_column(sa.Column("retry", sa.String(500), nullable=True))
        task.add_column(sa.Column("unique_key", sa.String(191), nullable=True))
        task.add_column(sa.Column("unique_live", sa.String(191), nullable=True))
        task.add_column(sa.Column("waiting_for", sa.Integer(), nullable=False, server_default="0"))
        task.add_column(sa.Column("batch_id", sa.BigInteger(), nullable=True))
        task.add_column(sa.Column("callback_of", sa.BigInteger(), nullable=True))
        task.create_index("uq_pheanq_task_unique_live", ["unique_live"], unique=True)
        task.create_index("ix_pheanq_task_batch_status", ["batch_id", "status"])
    op.create_table(
        "pheanq_dependency",
        sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("parent_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("satisfied", sa.Boolean(), nullable=False),
        sa.Index("ix_pheanq_dependency_parent", "parent_id"),
    )
    op.create_table(
        "pheanq_batch",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("unfinished", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created", _Timestamp, nullable=False),
        sa.Column("closed", _Timestamp, nullable=True),
        sa.Column("finished", _Timestamp, nullable=True),
        sa.Column("cancelled_by", sa.String(255), nullable=True),
        sa.Column("then_task", sa.Text(), nullable=True),
        sa.Column("catch_task", sa.Text(), nullable=True),
        sa.Column("finally_task", sa.Text(), nullable=True),
        sa.Column("then_id", sa.BigInteger(), nullable=True),
        sa.Column("catch_id", sa.BigInteger(), nullable=True),
        sa.Column("finally_id", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("pheanq_batch")
    op.drop_table("pheanq_dependency")
    with op.batch_alter_table("pheanq_task") as task:
        task.drop_index("ix_pheanq_task_batch_status")
        task.drop_index("uq_pheanq_task_unique_live")
        for column in ("callback_of", "batch_id", "waiting_for", "unique_live", "unique_key", "retry"):
            task.drop_column(column)
