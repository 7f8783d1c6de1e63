"""Cluster-wide limits at the claim, against a real beanstalkd and real databases: a task over a concurrency or rate
limit is not claimed (its job waits in its tube, delayed) while other tasks are; a place comes back when its holder
ends or its lease goes stale; the rate window slides. The declarations themselves get plain unit tests.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytasks
import pytest
import sqlalchemy as sa
from support import Beanstalkd, claims, job_state, pheanq

from pheanq import InvalidInput, Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.config import load_settings
from pheanq.errors import ConfigError
from pheanq.producer.service import TaskQueueService
from pheanq.storage.limit_places import take_places
from pheanq.storage.tables import task_table
from pheanq.task_limits import (
    CONCURRENCY,
    LIMITED_WAIT_CAP,
    RATE,
    LimitSpec,
    Place,
    Rate,
    limited_wait,
    parse_limits,
    parse_rate,
)

MakeService = Callable[..., TaskQueueService]
LIMITS = {"commands": {"slow": {"concurrency": 2}, "burst": {"rate": "3/m"}}, "keys": {"tenant": {"concurrency": 1}}}
COMMANDS = {"slow": ["true"], "burst": ["true"], "free": ["true"]}


# --- the declarations -------------------------------------------------------------------------------------------

def test_rates_read_as_starts_per_period() -> None:
    assert parse_rate("10/m") == Rate(10, 60)
    assert parse_rate("100/s") == Rate(100, 1)
    assert parse_rate("5 / h") == Rate(5, 3600)
    assert parse_rate("3/30s") == Rate(3, 30)
    assert parse_rate("1000/d") == Rate(1000, 86400)
    assert str(Rate(10, 60)) == "10/m" and str(Rate(3, 30)) == "3/30s"
    for bad in ("10", "10/week", "0/m", "-1/m", "10/0s", 10, "1001/m"):
        with pytest.raises(InvalidInput, match="rate"):
            parse_rate(bad)


def test_a_bad_limits_table_is_one_error_naming_its_entry() -> None:
    cases = {
        "nope": "expected a table",
        "{'queues': {}}": "unknown table 'queues'",
        "{'commands': {'x': {'concurrency': 0}}}": "limits.commands.x: concurrency: 0 is not a whole number",
        "{'tubes': {'t': {'rate': 'fast'}}}": "limits.tubes.t: rate: 'fast' is not a rate",
        "{'keys': {'k': {'burst': 3}}}": "limits.keys.k: expected concurrency",
        "{'keys': {'k': {}}}": "limits.keys.k: expected concurrency",
    }
    for text, message in cases.items():
        value = eval(text) if text.startswith("{") else text
        with pytest.raises(ConfigError, match=message):
            parse_limits("limits", value)


def test_a_task_falls_under_its_commands_tubes_and_keys_limits_in_one_order() -> None:
    table = parse_limits("limits", {"commands": {"a": {"concurrency": 2, "rate": "5/m"}},
                                    "tubes": {"t": {"concurrency": 9}}, "keys": {"tenant": {"rate": "1/s"}}})
    assert table.places_for("a", "t", "tenant:42") == [
        Place("command:a", CONCURRENCY, 2), Place("command:a", RATE, 5, 60), Place("key:tenant:42", RATE, 1, 1),
        Place("tube:t", CONCURRENCY, 9)]
    assert table.places_for("b", "u", "other:1") == []
    assert table.places_for("b", "u", "tenant") == [Place("key:tenant", RATE, 1, 1)]
    # pheanq.toml wins over code for a command it names
    assert table.with_code({"a": LimitSpec(1), "b": LimitSpec(3)}).commands == {
        "a": LimitSpec(2, Rate(5, 60)), "b": LimitSpec(3)}
    assert load_settings({"limits": LIMITS}, environ={}).limits.commands["slow"] == LimitSpec(2)


def test_a_job_over_a_limit_waits_with_backoff_and_jitter() -> None:
    rng = random.Random(7)
    waits = [limited_wait(0, releases, rng) for releases in range(8)]
    assert waits[0] in (1, 2) and waits[2] in (4, 5)
    assert all(LIMITED_WAIT_CAP <= wait <= LIMITED_WAIT_CAP * 1.25 for wait in waits[4:])
    assert 40 <= limited_wait(39.2, 0, rng) <= 50  # a rate limit's known wait, not the backoff


def test_limit_keys_are_checked_when_queued(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    for bad in ("", "x" * 192, "tab\there", 42):
        with pytest.raises(InvalidInput, match="limit_key"):
            service.queue_task(TaskDescription("example-task-worker"), limit_key=bad)  # type: ignore[arg-type]


# --- the claim -------------------------------------------------------------------------------------------------

def test_a_concurrency_limit_holds_and_its_place_comes_back_when_a_holder_ends(
        db_url: str, make_service: MakeService, beanstalkd: Beanstalkd) -> None:
    service = make_service(db_url, commands=COMMANDS, limits=LIMITS)
    slow = [service.queue_task(TaskDescription("slow")) for _ in range(3)]
    free = service.queue_task(TaskDescription("free"), priority=2000)  # reserved after the slow ones
    worker = claims(service)
    first, second = worker.reserve_task("pheanq", 0), worker.reserve_task("pheanq", 0)
    assert first is not None and second is not None and {first.task_id, second.task_id} < set(slow)
    # The third slow task is over the limit: not claimed, its job delayed; the worker takes the free task instead.
    other = worker.reserve_task("pheanq", 0)
    assert other is not None and other.task_id == free
    third = (set(slow) - {first.task_id, second.task_id}).pop()
    assert service.status_of(third) is Status.NEW
    third_job = service.find_task(third).job_id
    assert third_job is not None and job_state(beanstalkd, third_job) == "delayed"
    # The first ends: its place is free again, with nothing released explicitly, and the waiting job is woken.
    assert worker.mark_done(first, None)
    worker.wake_waiting(first)
    assert job_state(beanstalkd, third_job) == "ready"
    package = worker.reserve_task("pheanq", 0)
    assert package is not None and package.task_id == third
    use = {(u.scope, u.kind): (u.in_use, u.waiting) for u in service.store.limit_places.usage(service.settings.limits,
                                                                                            utc_now())}
    assert use[("command:slow", CONCURRENCY)] == (2, 0) and use[("command:burst", RATE)] == (0, 0)


def test_a_stale_holders_place_is_taken(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url, commands=COMMANDS, limits=LIMITS)
    ids = [service.queue_task(TaskDescription("slow")) for _ in range(3)]
    worker = claims(service)
    first, second = worker.reserve_task("pheanq", 0), worker.reserve_task("pheanq", 0)
    assert first is not None and second is not None
    claim = service.store.claims.claim_task
    nonce = service.find_task(ids[2]).nonce
    assert claim(ids[2], nonce, 999, "w", ["pheanq"], ["slow"], service.settings.limits).outcome.value == "limited"
    with service.store.database.transaction() as conn:  # the first holder's worker died an hour ago
        conn.execute(task_table.update().where(task_table.c.id == first.task_id)
                     .values(heartbeat=utc_now() - dt.timedelta(hours=1)))
    assert claim(ids[2], nonce, 999, "w", ["pheanq"], ["slow"], service.settings.limits).outcome.value == "claimed"


def test_a_key_limit_counts_each_key_apart(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url, commands=COMMANDS, limits=LIMITS)
    a1, a2 = (service.queue_task(TaskDescription("free"), limit_key="tenant:a") for _ in range(2))
    b1 = service.queue_task(TaskDescription("free"), limit_key="tenant:b")
    claim = service.store.claims.claim_task
    limits = service.settings.limits
    nonce = {task_id: service.find_task(task_id).nonce for task_id in (a1, a2, b1)}
    assert claim(a1, nonce[a1], 1, "w", ["pheanq"], ["free"], limits).row.status is Status.WORKING  # type: ignore[union-attr]
    refused = claim(a2, nonce[a2], 2, "w", ["pheanq"], ["free"], limits)
    assert refused.outcome.value == "limited" and service.status_of(a2) is Status.NEW
    assert claim(b1, nonce[b1], 3, "w", ["pheanq"], ["free"], limits).row.status is Status.WORKING  # type: ignore[union-attr]
    use = {(u.scope, u.kind): (u.in_use, u.waiting) for u in service.store.limit_places.usage(limits, utc_now())}
    assert use[("key:tenant:a", CONCURRENCY)] == (1, 1) and use[("key:tenant:b", CONCURRENCY)] == (1, 0)


def test_a_rate_limits_window_slides_over_a_simulated_hour(db_url: str, make_service: MakeService) -> None:
    """Starts tried every 7 s for an hour against "3/m": in every window of 60 s at most 3 took a place, and a start
    was refused only while 3 had started in the 60 s before it (exactly, not per fixed minute)."""
    service = make_service(db_url)
    place = Place("command:x", RATE, 3, 60)
    service.store.limit_places.make_places([place])
    start = utc_now().replace(microsecond=0)
    starts: list[dt.datetime] = []
    for step in range(0, 3600, 7):
        now = start + dt.timedelta(seconds=step)
        with service.store.database.transaction() as conn:
            wait = take_places(conn, [place], step + 1, 1, now)
        recent = [moment for moment in starts if moment > now - dt.timedelta(seconds=60)]
        assert (wait is None) == (len(recent) < 3), (step, recent)
        if wait is None:
            starts.append(now)
        else:
            assert 0 <= wait <= 60 and recent[0] + dt.timedelta(seconds=60) - now == dt.timedelta(seconds=wait)
    assert all(sum(1 for s in starts if t <= s < t + dt.timedelta(seconds=60)) <= 3 for t in starts)
    assert len(starts) >= 3 * (3600 // 63)  # each place serves once per 63 s (60 s, then the next 7-s step)


def test_places_are_made_once_however_many_processes_race(db_url: str, make_service: MakeService) -> None:
    services = [make_service(db_url) for _ in range(3)]
    place = Place("tube:t", CONCURRENCY, 5)
    for service in services:
        service.store.limit_places.make_places([place])
    with services[0].store.database.transaction() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pheanq_limit_slot")).scalar_one() == 5


def test_status_shows_each_limit_with_its_use_including_those_declared_in_code(
        sqlite_url: str, make_env: Callable[..., dict[str, str]], make_service: MakeService, tmp_path: Path) -> None:
    (tmp_path / "pheanq.toml").write_text('[python]\nimports = ["pytasks"]\n[limits.commands.slow]\nconcurrency = 2\n'
                                          '[limits.keys.tenant]\nrate = "5/m"\n[commands]\nslow = ["true"]\n')
    service = make_service(sqlite_url)
    for _ in range(3):
        service.queue_task(TaskDescription("slow"))
    assert pytasks.limited_echo.describe("acme").queue_defaults["limit_key"] == "tenant:acme"
    service.queue_task(pytasks.limited_echo.describe("acme", text="hi"))
    env = make_env(sqlite_url, PYTHONPATH=str(Path(__file__).parent))
    text = pheanq(["status"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    assert "limit command:slow concurrency 2: 0 running, 3 waiting" in text.stdout
    assert "limit command:py:pytasks.limited_echo concurrency 1: 0 running, 1 waiting" in text.stdout
    assert "limit command:py:pytasks.limited_echo rate 2/s: 0 started in the period, 1 waiting" in text.stdout
    assert "limit key:tenant:acme rate 5/m: 0 started in the period, 1 waiting" in text.stdout
    shown = json.loads(pheanq(["status", "--json"], env, tmp_path).stdout)["limits"]
    assert {"scope": "command:slow", "kind": "concurrency", "limit": 2, "in_use": 0, "waiting": 3} in shown
