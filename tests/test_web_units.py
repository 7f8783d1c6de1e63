"""The dashboard's pure parts: sessions and CSRF tokens (pheanq.web.auth), the address it binds, a log split into
entries, percentiles, and the filter words the CLI and the dashboard share."""

from __future__ import annotations

import pytest

from pheanq.config import WebUser
from pheanq.errors import ConfigError, InvalidInput
from pheanq.ops.activity import percentile
from pheanq.ops.filters import parse_time, task_filter
from pheanq.status import Status
from pheanq.web.auth import SESSION_SECONDS, Gate, Visitor
from pheanq.web.pages import log_entries
from pheanq.web.server import bind_address, is_loopback

USERS = {"alice": WebUser("admin", "a" * 20), "rita": WebUser("read", "r" * 20)}


def test_a_session_cookie_names_its_user_until_it_expires_and_cannot_be_altered() -> None:
    gate = Gate(USERS)
    cookie = gate.session_cookie(Visitor("rita", "read"), now=1000.0)
    assert gate.by_session(cookie, now=1000.0 + SESSION_SECONDS - 1) == Visitor("rita", "read")
    assert gate.by_session(cookie, now=1000.0 + SESSION_SECONDS + 1) is None
    payload, _, signature = cookie.rpartition(".")
    forged = Gate(USERS).session_cookie(Visitor("rita", "admin"), now=1000.0)
    assert gate.by_session(forged.rpartition(".")[0] + "." + signature, now=1000.0) is None
    assert gate.by_session(payload + "." + "0" * 64, now=1000.0) is None
    assert gate.by_session("garbage", now=1000.0) is None


def test_changing_a_user_s_role_or_any_token_ends_the_sessions_signed_before() -> None:
    cookie = Gate(USERS).session_cookie(Visitor("rita", "read"), now=1000.0)
    assert Gate(dict(USERS)).by_session(cookie, now=1000.0) == Visitor("rita", "read")
    assert Gate({**USERS, "rita": WebUser("admin", "r" * 20)}).by_session(cookie, now=1000.0) is None
    assert Gate({**USERS, "alice": WebUser("admin", "b" * 20)}).by_session(cookie, now=1000.0) is None


def test_tokens_and_csrf() -> None:
    gate = Gate(USERS)
    assert gate.by_token("a" * 20) == Visitor("alice", "admin")
    assert gate.by_token("a" * 19) is None
    assert gate.by_bearer("Bearer " + "r" * 20) == Visitor("rita", "read")
    assert gate.by_bearer("Basic " + "r" * 20) is None
    token = gate.csrf_token("cookie-1")
    assert gate.csrf_holds("cookie-1", token)
    assert not gate.csrf_holds("cookie-2", token)
    assert not gate.csrf_holds(None, token) and not gate.csrf_holds("cookie-1", None)
    assert Gate({}).open and not gate.open


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:9", ("::1", 9)), ("localhost:80", ("localhost", 80))])
def test_bind_address(text: str, expected: tuple[str, int]) -> None:
    assert bind_address(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:0", "host:70000", "host:http"])
def test_a_bad_bind_address_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        bind_address(text)


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.1")
    assert not is_loopback("no-such-host.invalid")


def test_a_log_is_split_into_pheanq_s_entries_with_their_output() -> None:
    log = "--- attempt 1 on h:1: failed with exit code 3\noops\n| --- not an entry\n--- attempt 2 on h:1: done\n"
    assert log_entries(log) == [{"entry": "attempt 1 on h:1: failed with exit code 3", "output": "oops\n| --- not an "
                                 "entry\n"}, {"entry": "attempt 2 on h:1: done", "output": ""}]
    assert log_entries(None) == []


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([7.0], 95) == 7.0


def test_filter_words() -> None:
    where = task_filter(statuses=["failed,done", "failed"], tubes=["billing"], commands=["a, b"], batch="7",
                        created_after="2026-12-01T12:00:00+01:00", match="")
    assert where.statuses == (Status.FAILED, Status.DONE) and where.tubes == ("billing",)
    assert where.commands == ("a", "b") and where.batch_id == 7 and where.match is None
    assert where.created_after is not None and where.created_after.hour == 11
    for words, message in (({"statuses": ["lost"]}, "status: 'lost' is not a status"),
                           ({"tubes": ["-x"]}, "is not a beanstalkd tube name"),
                           ({"batch": "x"}, "batch: 'x' is not a task id"),
                           ({"finished_before": "yesterday"}, "finished_before: 'yesterday' is not a time"),
                           ({"match": "x" * 1001}, "match: give 1 to 1000 characters")):
        with pytest.raises(InvalidInput, match=message):
            task_filter(**words)
    assert parse_time("2h", "t") < parse_time("1h", "t")
