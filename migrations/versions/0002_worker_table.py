"""The pool table: what each worker-tender last reported of itself and its workers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen as this revision created them; later revisions change the table, never this file.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "pheanq_worker",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("tender_pid", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tubes", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("started", _Timestamp, nullable=False),
        sa.Column("heartbeat", _Timestamp, nullable=False),
    )
    op.create_index("ix_pheanq_worker_host_tender", "pheanq_worker", ["host", "tender_pid"])


def downgrade() -> None:
    op.drop_table("pheanq_worker")
