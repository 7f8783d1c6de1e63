"""QueueOptions: the options of a queued task, typed once and checked once (pure unit tests; the service's own
tests queue with them against real databases)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from pheanq import InvalidInput, Retry
from pheanq.producer.options import DEFAULT_PRIORITY, DEFAULT_TTR, QueueKeywords, QueueOptions


def test_the_keywords_a_call_takes_are_exactly_the_options() -> None:
    # `given` records which of them a call named; it is not an option.
    assert set(QueueKeywords.__annotations__) == {field.name for field in dataclasses.fields(QueueOptions)} - {"given"}


def test_the_defaults() -> None:
    options = QueueOptions.of({})
    assert (options.priority, options.ttr, options.delay, options.after) == (DEFAULT_PRIORITY, DEFAULT_TTR, 0, ())
    assert options.runs_from(dt.datetime(2030, 1, 1)) is None


def test_after_is_kept_as_a_tuple_whatever_iterable_it_came_as() -> None:
    assert QueueOptions.of({"after": iter([3, 1])}).after == (3, 1)


def test_delay_and_run_at_give_the_time_from_which_the_task_may_run() -> None:
    now = dt.datetime(2030, 1, 1)
    assert QueueOptions.of({"delay": 60}).runs_from(now) == now + dt.timedelta(seconds=60)
    at = dt.datetime(2030, 1, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert QueueOptions.of({"run_at": at}).runs_from(now) == dt.datetime(2030, 1, 2)


@pytest.mark.parametrize(("keywords", "names"), [
    ({"priority": -1}, "priority"),
    ({"priority": 2**32}, "priority"),
    ({"delay": True}, "delay"),
    ({"ttr": 0}, "ttr"),
    ({"timeout": 2**31}, "timeout"),
    ({"retry": 3}, "retry"),
    ({"after": [0]}, "a task id to wait for"),
    ({"after": "12"}, "after"),
    ({"after": 12}, "after"),
    ({"batch": 0}, "batch"),
    ({"unique_key": ""}, "unique_key"),
    ({"unique_key": "k" * 192}, "unique_key"),
    ({"delay": 5, "run_at": dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)}, "delay or run_at"),
    ({"run_at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
    ({"priorty": 3}, "unknown option 'priorty'"),
])
def test_a_bad_option_is_refused_with_its_name(keywords: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidInput, match=names):
        QueueOptions.of(keywords)  # type: ignore[arg-type]  # wrong on purpose


def test_a_retry_policy_is_carried_as_it_is() -> None:
    policy = Retry(max_attempts=3)
    assert QueueOptions.of({"retry": policy}).retry is policy
