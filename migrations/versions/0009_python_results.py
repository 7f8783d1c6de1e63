"""A Python task's result (its return value as JSON) and the progress it reported.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("pheanq_task") as task:
        task.add_column(sa.Column("result", _LongText, nullable=True))
        task.add_column(sa.Column("progress", sa.String(600), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pheanq_task") as task:
        task.drop_column("progress")
        task.drop_column("result")
