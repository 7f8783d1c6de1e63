"""A task filter from the words a person types, the same for `pheanq tasks` and the dashboard's task list: times
as ISO 8601 or as ages (`30m`, `2h`, `7d`), lists of statuses, tubes and names, bounded texts. Each bad word is an
InvalidInput that names it."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from pheanq.clock import utc_now
from pheanq.config import check_tube_name
from pheanq.errors import ConfigError, InvalidInput
from pheanq.limits import MAX_MATCH_TEXT, MAX_TASK_ID, MAX_UNIQUE_KEY
from pheanq.status import Status
from pheanq.storage.listings import TaskFilter

# An age: a whole number and its unit, meaning that long ago.
AGE = re.compile(r"^(\d{1,9})([smhdw])\Z")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, name: str) -> dt.datetime:
    """An ISO 8601 date or datetime, taken as UTC unless it names its offset, or an age (that long ago); as naive
    UTC, the table's clock."""
    value = text.strip()
    try:
        if age := AGE.match(value):
            return utc_now() - dt.timedelta(seconds=int(age[1]) * AGE_UNITS[age[2]])
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name}: {text!r} is not a time: give an ISO 8601 date or datetime (UTC unless it has "
                           "an offset), or an age such as 30m, 2h, 7d (s, m, h, d, w)") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return parsed


def split_words(values: Iterable[str]) -> list[str]:
    """Repeated values and comma-separated lists, as one list without blanks or repeats, in the order given."""
    return list(dict.fromkeys(part.strip() for value in values for part in value.split(",") if part.strip()))


def parse_statuses(values: Iterable[str], name: str) -> list[Status]:
    known = {status.value: status for status in Status}
    words = split_words(values)
    for word in words:
        if word not in known:
            raise InvalidInput(f"{name}: {word!r} is not a status (one of {', '.join(known)})")
    return [known[word] for word in words]


def parse_tubes(values: Iterable[str], name: str) -> list[str]:
    try:
        return [check_tube_name(tube, name) for tube in split_words(values)]
    except ConfigError as error:
        raise InvalidInput(str(error)) from None


def bounded_text(value: str | None, name: str, longest: int) -> str | None:
    if value is not None and not 0 < len(value) <= longest:
        raise InvalidInput(f"{name}: give 1 to {longest} characters, not {len(value)}")
    return value


def task_id(text: str, name: str) -> int:
    """A task (or batch) id given as text."""
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not a task id (a whole number)") from None
    if not 1 <= number <= MAX_TASK_ID:
        raise InvalidInput(f"{name}: {text!r} is not a task id (1 to {MAX_TASK_ID})")
    return number


def task_filter(statuses: Iterable[str] = (), tubes: Iterable[str] = (), commands: Iterable[str] = (),
                batch: str | None = None, unique_key: str | None = None, created_after: str | None = None,
                created_before: str | None = None, finished_after: str | None = None,
                finished_before: str | None = None, match: str | None = None) -> TaskFilter:
    """The filter these words describe; blank words are left out. Each name in a message is the query
    parameter's (the CLI's options are the same words with -- and dashes)."""
    def time(text: str | None, name: str) -> dt.datetime | None:
        return parse_time(text, name) if text and text.strip() else None

    return TaskFilter(
        statuses=tuple(parse_statuses(statuses, "status")), tubes=tuple(parse_tubes(tubes, "tube")),
        commands=tuple(split_words(commands)), batch_id=task_id(batch, "batch") if batch and batch.strip() else None,
        unique_key=bounded_text(unique_key or None, "unique_key", MAX_UNIQUE_KEY),
        created_after=time(created_after, "created_after"), created_before=time(created_before, "created_before"),
        finished_after=time(finished_after, "finished_after"),
        finished_before=time(finished_before, "finished_before"),
        match=bounded_text(match or None, "match", MAX_MATCH_TEXT))
