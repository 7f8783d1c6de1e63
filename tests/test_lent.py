"""pheanq's statements on a connection an application lends it (pheanq.storage.lent): they run in the
application's transaction, which only the application ends. A real DBAPI connection of each database, opened
apart from pheanq's own; pheanq's own connection is the one that looks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pheanq.storage import Store
from pheanq.storage.engine import create_engine
from pheanq.storage.tasks import NewTask


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


@pytest.fixture
def application_connection(db_url: str) -> Iterator[Any]:
    """A DBAPI connection of the application's own, outside any SQLAlchemy connection."""
    engine = create_engine(db_url)
    pooled = engine.raw_connection()
    yield pooled.driver_connection
    pooled.close()
    engine.dispose()


def in_transaction(dbapi_connection: Any) -> bool | None:
    """Whether the connection is in a transaction, where its driver says (None where it does not)."""
    if hasattr(dbapi_connection, "in_transaction"):  # sqlite3
        return bool(dbapi_connection.in_transaction)
    if hasattr(dbapi_connection, "info"):  # psycopg
        import psycopg

        return bool(dbapi_connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS)
    return None


def test_a_task_inserted_on_a_lent_connection_is_the_application_s_to_commit_or_roll_back(
    store: Store, application_connection: Any,
) -> None:
    for ending, unique_key in (("rollback", None), ("commit", "invoice-42")):
        with store.database.lent(application_connection) as conn:
            inserted = store.tasks.insert_task(NewTask("work", "{}", "pheanq", 5, 60, unique_key=unique_key),
                                               conn=conn)
        # SQLAlchemy closed its Connection: the application's transaction is still open, and still its own.
        assert in_transaction(application_connection) in (True, None)
        assert store.tasks.find_task(inserted.task_id) is None
        getattr(application_connection, ending)()
        found = store.tasks.find_task(inserted.task_id)
        assert (found is not None) == (ending == "commit")
    assert found is not None and found.unique_key == "invoice-42"


def test_pheanq_never_commits_a_lent_connection(store: Store, application_connection: Any) -> None:
    with pytest.raises(RuntimeError, match="commit"), store.database.lent(application_connection) as conn:
        inserted = store.tasks.insert_task(NewTask("work", "{}", "pheanq", 5, 60), conn=conn)
        conn.commit()
    application_connection.rollback()
    assert store.tasks.find_task(inserted.task_id) is None


def test_a_lent_sqlite_connection_keeps_its_own_functions(sqlite_url: str) -> None:
    """SQLAlchemy's pysqlite dialect defines REGEXP on each connection it opens, as Django does: on a lent one,
    the application's stays."""
    store = Store(sqlite_url)
    engine = create_engine(sqlite_url)
    pooled = engine.raw_connection()
    try:
        connection = pooled.driver_connection
        assert connection is not None
        connection.create_function("regexp", 2, lambda pattern, text: 42)
        with store.database.lent(connection) as conn:
            store.tasks.insert_task(NewTask("work", "{}", "pheanq", 5, 60), conn=conn)
        assert connection.execute("SELECT 'a' REGEXP 'b'").fetchone() == (42,)
        connection.rollback()
    finally:
        pooled.close()
        engine.dispose()
        store.close()
