"""Retries: how many attempts a task gets, how long it waits between them, and which failures are final.

A failed attempt with attempts left moves the task to `retrying`; its `run_at` is set to the end of the
backoff delay and its job is released with that delay, so the schedule machinery (claims that come early,
the reconciler's re-puts) carries the wait. The policy is stored on the row as JSON.

A regenerate gives the task a fresh allowance: its policy counts again from the next attempt, and the row's
JSON notes how many attempts came before (`counted_after`). Attempt numbers keep counting every claim, so
after a regenerate of a task of 2 attempts that used both, the log says `attempt 3 of 4`, then `4 of 4`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pheanq import tasklog
from pheanq.errors import InvalidInput
from pheanq.limits import MAX_ATTEMPTS, MAX_SECONDS, check_whole_number

BACKOFFS = ("fixed", "exponential")
# The key of the row's retry JSON that says how many attempts came before the current allowance.
COUNTED_AFTER = "counted_after"
# The row's retry column holds 500 characters; a regenerate adds `counted_after` to the JSON.
MAX_POLICY_JSON = 450


@dataclasses.dataclass(frozen=True)
class Retry:
    """`max_attempts` runs at most; before attempt n+1 the task waits `delay` seconds (fixed) or
    `delay * 2**(n-1)` (exponential) capped at `cap`; with `jitter`, a random part of the upper half of
    that wait is dropped so that tasks failing together do not retry together. An exit code in
    `non_retryable` fails the task at once, and so does an exception (of a Python task) that is an instance
    of a class in `non_retryable_errors`: classes, or their names as `module.QualName` text."""

    max_attempts: int = 1
    backoff: Literal["fixed", "exponential"] = "exponential"
    delay: int = 10
    cap: int = 3600
    jitter: bool = True
    non_retryable: frozenset[int] = frozenset()
    # Exception classes or their `module.QualName`s; kept as a frozenset of the names.
    non_retryable_errors: Iterable[type[BaseException] | str] = frozenset()

    def __post_init__(self) -> None:
        check_whole_number("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS)
        if self.backoff not in BACKOFFS:
            raise InvalidInput(f"backoff must be one of {', '.join(BACKOFFS)}, not {self.backoff!r}")
        check_whole_number("retry delay", self.delay, 0, MAX_SECONDS)
        check_whole_number("retry cap", self.cap, 0, MAX_SECONDS)
        if not isinstance(self.jitter, bool):
            raise InvalidInput(f"jitter must be true or false, not {self.jitter!r}")
        if isinstance(self.non_retryable, (str, bytes)) or not isinstance(self.non_retryable, Iterable):
            raise InvalidInput(f"non_retryable must be a set of exit codes, not {self.non_retryable!r}")
        codes = frozenset(self.non_retryable)
        for code in codes:
            check_whole_number("a non-retryable exit code", code, 1, 255)
        object.__setattr__(self, "non_retryable", codes)
        object.__setattr__(self, "non_retryable_errors", frozenset(error_names(self.non_retryable_errors)))
        if self.error_names and len(json.dumps(self._values(), sort_keys=True)) > MAX_POLICY_JSON:
            raise InvalidInput(f"the retry policy is more than {MAX_POLICY_JSON} characters as JSON: name fewer "
                               "non-retryable errors")

    def retries_after(self, attempt: int, exit_code: int | None, errors: Iterable[str] = ()) -> bool:
        """Whether attempt number `attempt`, which failed with `exit_code` (and, for a Python task, an exception
        whose classes, its own and those it derives from, are named in `errors`), is followed by another."""
        return attempt < self.max_attempts and exit_code not in self.non_retryable \
            and self.error_names.isdisjoint(errors)

    @property
    def error_names(self) -> frozenset[str]:
        """The names of the exception classes that are not retried."""
        return frozenset(str(name) for name in self.non_retryable_errors)

    def delay_after(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> int:
        """Whole seconds to wait after failed attempt number `attempt` (1 for the first)."""
        growth = 1.0 if self.backoff == "fixed" else 2.0 ** min(attempt - 1, 62)
        wait = min(self.delay * growth, float(self.cap))
        if self.jitter:
            wait = uniform(wait / 2, wait)
        return math.ceil(wait)

    def to_json(self) -> str | None:
        """The row's `retry` column; None for the default of one attempt."""
        if self == Retry():
            return None
        return json.dumps(self._values(), sort_keys=True)

    def _values(self) -> dict[str, Any]:
        values: dict[str, Any] = dataclasses.asdict(self)
        values["non_retryable"] = sorted(self.non_retryable)
        values["non_retryable_errors"] = sorted(self.error_names)
        if not values["non_retryable_errors"]:
            del values["non_retryable_errors"]  # the JSON of every policy before Python tasks, unchanged
        return values

    @classmethod
    def from_json(cls, text: str | None) -> Retry:
        if not text:
            return cls()
        values = json.loads(text)
        values.pop(COUNTED_AFTER, None)
        values["non_retryable"] = frozenset(values.get("non_retryable", ()))
        values["non_retryable_errors"] = frozenset(values.get("non_retryable_errors", ()))
        return cls(**values)

    def describe(self) -> str:
        if self.max_attempts == 1:
            return "1 attempt"
        wait = f"{self.delay}s" if self.backoff == "fixed" else f"{self.delay}s doubling up to {self.cap}s"
        text = f"{self.max_attempts} attempts, {self.backoff} backoff {wait}{' with jitter' if self.jitter else ''}"
        if self.non_retryable:
            text += f"; exit codes {','.join(map(str, sorted(self.non_retryable)))} are not retried"
        if self.error_names:
            text += f"; {', '.join(sorted(self.error_names))} are not retried"
        return text


@dataclasses.dataclass(frozen=True)
class NextStep:
    """After a failed attempt: wait `wait` seconds and run again, or (wait None) fail; `note` ends its log."""

    wait: int | None
    note: str


def after_failure(policy_json: str | None, attempt: int, exit_code: int | None, seed: str | None = None,
                  errors: Iterable[str] = ()) -> NextStep:
    """What follows failed attempt number `attempt` (counted over the task's life) under the row's retry JSON;
    with a `seed`, the jitter is drawn from it, so the same seed always gives the same step. `errors`: the
    class names of a Python task's exception (see Retry.retries_after)."""
    policy, before = Retry.from_json(policy_json), counted_after(policy_json)
    in_allowance, last = attempt - before, before + policy.max_attempts
    errors = list(errors)
    if policy.retries_after(in_allowance, exit_code, errors):
        wait = policy.delay_after(in_allowance, random.Random(seed).uniform if seed is not None else random.uniform)
        return NextStep(wait, tasklog.retrying(wait, attempt + 1, last))
    if policy.max_attempts == 1:
        return NextStep(None, "")
    if in_allowance >= policy.max_attempts:
        why = "attempts used up"
    elif exit_code in policy.non_retryable:
        why = f"exit code {exit_code} is not retried"
    else:
        why = f"{errors[0] if errors else 'its exception'} is not retried"
    return NextStep(None, tasklog.not_retried(why, attempt, last))


def counted_after(policy_json: str | None) -> int:
    """How many attempts came before the task's current allowance: 0, or those made before its last regenerate."""
    return int(json.loads(policy_json).get(COUNTED_AFTER, 0)) if policy_json else 0


def regenerated(policy_json: str | None, attempts: int) -> str:
    """The retry JSON of a task regenerated after `attempts` attempts: its policy, counted from the next one."""
    values = json.loads(policy_json) if policy_json else {}
    values[COUNTED_AFTER] = attempts
    return json.dumps(values, sort_keys=True)


def allowed_attempts(policy_json: str | None) -> tuple[int, int]:
    """The first and the last attempt number the task's current allowance lets run."""
    before = counted_after(policy_json)
    return before + 1, before + Retry.from_json(policy_json).max_attempts


def describe_retry(policy_json: str | None) -> str:
    """The row's retry policy in words, with the attempts it still allows after a regenerate."""
    text = Retry.from_json(policy_json).describe()
    if counted_after(policy_json):
        first, last = allowed_attempts(policy_json)
        text += f"; regenerated: attempts {first} to {last}" if last > first else f"; regenerated: attempt {first}"
    return text


def error_names(errors: Iterable[type[BaseException] | str]) -> list[str]:
    """`module.QualName` of each exception class (a name given as text is checked and kept)."""
    if isinstance(errors, (str, bytes)) or not isinstance(errors, Iterable):
        raise InvalidInput(f"non_retryable_errors must be exception classes or their names, not {errors!r}")
    names = []
    for error in errors:
        if isinstance(error, type) and issubclass(error, BaseException):
            names.append(class_name(error))
        elif isinstance(error, str) and _CLASS_NAME.match(error):
            names.append(error)
        else:
            raise InvalidInput(f"non_retryable_errors: {error!r} is not an exception class or its module.Name")
    return names


def class_name(error: type[BaseException]) -> str:
    """How a retry policy names an exception class: `builtins.ValueError`, `myapp.errors.Permanent`."""
    return f"{error.__module__}.{error.__qualname__}"


_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


def parse_exit_codes(text: str) -> frozenset[int]:
    """`2,3` -> {2, 3}, for the CLI."""
    codes: set[int] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if not part.isdigit():
            raise InvalidInput(f"exit codes must be whole numbers separated by commas, not {text!r}")
        codes.add(int(part))
    return frozenset(codes)
