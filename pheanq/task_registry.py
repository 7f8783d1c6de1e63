"""The Python tasks this process knows, by name, and the application's hooks around forking.

`@task` (pheanq.producer.python_task) registers each function here when its module is imported; a worker
started with `--import myapp.tasks` runs exactly the tasks its imports registered. The hooks let an
application make its own state safe across the worker's forks (see docs/python-tasks.rst): the
`on_worker_start` functions run once in the worker after the imports, before the first child is forked
(close what the imports opened: a connection pool shared with a child would be shared with every child);
the `on_child_start` functions run in each child before its first task (open what a task needs).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from pheanq.errors import InvalidInput

Hook = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
    name: str
    function: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


_tasks: dict[str, RegisteredTask] = {}
_hooks: dict[str, list[Hook]] = {"worker": [], "child": []}


def register(name: str, function: Callable[..., Any]) -> None:
    """Register `function` under `name`; InvalidInput when another function holds the name already (importing
    the same module again, as a reload does, replaces it)."""
    known = _tasks.get(name)
    if known is not None and _origin(known.function) != _origin(function):
        raise InvalidInput(f"two Python tasks are named {name!r}: {_origin(known.function)} and "
                           f"{_origin(function)}; give one of them another name with @task(name=...)")
    _tasks[name] = RegisteredTask(name, function)


def lookup(name: str) -> RegisteredTask | None:
    return _tasks.get(name)


def names() -> list[str]:
    return sorted(_tasks)


def on_worker_start(hook: Hook) -> Hook:
    """Decorator: run `hook()` in each worker once its imports are done, before it forks a child."""
    _hooks["worker"].append(hook)
    return hook


def on_child_start(hook: Hook) -> Hook:
    """Decorator: run `hook()` in each child process a worker forks, before the child's first task."""
    _hooks["child"].append(hook)
    return hook


def hooks(kind: str) -> list[Hook]:
    """The hooks of `kind` ("worker" or "child"), in the order they were registered."""
    return list(_hooks[kind])


def _origin(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
