"""The audit of the dashboard's actions: one row per action, written when it was taken, read newest first."""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from pheanq.storage.engine import Database
from pheanq.storage.tables import audit_table

# The longest target and outcome kept: the columns' width.
MAX_AUDIT_TEXT = 1000


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    actor: str
    role: str
    action: str
    target: str
    outcome: str


class AuditStatements:
    """Write and read pheanq_audit."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def record(self, at: dt.datetime, actor: str, role: str, action: str, target: str, outcome: str) -> None:
        with self.database.transaction() as conn:
            conn.execute(audit_table.insert().values(
                at=at, actor=actor[:255], role=role[:16], action=action[:64],
                target=_clipped(target), outcome=_clipped(outcome)))

    def recent(self, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        """At most `limit` entries, newest first, those with an id below `before_id` when given."""
        c = audit_table.c
        query = sa.select(audit_table).order_by(c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(c.id < before_id)
        with self.database.transaction() as conn:
            return [AuditEntry(**dict(row)) for row in conn.execute(query).mappings()]


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_AUDIT_TEXT else text[:MAX_AUDIT_TEXT - 1] + "…"
