"""Paused tubes: a flag every worker respects, kept across beanstalkd restarts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "pheanq_tube",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("paused_until", _Timestamp, nullable=False),
        sa.Column("paused_by", sa.String(255), nullable=False),
        sa.Column("paused_at", _Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pheanq_tube")
