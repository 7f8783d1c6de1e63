"""Schema upgrades through alembic, from the migrations shipped inside the installed package."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pheanq.storage import Store

# pheanq keeps its own version table, so an application's alembic history is never touched.
VERSION_TABLE = "pheanq_alembic_version"


def upgrade_database(store: Store) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (revision before, revision after)."""
    config = _alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    with store.database.transaction() as connection:
        before = current_revision_of(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head


def current_revision(store: Store) -> str | None:
    with store.database.transaction() as connection:
        return current_revision_of(connection)


def current_revision_of(connection: object) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})  # type: ignore[arg-type]
    return context.get_current_revision()


def _alembic_config() -> Config:
    config = Config()
    # The migrations are installed as the package pheanq.migrations (from migrations/ in the source tree).
    migrations = importlib.import_module("pheanq.migrations")
    config.set_main_option("script_location", str(Path(str(migrations.__file__)).parent))
    return config
