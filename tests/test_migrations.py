"""The migrations make exactly the schema pheanq.storage.tables.metadata describes on every database, go down and up
again cleanly, and `pheanq db upgrade` finds them in a normal (non-editable) install of the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pheanq.storage import Store
from pheanq.storage.migrate import VERSION_TABLE, _alembic_config, current_revision, upgrade_database
from pheanq.storage.tables import metadata
from pheanq.storage.tasks import NewTask

ROOT = Path(__file__).resolve().parents[1]


def schema_differences(store: Store) -> list[Any]:
    """What alembic's autogenerate would change to make the database match pheanq's metadata."""

    def ours(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or (name or "").startswith("pheanq_")

    with store.database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": VERSION_TABLE, "compare_type": True, "compare_server_default": True,
            "include_name": ours,
        })
        return list(compare_metadata(context, metadata))


def test_the_migrated_schema_is_exactly_the_stores_metadata(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert schema_differences(store) == []
        inspector = sa.inspect(store.database.engine)
        assert {index["name"] for index in inspector.get_indexes("pheanq_task")} == {
            "ix_pheanq_task_tube_status", "ix_pheanq_task_status_finished", "uq_pheanq_task_unique_live",
            "ix_pheanq_task_batch_status", "ix_pheanq_task_pending", "ix_pheanq_task_batch_id",
                "ix_pheanq_task_limit_key"}
    finally:
        store.close()


def test_downgrade_to_nothing_and_upgrade_again_round_trips(db_url: str) -> None:
    store = Store(db_url)
    try:
        head = current_revision(store)
        assert head is not None
        config = _alembic_config()
        with store.database.transaction() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert not sa.inspect(store.database.engine).has_table("pheanq_task")
        assert current_revision(store) is None

        assert upgrade_database(store) == (None, head)
        assert schema_differences(store) == []
        task_id = store.tasks.insert_task(NewTask("cmd", "{}", "pheanq", 1, 1)).task_id
        assert store.tasks.find_task(task_id) is not None
    finally:
        store.close()


def test_db_upgrade_works_from_a_wheel_installed_without_the_source_tree(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("pheanq-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import pheanq.migrations as m; print(m.__file__)"], env=env,
                           cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout

    database = elsewhere / "installed.db"
    upgraded = subprocess.run([sys.executable, "-m", "pheanq", "--database-url", f"sqlite:///{database}", "db",
                               "upgrade"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "upgraded from empty to revision" in upgraded.stdout
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert sa.inspect(engine).has_table("pheanq_task")
    finally:
        engine.dispose()
