"""alembic environment for pheanq's own tables; `pheanq db upgrade` drives it (see pheanq/migrate.py)."""

from __future__ import annotations

from alembic import context

from pheanq.store import metadata

# pheanq keeps its own version table, so an application's alembic history is never touched.
VERSION_TABLE = "pheanq_alembic_version"


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
