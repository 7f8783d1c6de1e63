"""Cluster-wide limits on running tasks: at most N at once (concurrency) and at most N starts per period (rate), per
command or Python task, per tube, or per key a task is queued with (`limit_key="tenant:42"`).

Limits are declared in pheanq.toml::

    [limits.commands.resize-image]     # a command, or a Python task as "py:NAME"
    concurrency = 2
    rate = "10/m"
    [limits.tubes.emails]
    rate = "100/s"
    [limits.keys.tenant]               # every key "tenant:..." gets a budget of its own
    concurrency = 1

and for Python tasks in code (`@task(concurrency=2, rate="10/m")`). A key's kind is the text before its first
colon (the whole key without one). What pheanq.toml says about a command wins over what code says.

A claim takes one place of every limit its task falls under, in the claim's own transaction
(pheanq.storage.limit_places); a task over a limit is not run, and its job waits in its tube (released with a
delay) while the worker takes the next.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pheanq.errors import ConfigError, InvalidInput

CONCURRENCY = "concurrency"
RATE = "rate"
# A limit of N is N rows a claim reads and one it takes (pheanq_limit_slot): beyond this the claim's reads grow.
MAX_PLACES = 1000
# A limit key's longest text: the row's limit_key column.
MAX_LIMIT_KEY = 191
SCOPE_KINDS = ("commands", "tubes", "keys")

# A job over a limit waits in its tube: until a place of a rate limit frees, when that is known; else (a
# concurrency limit) LIMITED_WAIT_FIRST seconds, twice as long each time it was released before, at most
# LIMITED_WAIT_CAP: a holder may end any moment, and a job that waits long leaves the place idle meanwhile.
LIMITED_WAIT_FIRST = 1
LIMITED_WAIT_CAP = 16
# Up to this share more, at random, so that jobs over a limit together do not all come back together.
LIMITED_WAIT_JITTER = 0.25

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
          "d": 86400, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*\Z")


@dataclasses.dataclass(frozen=True)
class Rate:
    """At most `starts` starts in any `seconds` seconds."""

    starts: int
    seconds: int

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h", 86400: "d"}.get(self.seconds)
        return f"{self.starts}/{unit}" if unit else f"{self.starts}/{self.seconds}s"


@dataclasses.dataclass(frozen=True)
class LimitSpec:
    """The limits of one command, tube or kind of key."""

    concurrency: int | None = None
    rate: Rate | None = None


@dataclasses.dataclass(frozen=True, order=True)
class Place:
    """A limit a task falls under: its scope's row group in pheanq_limit_slot, and how many places it has."""

    scope: str                  # "command:NAME", "tube:NAME" or "key:KEY"
    kind: str                   # CONCURRENCY or RATE
    size: int
    period: int = 0             # RATE: the seconds a place serves one start


@dataclasses.dataclass(frozen=True)
class LimitTable:
    """Every declared limit, by command, tube and kind of key."""

    commands: Mapping[str, LimitSpec] = dataclasses.field(default_factory=dict)
    tubes: Mapping[str, LimitSpec] = dataclasses.field(default_factory=dict)
    keys: Mapping[str, LimitSpec] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.commands or self.tubes or self.keys)

    def places_for(self, command: str, tube: str, limit_key: str | None) -> list[Place]:
        """The places a task of `command` in `tube` with `limit_key` must take to start, in the one order every
        claim takes them (so that two claims never wait on each other's places)."""
        scopes = [("command:" + command, self.commands.get(command)), ("tube:" + tube, self.tubes.get(tube))]
        if limit_key:
            scopes.append(("key:" + limit_key, self.keys.get(key_kind(limit_key))))
        return sorted(place for scope, spec in scopes if spec is not None for place in _places(scope, spec))

    def declared_places(self, keys: Iterable[str] = ()) -> list[Place]:
        """Every limit of every command and tube, and of each of `keys` whose kind has limits; in claim order."""
        scopes = [*(("command:" + name, spec) for name, spec in self.commands.items()),
                  *(("tube:" + name, spec) for name, spec in self.tubes.items()),
                  *(("key:" + key, self.keys[key_kind(key)]) for key in keys if key_kind(key) in self.keys)]
        return sorted(place for scope, spec in scopes for place in _places(scope, spec))

    def with_code(self, declared: Mapping[str, LimitSpec]) -> LimitTable:
        """This table with the limits code declared for commands it does not name itself."""
        if not declared:
            return self
        return dataclasses.replace(self, commands={**declared, **self.commands})


def limited_wait(known: float, releases: int, rng: random.Random | None = None) -> int:
    """Seconds (whole, at least 1: beanstalkd's delays) a job over a limit waits before it is reserved again,
    `known` being the seconds until a place frees where that is known (else 0) and `releases` how many times the
    job was released already."""
    jitter = 1 + (rng or random).uniform(0, LIMITED_WAIT_JITTER)
    if known > 0:
        return max(1, math.ceil(known * jitter))  # never before the place frees
    # Rounded, not raised, to whole seconds: ceil made the first wait of 1 s one of 2 s (+100 %, not +0-25 %), and
    # every later one a second longer, while the place it waits for may have been free all along.
    return max(1, round(min(LIMITED_WAIT_CAP, LIMITED_WAIT_FIRST << min(releases, 8)) * jitter))


def _places(scope: str, spec: LimitSpec) -> list[Place]:
    return [*([Place(scope, CONCURRENCY, spec.concurrency)] if spec.concurrency is not None else []),
            *([Place(scope, RATE, spec.rate.starts, spec.rate.seconds)] if spec.rate is not None else [])]


def key_kind(limit_key: str) -> str:
    """The kind of a limit key, whose limits apply to it: the text before its first colon."""
    return limit_key.split(":", 1)[0]


def parse_rate(text: Any, what: str = "rate") -> Rate:
    """"10/m", "100/s", "5/h", "1000/d", "3/30s": InvalidInput names what is wrong."""
    found = _RATE.match(text) if isinstance(text, str) else None
    unit = _UNITS.get(found.group(3)) if found else None
    if found is None or unit is None:
        raise InvalidInput(f"{what}: {text!r} is not a rate (N/s, N/m, N/h, N/d, or N/30s)")
    starts, count = int(found.group(1)), int(found.group(2) or 1)
    check_places(what, starts)
    if count < 1:
        raise InvalidInput(f"{what}: {text!r}: the period must be at least 1 second")
    return Rate(starts, count * unit)


def check_places(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PLACES:
        raise InvalidInput(f"{what}: {value!r} is not a whole number from 1 to {MAX_PLACES}")
    return value


def check_limit_key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LIMIT_KEY or not value.isprintable():
        raise InvalidInput(f"limit_key must be a printable text of 1 to {MAX_LIMIT_KEY} characters, not {value!r}")
    return value


def limit_spec(what: str, concurrency: Any = None, rate: Any = None) -> LimitSpec:
    """A checked LimitSpec from its parts (a rate as text); InvalidInput names the bad part."""
    return LimitSpec(None if concurrency is None else check_places(f"{what}: concurrency", concurrency),
                     None if rate is None else parse_rate(rate, f"{what}: rate"))


def parse_limits(key: str, value: Any) -> LimitTable:
    """pheanq.toml's `[limits]` table; ConfigError names the entry that is wrong."""
    if isinstance(value, LimitTable):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table ([limits.commands.NAME], [limits.tubes.NAME], [limits.keys.KIND])")
    unknown = sorted(set(value) - set(SCOPE_KINDS))
    if unknown:
        raise ConfigError(f"{key}: unknown table {unknown[0]!r} (known: {', '.join(SCOPE_KINDS)})")
    tables: dict[str, dict[str, LimitSpec]] = {}
    for scope_kind in SCOPE_KINDS:
        entries = value.get(scope_kind, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{key}.{scope_kind}: expected a table of NAME = {{concurrency, rate}}")
        tables[scope_kind] = {}
        for name, entry in entries.items():
            where = f"{key}.{scope_kind}.{name}"
            if not isinstance(entry, dict) or not entry or set(entry) - {"concurrency", "rate"}:
                raise ConfigError(f"{where}: expected concurrency = N and/or rate = \"N/period\"")
            try:
                tables[scope_kind][name] = limit_spec(where, entry.get("concurrency"), entry.get("rate"))
            except InvalidInput as error:
                raise ConfigError(str(error)) from None
    return LimitTable(tables["commands"], tables["tubes"], tables["keys"])


_declared: dict[str, LimitSpec] = {}


def declare(command: str, spec: LimitSpec) -> None:
    """Note the limits code declared for a command (`@task(concurrency=..., rate=...)`)."""
    _declared[command] = spec


def declared() -> dict[str, LimitSpec]:
    return dict(_declared)
