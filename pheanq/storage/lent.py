"""pheanq's statements on a database connection an application lends it (Django's, for one), inside the
application's own transaction.

The application owns that connection and its transaction: SQLAlchemy must only run statements on it. Three
things in SQLAlchemy would otherwise touch it, and each is ruled out here:

- an engine made by `create_engine` prepares every new connection (pysqlite replaces the connection's
  REGEXP function, which Django defines too; psycopg adds a notice handler at each connect) and runs its
  first-connect queries followed by a rollback. The lending engine is built from a pool and the dialect of
  pheanq's own engine, already prepared on a connection of pheanq's own, and registers no such hook;
- its pool resets a connection it takes back with a rollback, and a NullPool closes it: the pool is built
  with `reset_on_return=None`, and the connection it is given is `_LentConnection`, whose `close()` does
  nothing;
- a SQLAlchemy `Connection` begins a transaction of its own bookkeeping when it first runs a statement
  (no BEGIN reaches the database: the DBAPI dialects' `do_begin` does nothing) and ends it, when closed,
  with the DBAPI `rollback()`: `_LentConnection.rollback()` does nothing. pheanq never commits a
  connection it was given; `_LentConnection.commit()` raises, so that no change could ever make it do so
  quietly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from pheanq.errors import InvalidInput


class _LentConnection:
    """A DBAPI connection as pheanq may use it while lent: statements yes; commit, rollback, close no."""

    def __init__(self, dbapi_connection: Any) -> None:
        self._dbapi_connection = dbapi_connection

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._dbapi_connection.cursor(*args, **kwargs)

    def commit(self) -> None:
        raise RuntimeError("pheanq tried to commit a database connection its application lent it")

    def rollback(self) -> None:
        """SQLAlchemy ending its bookkeeping transaction: the application's transaction is not pheanq's to end."""

    def close(self) -> None:
        """The pool giving the connection back: it stays open, its owner's."""

    def __getattr__(self, name: str) -> Any:
        # What a dialect reads to describe the connection (psycopg's `closed` and `broken` after an error).
        return getattr(self._dbapi_connection, name)


class LendingEngine:
    """SQLAlchemy Connections over lent DBAPI connections, with the dialect of pheanq's own `engine`."""

    def __init__(self, engine: Engine) -> None:
        self._lent = threading.local()
        dialect = engine.dialect
        pool = NullPool(self._current, reset_on_return=None, dialect=dialect)
        self._engine = Engine(pool, dialect, engine.url)

    def _current(self) -> _LentConnection:
        lent: _LentConnection | None = getattr(self._lent, "connection", None)
        if lent is None:
            raise RuntimeError("a lent connection is used only inside LendingEngine.connection()")
        return lent

    @contextmanager
    def connection(self, dbapi_connection: Any) -> Iterator[Connection]:
        """A Connection whose statements run on `dbapi_connection`, in whatever transaction it is in."""
        driver = self._engine.dialect.loaded_dbapi.__name__.partition(".")[0]
        given = type(dbapi_connection).__module__.partition(".")[0]
        if given != driver:
            raise InvalidInput(f"the application's database connection is a {given} connection; pheanq's "
                               f"database_url uses the driver {driver}: both must use the same driver")
        self._lent.connection = _LentConnection(dbapi_connection)
        try:
            with self._engine.connect() as conn:
                yield conn
        finally:
            self._lent.connection = None

    def close(self) -> None:
        self._engine.dispose()
