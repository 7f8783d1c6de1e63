"""The dashboard's audit (who did what, when) and each worker's resident memory as its tender last measured it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "pheanq_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", _Timestamp, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("outcome", sa.String(1000), nullable=False),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("pheanq_worker") as batch:
        batch.add_column(sa.Column("memory_mb", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pheanq_worker") as batch:
        batch.drop_column("memory_mb")
    op.drop_table("pheanq_audit")
