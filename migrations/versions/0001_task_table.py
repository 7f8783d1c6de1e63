"""The task table: one row per task, its status, its job and its log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen as this revision created them; later revisions change the table, never this file.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "pheanq_task",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("command", sa.String(255), nullable=False),
        sa.Column("data", _LongText, nullable=False),
        sa.Column("tube", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("ttr", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("log", _LongText, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("created", _Timestamp, nullable=False),
        sa.Column("started", _Timestamp, nullable=True),
        sa.Column("finished", _Timestamp, nullable=True),
        sa.Column("modified", _Timestamp, nullable=False),
    )
    op.create_index("ix_pheanq_task_tube_status", "pheanq_task", ["tube", "status"])
    op.create_index("ix_pheanq_task_status_finished", "pheanq_task", ["status", "finished"])


def downgrade() -> None:
    op.drop_table("pheanq_task")
