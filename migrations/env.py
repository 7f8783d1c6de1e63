"""alembic environment for pheanq's own tables; `pheanq db upgrade` drives it (see pheanq/storage/migrate.py)."""

from __future__ import annotations

from alembic import context

from pheanq.storage.migrate import VERSION_TABLE
from pheanq.storage.tables import metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
