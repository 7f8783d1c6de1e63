"""A per-task timeout: how long a task's command may run before its worker stops it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pheanq_task", sa.Column("timeout", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("pheanq_task", "timeout")
