"""The environment a task's command runs with: the worker's own, without what pheanq keeps for itself.

A task's output can end up in its log, in front of anyone who may read the table, so pheanq's secret and the
credentials of its database must not reach it. Removed by default:

- every ``PHEANQ_*`` variable (pheanq's settings, among them ``PHEANQ_SECRET`` and ``PHEANQ_DATABASE_URL``,
  which the tender also hands its workers from ``--database-url``), except ``PHEANQ_TASK_ID``, set for the task;
- the database drivers' password variables (``PGPASSWORD``, ``MYSQL_PWD``);
- any other variable whose value holds the secret or the database URL's credentials (the URL's ``user:password@``
  part or a credential of its query string): a ``DATABASE_URL`` that ``PHEANQ_DATABASE_URL`` was copied from.

The ``pass_env`` setting names variables a task receives all the same.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pheanq.config import Settings, is_credential_parameter
from pheanq.schedules import slot_text

TASK_ID_VARIABLE = "PHEANQ_TASK_ID"
SCHEDULED_FOR_VARIABLE = "PHEANQ_SCHEDULED_FOR"   # the slot of a schedule's task (pheanq.schedules), ISO 8601 UTC
OWN_PREFIX = "PHEANQ_"
DRIVER_PASSWORD_VARIABLES = frozenset({"PGPASSWORD", "MYSQL_PWD"})


def task_environment(environ: Mapping[str, str], settings: Settings, task_id: int) -> dict[str, str]:
    """`environ` without pheanq's own variables and credentials (but with `settings.pass_env`), plus the task's id."""
    return TaskEnvironment(environ, settings).of_task(task_id)


class TaskEnvironment:
    """The environment of one worker's tasks, filtered once: a worker's own environment does not change while it
    runs (it runs no code but pheanq's; a Python application's code runs in its children), and reading
    `os.environ` anew took about 0.15 ms a task."""

    def __init__(self, environ: Mapping[str, str], settings: Settings) -> None:
        secrets = _credentials(settings.secret, settings.database_url)
        passed = set(settings.pass_env)
        self._kept = {name: value for name, value in environ.items()
                      if name in passed or not _kept_out(name, value, secrets)}

    def of_task(self, task_id: int, scheduled_for: dt.datetime | None = None) -> dict[str, str]:
        env = dict(self._kept)
        env[TASK_ID_VARIABLE] = str(task_id)
        if scheduled_for is not None:
            env[SCHEDULED_FOR_VARIABLE] = slot_text(scheduled_for)
        return env


def _kept_out(name: str, value: str, secrets: tuple[str, ...]) -> bool:
    if name.startswith(OWN_PREFIX) or name in DRIVER_PASSWORD_VARIABLES:
        return True
    return any(secret in value for secret in secrets)


@functools.lru_cache(maxsize=8)
def _credentials(secret: str | None, database_url: str) -> tuple[str, ...]:
    """The texts whose presence in a variable's value gives a credential away (a worker's settings do not
    change: worked out once, not for every task)."""
    found = [secret] if secret else []
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        return tuple(found)
    if url.password:
        # As written in the URL (`user:password@`): a bare password could be a common word found in PATH.
        userinfo = re.search(r"://([^/?#]*)@", database_url)
        if userinfo and ":" in userinfo.group(1):
            found.append(userinfo.group(1) + "@")
        found.append(f"{url.username or ''}:{url.password}@")
    found += [f"{key}={value}" for key, value in url.query.items()
              if isinstance(value, str) and value and is_credential_parameter(key)]
    return tuple(found)
