"""Pooled connections on PostgreSQL and MariaDB are checked before use without a round trip when they were
used within the last second (pheanq.storage.pings): a connection the server killed meanwhile is replaced,
whichever check finds it, and a live one costs no statement."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from conftest import SERVER_URLS
from support import wait_for

from pheanq.storage import Store, pings
from pheanq.storage.engine import create_engine

SERVERS = [name for name, url in SERVER_URLS.items() if url]


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest, _upgraded_servers: dict[str, str]) -> str:
    return _upgraded_servers[request.param]


@pytest.fixture
def store(server_url: str) -> Iterator[Store]:
    opened = Store(server_url)
    yield opened
    opened.close()


def test_a_socket_with_nothing_to_read_is_taken_as_alive() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert not pings.said_something(ours.fileno())
        theirs.sendall(b"E")  # what a server sends unasked: an error, a notice of shutdown
        assert pings.said_something(ours.fileno())
    finally:
        ours.close()
        theirs.close()


def test_a_socket_closed_by_the_other_side_is_dead() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    try:
        assert pings.said_something(ours.fileno())
    finally:
        ours.close()


def test_a_connection_killed_by_the_server_is_replaced_without_a_ping(store: Store, server_url: str) -> None:
    first = _session_id(store)
    _kill(server_url, first)
    assert _session_id(store) != first  # no StoreUnavailable: the dead connection was found and replaced


def test_a_connection_idle_past_the_limit_is_pinged(store: Store, server_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pings, "PING_AFTER_IDLE", 0.0)  # every pooled connection counts as idle: the ping decides
    first = _session_id(store)
    _kill(server_url, first)
    assert _session_id(store) != first


@pytest.mark.parametrize("server", [name for name in SERVERS if name == "mysql"])  # MariaDB counts statements
def test_a_connection_used_within_the_second_costs_no_statement(server: str, monkeypatch: pytest.MonkeyPatch,
                                                                 _upgraded_servers: dict[str, str]) -> None:
    store = Store(_upgraded_servers[server])
    try:
        checked = _statements_between_two_transactions(store)
        monkeypatch.setattr(pings, "PING_AFTER_IDLE", 0.0)
        pinged = _statements_between_two_transactions(store)
    finally:
        store.close()
    assert pinged == checked + 1  # the ping's SELECT 1 is the only difference


def _statements_between_two_transactions(store: Store) -> int:
    counts = []
    for _ in range(2):
        with store.database.transaction() as conn:
            counts.append(int(conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Questions'")).one()[1]))
    return counts[1] - counts[0]


def _session_id(store: Store) -> int:
    with store.database.transaction() as conn:
        if conn.dialect.name == "postgresql":
            return int(conn.scalar(sa.text("SELECT pg_backend_pid()")))
        return int(conn.scalar(sa.text("SELECT CONNECTION_ID()")))


def _kill(url: str, session: int) -> None:
    """End a session from another connection, and wait until the server has let it go."""
    engine = create_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": session})
                alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :id")
            else:
                conn.exec_driver_sql(f"KILL {int(session)}")
                alive = sa.text("SELECT count(*) FROM information_schema.processlist WHERE id = :id")
            wait_for(lambda: conn.scalar(alive, {"id": session}) == 0, 10, f"session {session} to end")
    finally:
        engine.dispose()
