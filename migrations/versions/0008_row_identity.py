"""A task row's identity: a nonce its jobs carry, and ids that SQLite never hands out twice; who asked to cancel
a running task.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite re-uses the highest id once its row is deleted unless the table is AUTOINCREMENT, which only a
    # table's CREATE can say: there each table is copied into a new one (its rows keep their ids, and the new
    # table's counter starts above them). PostgreSQL's sequences and InnoDB's counters never go back.
    sqlite = op.get_bind().dialect.name == "sqlite"
    recreate = "always" if sqlite else "auto"
    with op.batch_alter_table("pheanq_task", recreate=recreate, table_kwargs={"sqlite_autoincrement": True}) as task:
        task.add_column(sa.Column("nonce", sa.String(32), nullable=True))
        task.add_column(sa.Column("cancel_requested_by", sa.String(255), nullable=True))
    if sqlite:
        with op.batch_alter_table("pheanq_batch", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    with op.batch_alter_table("pheanq_task") as task:
        task.drop_column("cancel_requested_by")
        task.drop_column("nonce")
