"""When a task may run: `run_at`, kept so that every put of its job (a re-send too) carries the delay.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("pheanq_task", sa.Column("run_at", _Timestamp, nullable=True))


def downgrade() -> None:
    op.drop_column("pheanq_task", "run_at")
