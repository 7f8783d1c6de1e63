"""The options of a queued task, typed and checked once.

Application code passes them as keywords — ``queue_task(desc, priority=0, delay=60)``, and the same to
`queue_chain`, `queue_many`, `Batch.add` and `Batch.add_many` — which `QueueKeywords` types for the
checker. Inside pheanq they travel as one `QueueOptions`, whose every value was checked when it was made:
a bad value fails in the application, before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pheanq.clock import utc_now
from pheanq.errors import InvalidInput
from pheanq.limits import (
    MAX_BEANSTALKD_SECONDS,
    MAX_PRIORITY,
    MAX_SECONDS,
    MAX_TASK_ID,
    MAX_UNIQUE_KEY,
    check_whole_number,
)
from pheanq.retry import Retry
from pheanq.run_at import run_at_of
from pheanq.task_limits import check_limit_key

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - exercised on 3.10 only
    from typing_extensions import Unpack

__all__ = ["DEFAULT_PRIORITY", "DEFAULT_TTR", "QueueKeywords", "QueueOptions", "Unpack"]

DEFAULT_PRIORITY = 1024
DEFAULT_TTR = 60


class QueueKeywords(TypedDict, total=False):
    """The keywords every queueing call takes (see QueueOptions for what each means)."""

    tube: str | None
    priority: int
    delay: int
    ttr: int
    timeout: int | None
    run_at: dt.datetime | None
    retry: Retry | None
    unique_key: str | None
    after: Iterable[int]
    batch: int | None
    limit_key: str | None


@dataclasses.dataclass(frozen=True)
class QueueOptions:
    """How a task is queued.

    `tube`: where its job goes (default: the description's own tube, then the `default_tube` setting).
    `priority`: beanstalkd's, 0 the most urgent. `ttr`: seconds a worker may hold the job between renewals.
    `timeout`: seconds the command may run; then its worker stops it and the attempt fails.
    `delay` (seconds) or `run_at` (a timezone-aware datetime): not to run before then.
    `retry`: how many attempts, and the backoff between them (see pheanq.retry).
    `unique_key`: while a task queued with this key has not ended, its id is returned instead.
    `after`: ids of tasks that must all be done first; the task is `waiting` until then.
    `batch`: the id of an open batch (see pheanq.producer.batch) the task joins.
    `limit_key`: the key its key limits count it under (e.g. "tenant:42"; see pheanq.task_limits).
    """

    tube: str | None = None
    priority: int = DEFAULT_PRIORITY
    delay: int = 0
    ttr: int = DEFAULT_TTR
    timeout: int | None = None
    run_at: dt.datetime | None = None
    retry: Retry | None = None
    unique_key: str | None = None
    after: tuple[int, ...] = ()
    batch: int | None = None
    limit_key: str | None = None
    # The options the call named, so that a task's own defaults (a `@task`'s) fill only the others.
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        check_whole_number("priority", self.priority, 0, MAX_PRIORITY)
        check_whole_number("delay", self.delay, 0, MAX_BEANSTALKD_SECONDS)
        check_whole_number("ttr", self.ttr, 1, MAX_BEANSTALKD_SECONDS)
        if self.timeout is not None:
            check_whole_number("timeout", self.timeout, 1, MAX_SECONDS)
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise InvalidInput(f"retry must be a pheanq.Retry, not {type(self.retry).__name__}")
        if isinstance(self.after, (str, bytes)):
            raise InvalidInput(f"after must be task ids, not {self.after!r}")
        try:
            after = tuple(self.after)
        except TypeError:
            raise InvalidInput(f"after must be task ids, not {self.after!r}") from None
        for parent in after:
            check_whole_number("a task id to wait for", parent, 1, MAX_TASK_ID)
        object.__setattr__(self, "after", after)
        if self.batch is not None:
            check_whole_number("batch", self.batch, 1, MAX_TASK_ID)
        if self.unique_key is not None and (not isinstance(self.unique_key, str)
                                            or not 0 < len(self.unique_key) <= MAX_UNIQUE_KEY):
            raise InvalidInput(f"unique_key must be a text of 1 to {MAX_UNIQUE_KEY} characters, "
                               f"not {self.unique_key!r}")
        if self.limit_key is not None:
            check_limit_key(self.limit_key)
        if self.run_at is not None:
            run_at_of(self.delay, self.run_at, utc_now())  # delay and run_at together, or a naive run_at, fail here

    @classmethod
    def of(cls, keywords: QueueKeywords) -> QueueOptions:
        """The options from a call's keywords; InvalidInput names an unknown keyword."""
        if not keywords:
            return _DEFAULTS
        if unknown := sorted(keywords.keys() - _NAMES):
            raise InvalidInput(f"unknown option {unknown[0]!r} (known: {', '.join(_NAMES_IN_ORDER)})")
        # `after` may come as any iterable of ids; it is made a tuple
        return cls(**keywords, given=frozenset(keywords))  # type: ignore[arg-type]

    def with_defaults(self, defaults: Mapping[str, Any]) -> QueueOptions:
        """These options, with `defaults` (a task's own) for those the call did not name."""
        missing = {key: value for key, value in defaults.items() if key not in self.given}
        if not missing:
            return self
        return QueueOptions.of({**{key: getattr(self, key) for key in self.given}, **missing})  # type: ignore[typeddict-item]

    def runs_from(self, now: dt.datetime) -> dt.datetime | None:
        """The UTC time (naive, as stored) from which the task may run, or None for "now"."""
        return run_at_of(self.delay, self.run_at, now)


_DEFAULTS = QueueOptions()
_NAMES_IN_ORDER = tuple(field.name for field in dataclasses.fields(QueueOptions) if field.name != "given")
_NAMES = frozenset(_NAMES_IN_ORDER)
