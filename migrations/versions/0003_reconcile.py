"""Leases and reconciliation: a heartbeat on each task, a lock table, and why each buried job was buried.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen as this revision created them; later revisions change the tables, never this file.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("pheanq_task", sa.Column("heartbeat", _Timestamp, nullable=True))
    op.create_table(
        "pheanq_lock",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires", _Timestamp, nullable=False),
    )
    op.create_table(
        "pheanq_buried",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("beanstalkd", sa.String(255), nullable=False),
        sa.Column("tube", sa.String(200), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("buried", _Timestamp, nullable=False),
    )
    op.create_index("ix_pheanq_buried_tube_job", "pheanq_buried", ["beanstalkd", "tube", "job_id"])


def downgrade() -> None:
    op.drop_table("pheanq_buried")
    op.drop_table("pheanq_lock")
    op.drop_column("pheanq_task", "heartbeat")
