"""Pooled server connections checked before use without a round trip each time.

A connection taken from the pool may have died while it waited there: the server restarted, or closed it as
idle. SQLAlchemy's `pool_pre_ping` asks the server on every checkout, which is one round trip more per
transaction, and on the hot path pheanq's transactions are one statement and a commit. Here a connection
that has waited in the pool for less than PING_AFTER_IDLE seconds is checked by looking at its socket
instead: a connection with nothing asked of it has nothing to read, so a readable socket means the server
closed it or told it why it is about to (PostgreSQL and MariaDB both do, on shutdown and on a killed
session). Only a connection idle for longer, which a cut network or a server gone without a word may have
killed silently, gets the round trip. A connection found dead is replaced before the transaction begins.
"""

from __future__ import annotations

import select
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Within a second of its last use, a connection whose socket says nothing is taken as alive: a silent
# death in that second (a cut cable) costs the transaction that meets it a StoreUnavailable, which every
# caller already handles as a database outage.
PING_AFTER_IDLE = 1.0

_CHECKED_IN = "pheanq_checked_in"


def check_connections_cheaply(engine: Engine) -> None:
    """Install the checks on `engine`'s pool (made with pool_pre_ping off)."""
    sa.event.listen(engine, "checkin", _note_checkin)
    sa.event.listen(engine, "checkout", _check_on_checkout)


def socket_of(dbapi_connection: Any) -> int | None:
    """The file descriptor of a psycopg or PyMySQL connection's socket, None when it cannot be found."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg
    if fileno is None:
        sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL keeps its socket there
        fileno = getattr(sock, "fileno", None)
    try:
        number = fileno() if callable(fileno) else None
    except (OSError, ValueError):
        return None
    return number if isinstance(number, int) and number >= 0 else None


def said_something(fd: int) -> bool:
    """Whether an idle connection's socket has something to read (an error, a notice of shutdown, or EOF)."""
    try:
        readable, _, failed = select.select([fd], [], [fd], 0)
    except (OSError, ValueError):
        return True
    return bool(readable or failed)


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_CHECKED_IN] = time.monotonic()


def _check_on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    checked_in = record.info.pop(_CHECKED_IN, None)
    fd = socket_of(dbapi_connection)
    if checked_in is None or fd is None or time.monotonic() - checked_in > PING_AFTER_IDLE:
        if checked_in is not None or fd is None:
            _ping(dbapi_connection)
        return  # a connection the pool has just made needs no check
    if said_something(fd):
        raise sa.exc.DisconnectionError("the server closed the pooled connection")


def _ping(dbapi_connection: Any) -> None:
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()
    except Exception as error:  # whatever the driver raises for a dead connection: replace it
        raise sa.exc.DisconnectionError(f"the pooled connection does not answer: {error}") from error
