"""Several beanstalkd servers: pheanq_beanstalkd numbers them, so a task's job id says which server holds its job.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    op.create_table(
        "pheanq_beanstalkd",
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("address", sa.String(255), nullable=False, unique=True),
        sa.Column("added", timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pheanq_beanstalkd")
