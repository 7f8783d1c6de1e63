"""Recurring schedules: what one is, how pheanq.toml and code declare it, and which of its slots are due.

A schedule is a cron expression in a time zone and the task it queues at each of its times (its *slots*). It is
declared in pheanq.toml (``[schedules.NAME]``), on a Python task (``@task(schedule="0 3 * * *")``) or in code
(``periodic(NAME, CRON, task)``). Every worker-tender runs a scheduler (pheanq.tender.scheduler); the database
makes each slot queue its task once (pheanq.storage.schedules). This module is pure: the definition, its checks,
and the arithmetic of slots over tz-aware datetimes, which cronsim iterates.

Cron: five fields, or six with the seconds first (``*/5 * * * * *``: every five seconds), or an alias
(ALIASES). Time zones follow Debian's cron at a change of the clock, as cronsim does: a fixed time inside the
hour skipped in spring runs at the moment the clock jumps (02:30 Europe/Berlin on that day runs at 03:00 CEST);
a fixed time inside the hour repeated in autumn runs once, in the first pass; a schedule whose hour field is a
wildcard runs in both passes of the repeated hour.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import zoneinfo
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from cronsim import CronSim, CronSimError

from pheanq.description import TaskDescription
from pheanq.errors import ConfigError, InvalidInput
from pheanq.python_call import PythonCall

# Aliases as cron's manual has them, each a five-field expression (cronsim reads fields, not names).
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
CATCH_UP_POLICIES = ("skip", "latest", "all")
# A scheduler that comes back after a stop runs one task for the slots it missed: a missed nightly job runs once,
# never a flood of them (anacron's way); `all` and `skip` are the two other answers.
DEFAULT_CATCH_UP = "latest"
DEFAULT_GRACE_SECONDS = 60
MAX_GRACE_SECONDS = 86_400
DEFAULT_MAX_CATCH_UP = 100
MAX_CATCH_UP = 10_000
MAX_NAME = 191              # pheanq_schedule.name
SLOT_PARAMETER = "scheduled_for"  # a Python task with a parameter of this name gets its slot there (ISO 8601 text)
_UTC = dt.timezone.utc
_ONE_MICROSECOND = dt.timedelta(microseconds=1)

# The keys of a [schedules.NAME] table (and of @task(schedule={...})).
KEYS = ("cron", "command", "python", "args", "kwargs", "tube", "priority", "ttr", "timeout", "timezone",
        "catch_up", "max_catch_up", "grace", "no_overlap")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One recurring schedule: queue `description` at each time of `cron` in `timezone`."""

    name: str
    cron: str                       # five or six fields (an alias is stored as the fields it stands for)
    description: TaskDescription
    timezone: str = "UTC"
    tube: str | None = None         # None: the task's own tube, then the default_tube setting
    priority: int | None = None
    ttr: int | None = None
    timeout: int | None = None
    catch_up: str = DEFAULT_CATCH_UP
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    grace: int = DEFAULT_GRACE_SECONDS
    no_overlap: bool = False
    source: str = "pheanq.toml"     # or "code"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def queue_options(self) -> dict[str, Any]:
        """The queue options the schedule sets (the others are the task's own, then pheanq's defaults)."""
        given = {"tube": self.tube, "priority": self.priority, "ttr": self.ttr, "timeout": self.timeout}
        return {key: value for key, value in given.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class Due:
    """What a scheduler does with the slots in (decided_until, now]: the slots to run (UTC, oldest first), and
    how many missed ones the policy dropped (`more_dropped`: and older ones, not counted)."""

    run: list[dt.datetime]
    dropped: int = 0
    more_dropped: bool = False
    oldest_dropped: dt.datetime | None = None


# --- the slots ----------------------------------------------------------------------------------------------


def due_slots(schedule: Schedule, decided_until: dt.datetime, now: dt.datetime) -> Due:
    """The slots in (decided_until, now] (tz-aware) to run, by the schedule's policy.

    A slot is on time when `now` is at most `grace` seconds past it: it runs whatever the policy. Older ones were
    missed (no scheduler ran then): `skip` drops them, `latest` runs the newest of them (one run stands for all),
    `all` runs each, the newest `max_catch_up` of them. The slots are found backwards from `now`, so a cursor
    far back costs no more than the slots kept (never a walk over years of per-second slots).
    """
    decided_until, now = decided_until.astimezone(_UTC), now.astimezone(_UTC)
    bound = {"skip": 0, "latest": 1, "all": schedule.max_catch_up}[schedule.catch_up]
    on_time: list[dt.datetime] = []
    missed: list[dt.datetime] = []
    more = False
    # cronsim's backward walk starts strictly before its start unless that has microseconds: one microsecond
    # past `now` makes a slot at `now` itself count.
    for local in CronSim(schedule.cron, (now + _ONE_MICROSECOND).astimezone(schedule.zone), reverse=True):
        slot = local.astimezone(_UTC)
        if slot <= decided_until:
            break
        if (now - slot).total_seconds() <= schedule.grace:
            on_time.append(slot)
        elif len(missed) <= bound:   # one more than kept: whether anything was dropped
            missed.append(slot)
        else:
            more = True
            break
    kept, dropped = missed[:bound], missed[bound:]
    return Due(sorted(kept + on_time), len(dropped), more, dropped[-1] if dropped else None)


def first_cursor(schedule: Schedule, now: dt.datetime) -> dt.datetime:
    """The cursor of a schedule seen for the first time: just before its newest slot when that is within its grace
    (a tender started at 03:00:00.5 runs the 03:00 slot), else `now`. Nothing older is caught up: a schedule
    every second does not start with a minute of slots at once."""
    newest = last_slot(schedule, now)
    if (now.astimezone(_UTC) - newest).total_seconds() <= schedule.grace:
        return newest - _ONE_MICROSECOND
    return now.astimezone(_UTC)


def next_slot(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The first slot strictly after `after` (tz-aware), in UTC."""
    return next(iter(CronSim(schedule.cron, after.astimezone(schedule.zone)))).astimezone(_UTC)


def last_slot(schedule: Schedule, at: dt.datetime) -> dt.datetime:
    """The last slot at or before `at` (tz-aware), in UTC."""
    local = (at.astimezone(_UTC) + _ONE_MICROSECOND).astimezone(schedule.zone)
    return next(iter(CronSim(schedule.cron, local, reverse=True))).astimezone(_UTC)


def slot_text(slot: dt.datetime) -> str:
    """A slot as a task receives it: ISO 8601 in UTC (``2026-12-01T03:00:00+00:00``); a naive one is UTC already
    (a column's, pheanq.clock)."""
    return (slot.replace(tzinfo=_UTC) if slot.tzinfo is None else slot.astimezone(_UTC)).isoformat()


# --- checks ---------------------------------------------------------------------------------------------------


def check_cron(expression: Any, where: str = "cron") -> str:
    """The expression as cronsim reads it (an alias replaced by its fields); ConfigError when it is not one."""
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigError(f"{where}: expected a cron expression such as \"*/5 * * * *\", not {expression!r}")
    text = " ".join(expression.split())
    text = ALIASES.get(text.lower(), text)
    if text.startswith("@"):
        raise ConfigError(f"{where}: unknown alias {expression!r} (known: {', '.join(ALIASES)})")
    if len(text.split()) not in (5, 6):
        raise ConfigError(f"{where}: {expression!r} has {len(text.split())} fields; cron takes 5 (minute hour day "
                          "month weekday) or 6 (seconds first)")
    try:
        next(iter(CronSim(text, dt.datetime(2000, 1, 1, tzinfo=_UTC))))
    except (CronSimError, StopIteration) as error:
        raise ConfigError(f"{where}: {expression!r} is not a cron expression ({error or 'it never fires'})") from None
    return text


def parse_schedules(section: Any, commands: Collection[str]) -> tuple[Schedule, ...]:
    """The `[schedules]` table of pheanq.toml; `commands` the names a schedule may queue (ConfigError otherwise)."""
    if section is None:
        return ()
    if not isinstance(section, Mapping):
        raise ConfigError("schedules: expected a table of [schedules.NAME] tables")
    return tuple(parse_schedule(name, table, commands) for name, table in section.items())


def parse_schedule(name: Any, table: Any, commands: Collection[str] | None, source: str = "pheanq.toml",
                   description: TaskDescription | None = None) -> Schedule:
    """One schedule from its table; ConfigError names the schedule and the key. With `description` (a schedule
    declared in code), the table holds no command, python, args or kwargs."""
    check_schedule_name(name)
    where = f"schedules.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table with cron and command or python")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    if "cron" not in table:
        raise ConfigError(f"{where}: cron is missing (e.g. cron = \"*/5 * * * *\")")
    values: dict[str, Any] = {"cron": check_cron(table["cron"], f"{where}.cron")}
    if description is None:
        description = _description(where, table, commands)
    elif set(table) & {"command", "python", "args", "kwargs"}:
        raise ConfigError(f"{where}: the task and its arguments are given in code, not in the schedule's options")
    timezone = table.get("timezone", "UTC")
    values["timezone"] = _check_timezone(f"{where}.timezone", timezone)
    if "tube" in table:
        # Checked as a tube name by pheanq.config for pheanq.toml, by the scheduler's first plan for code.
        if not isinstance(table["tube"], str):
            raise ConfigError(f"{where}.tube: expected a tube name, not {table['tube']!r}")
        values["tube"] = table["tube"]
    for key, low, high in (("priority", 0, 2**32 - 1), ("ttr", 1, 2**32 - 1), ("timeout", 1, 2**31 - 1),
                           ("max_catch_up", 1, MAX_CATCH_UP), ("grace", 1, MAX_GRACE_SECONDS)):
        if key in table:
            values[key] = _whole(f"{where}.{key}", table[key], low, high)
    if "catch_up" in table:
        if table["catch_up"] not in CATCH_UP_POLICIES:
            raise ConfigError(f"{where}.catch_up: {table['catch_up']!r} is not one of {', '.join(CATCH_UP_POLICIES)}")
        values["catch_up"] = table["catch_up"]
    if "no_overlap" in table:
        if not isinstance(table["no_overlap"], bool):
            raise ConfigError(f"{where}.no_overlap: expected true or false, not {table['no_overlap']!r}")
        values["no_overlap"] = table["no_overlap"]
    return Schedule(name, description=description, source=source, **values)


def check_schedule_name(name: Any) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable() or name != name.strip():
        raise ConfigError(f"schedules: {name!r} is not a schedule name (1-{MAX_NAME} printable characters)")
    return name


def _description(where: str, table: Mapping[str, Any], commands: Collection[str] | None) -> TaskDescription:
    if ("command" in table) == ("python" in table):
        raise ConfigError(f"{where}: give either command (a name in [commands]) or python (a task's name)")
    args = table.get("args", [])
    if not isinstance(args, list):
        raise ConfigError(f"{where}.args: expected a list, not {args!r}")
    try:
        if "command" in table:
            if "kwargs" in table:
                raise ConfigError(f"{where}.kwargs: a command takes args only; kwargs are a Python task's")
            command = table["command"]
            if commands is not None and command not in commands:
                raise ConfigError(f"{where}.command: {command!r} is not in [commands]")
            return TaskDescription(command, args)
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{where}.kwargs: expected a table, not {kwargs!r}")
        return PythonCall(table["python"], args, kwargs)
    except ConfigError:
        raise
    except InvalidInput as error:
        raise ConfigError(f"{where}: {error}") from None


def _check_timezone(where: str, name: Any) -> str:
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ConfigError(f"{where}: {name!r} is not a time zone name (e.g. \"Europe/Berlin\", \"UTC\")")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{where}: unknown time zone {name!r} (a name of the tz database, e.g. "
                          "\"Europe/Berlin\")") from None
    return name


def _whole(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected a whole number from {low} to {high}, not {value!r}")
    return value


# --- schedules declared in code -------------------------------------------------------------------------------


class Describable(Protocol):
    """A `@task` function (pheanq.producer.python_task.PythonTask): it makes its description from arguments."""

    name: str

    def describe(self, *args: Any, **kwargs: Any) -> TaskDescription: ...


_declared: dict[str, Schedule] = {}


def periodic(name: str, cron: str, task: TaskDescription | Describable, *, args: list[Any] | tuple[Any, ...] = (),
             kwargs: Mapping[str, Any] | None = None, **options: Any) -> Schedule:
    """Declare a schedule in code: queue `task` (a TaskDescription, or a `@task` function called with `args` and
    `kwargs`) at each time of `cron`. The options are the keys of a ``[schedules.NAME]`` table: tube, priority,
    ttr, timeout, timezone, catch_up, max_catch_up, grace, no_overlap. A worker-tender knows the schedules of
    the modules it imports (``[python] imports``). Returns the schedule; ConfigError for a bad one."""
    if isinstance(task, TaskDescription):
        if args or kwargs:
            raise ConfigError(f"schedules.{name}: args and kwargs go with a @task function; a TaskDescription "
                              "carries its own")
        description = task
    elif callable(getattr(task, "describe", None)):
        description = _describe(name, task, list(args), dict(kwargs or {}))
    else:
        raise ConfigError(f"schedules.{name}: periodic() takes a TaskDescription or a @task function, "
                          f"not {type(task).__name__}")
    schedule = parse_schedule(name, {"cron": cron, **options}, None, source="code", description=description)
    known = _declared.get(name)
    if known is not None and known != schedule:
        raise ConfigError(f"schedules.{name}: declared twice in code, differently")
    _declared[name] = schedule
    return schedule


def schedule_of_task(task: Describable, spec: str | Mapping[str, Any]) -> Schedule:
    """`@task(schedule=...)`: a cron expression, or a table of a schedule's keys (cron, args, kwargs and the
    options of `periodic`), named after the task."""
    if not isinstance(spec, (str, Mapping)):
        raise ConfigError(f"schedules.{task.name}: schedule= takes a cron expression or a table, not {spec!r}")
    table = {"cron": spec} if isinstance(spec, str) else dict(spec)
    args, kwargs = table.pop("args", ()), table.pop("kwargs", None)
    cron = table.pop("cron", None)
    return periodic(task.name, cron, task, args=args, kwargs=kwargs, **table)  # type: ignore[arg-type]


def declared() -> list[Schedule]:
    """The schedules declared in code by the modules imported so far."""
    return list(_declared.values())


def _describe(name: str, task: Describable, args: list[Any], kwargs: dict[str, Any]) -> TaskDescription:
    """The task's description; a `scheduled_for` parameter the arguments leave out gets a stand-in here, the slot
    at each run (pheanq.tender.scheduler)."""
    function = getattr(task, "function", None)
    if function is not None and SLOT_PARAMETER in inspect.signature(function).parameters:
        kwargs.setdefault(SLOT_PARAMETER, "")
    try:
        return task.describe(*args, **kwargs)
    except InvalidInput as error:
        raise ConfigError(f"schedules.{name}: {error}") from None


def all_schedules(configured: tuple[Schedule, ...]) -> list[Schedule]:
    """The schedules of pheanq.toml and of code; ConfigError when both declare one name."""
    names = {schedule.name for schedule in configured}
    twice = sorted(names & set(_declared))
    if twice:
        raise ConfigError(f"schedules.{twice[0]}: declared both in pheanq.toml and in code")
    return [*configured, *_declared.values()]
