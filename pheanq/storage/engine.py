"""One database: its engine, with the driver and settings pheanq wants for each backend, and transactions
whose driver errors become pheanq errors (an outage told apart from a schema that was never upgraded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InternalError, NoSuchModuleError, OperationalError, ProgrammingError

from pheanq.config import mask_url
from pheanq.errors import ConfigError, SchemaMissing, StoreUnavailable
from pheanq.storage.lent import LendingEngine
from pheanq.storage.pings import check_connections_cheaply
from pheanq.storage.tables import metadata, task_table

# No wait on a database server is unbounded: a half-open connection (a server gone mid-answer, a cut
# network) must fail, not hang a worker. pheanq's statements are short, so 30 s is far beyond any of them.
_BOUNDED_WAITS: dict[str, dict[str, Any]] = {
    "postgresql": {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                   "keepalives_count": 3, "tcp_user_timeout": 30_000},
    "mysql": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
    "mariadb": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
}
# A write refused because the server is read-only: a replica, or a primary a failover demoted. PostgreSQL's SQLSTATE;
# MySQL's and MariaDB's error numbers (--read-only, a read-only transaction, super_read_only).
_READ_ONLY_SQLSTATE = "25006"
_READ_ONLY_ERRNOS = {1290, 1792, 1836}


class Database:
    """The database behind a URL: `transaction()` is the only way pheanq's statements reach it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._lending: LendingEngine | None = None

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def close(self) -> None:
        if self._lending is not None:
            self._lending.close()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, ProgrammingError, InternalError) as error:
            if _read_only(error):
                # Until the URL reaches a primary again (a failover moved it): waited out as an outage, on new
                # connections (a pooled one stays with the server, and the session, that refused).
                self.engine.dispose()
                raise StoreUnavailable(f"database {self.safe_url} is read-only (a replica, or a primary that a "
                                       "failover demoted): the write is tried again later") from error
            if isinstance(error, InternalError):
                raise
            raise self._explain(error) from error

    @contextmanager
    def lent(self, dbapi_connection: Any) -> Iterator[Connection]:
        """A Connection over a DBAPI connection the application lends (see pheanq.storage.lent): statements
        run in the application's transaction, which pheanq neither begins, commits, rolls back nor closes."""
        if self._lending is None:
            with self.transaction():
                pass  # a first connection of pheanq's own prepares the dialect that lent connections share
            self._lending = LendingEngine(self.engine)
        try:
            with self._lending.connection(dbapi_connection) as conn:
                yield conn
        except (OperationalError, ProgrammingError) as error:
            raise self._explain(error) from error

    def check_schema(self) -> None:
        """Raise SchemaMissing when the database was never upgraded (StoreUnavailable when it is down)."""
        with self.transaction() as conn:
            conn.execute(sa.select(task_table.c.id).limit(1)).all()

    def _explain(self, error: DBAPIError) -> Exception:
        """Tell an outage, or a database not upgraded to this version's schema, from a real SQL error."""
        try:
            with self.engine.connect() as conn:
                inspector = sa.inspect(conn)
                tables = [name for name in metadata.tables if not inspector.has_table(name)]
                missing = [f"the table {name}" for name in tables]
                for name, table in metadata.tables.items():
                    if name not in tables:
                        present = {column["name"] for column in inspector.get_columns(name)}
                        missing += [f"the column {name}.{column.name}" for column in table.columns
                                    if column.name not in present]
        except DBAPIError as probe:
            reason = str(getattr(probe, "orig", probe)).strip().splitlines()[0]
            return StoreUnavailable(f"database {self.safe_url} is unreachable: {reason}")
        if not missing:
            if isinstance(error, OperationalError):
                # The server answered the probe, but the statement failed on the server's state: starting up,
                # shutting down, a lock or deadlock. Another try later is the answer, as for an outage.
                reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
                return StoreUnavailable(f"database {self.safe_url} is unavailable: {reason}")
            return error
        return SchemaMissing(self.safe_url, None if len(tables) == len(metadata.tables) else missing)


def _read_only(error: DBAPIError) -> bool:
    original = getattr(error, "orig", None)
    if getattr(original, "sqlstate", None) == _READ_ONLY_SQLSTATE:
        return True
    args: tuple[Any, ...] = getattr(original, "args", ())
    return bool(args) and args[0] in _READ_ONLY_ERRNOS


def create_engine(url: str) -> Engine:
    """An engine with the driver and settings pheanq wants for each backend."""
    parsed = _with_driver(make_url(url))
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _tune_sqlite)
            return engine
        parsed, connect_args = _prepare_threshold(parsed, dict(_BOUNDED_WAITS.get(backend, {})))
        engine = sa.create_engine(parsed, connect_args=connect_args)
        check_connections_cheaply(engine)
        return engine
    except (NoSuchModuleError, ImportError) as error:
        raise ConfigError(f"database_url: {mask_url(url)}: the driver {parsed.drivername!r} is not available "
                          f"({error})") from None


def same(column: Any, value: Any) -> Any:
    """`column = value` that also matches NULL to None."""
    return column.is_(None) if value is None else column == value


def any_of(column: Any, values: Iterable[Any]) -> Any:
    """`column IN (...)` of values fixed when the statement is built, with a bound parameter each: a plain list
    becomes one "expanding" parameter, which SQLAlchemy renders into the SQL anew at every execution (about
    10 us a statement, on the hot path)."""
    return column.in_([sa.literal(value, column.type) for value in values])


def _prepare_threshold(url: URL, connect_args: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """psycopg's `prepare_threshold` from the URL's query as a number, or None for `none` (never prepare: for a
    pgbouncer in transaction mode older than 1.21); a URL's query would give it as text, which psycopg fails on."""
    text = url.query.get("prepare_threshold")
    if text is None or url.get_backend_name() != "postgresql":
        return url, connect_args
    value = text if isinstance(text, str) else text[-1]
    if value.strip().lower() in ("none", "off", ""):
        connect_args["prepare_threshold"] = None
    elif value.strip().isdigit():
        connect_args["prepare_threshold"] = int(value)
    else:
        raise ConfigError(f"database_url: prepare_threshold={value!r} is not a whole number or none")
    return url.difference_update_query(["prepare_threshold"]), connect_args


def _with_driver(url: URL) -> URL:
    """Plain postgresql:// and mysql:// URLs use the drivers pheanq installs as extras."""
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("mysql", "mariadb"):
        return url.set(drivername=f"{url.drivername}+pymysql")
    return url


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
