"""A call of a Python task: its registered name and JSON arguments, as a task description.

A Python task's description is a `TaskDescription` whose command is ``py:`` and the task's name (the row's
`command` column, which the claim checks against what a worker runs), with positional and keyword
arguments that are JSON values: null, booleans, numbers, text, lists and objects with text keys. Nothing
else is accepted — no pickle, ever — and a value is refused when it is made, naming the argument.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pheanq.description import TaskDescription, check_text, shown
from pheanq.errors import InvalidInput
from pheanq.limits import MAX_INT_DIGITS

# The command of a Python task's row: `py:` and its name. No registered command may start with it.
PREFIX = "py:"
# A task's name: dotted words, as a module path and a function's name make (`billing.send_invoice`).
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:[.:-][A-Za-z0-9_]+)*\Z")
MAX_TASK_NAME = 200
# How deep a JSON argument may nest: json.dumps and a worker's json.loads both stay far from recursion limits.
MAX_DEPTH = 100
_TOO_BIG = 10**MAX_INT_DIGITS
TYPE_NAME = "pheanq.python"


class PythonCall(TaskDescription):
    """A Python task by name with its arguments (made by `@task`'s `.queue`, `.options().queue` or
    `.describe`, which check the arguments against the function's signature first)."""

    def __init__(self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                 tube: str | None = None) -> None:
        super().__init__(PREFIX + check_task_name(name))
        self.name = name
        self.args: list[Any] = [check_json(f"argument {index}", value) for index, value in enumerate(args)]
        self.kwargs: dict[str, Any] = {}
        for key, value in (kwargs or {}).items():
            if not isinstance(key, str):
                raise InvalidInput(f"keyword argument names are text, not {type(key).__name__}")
            check_text(f"the keyword argument name {key!r}", key)
            self.kwargs[key] = check_json(f"argument {key!r}", value)
        if tube is not None:
            self.tube = tube

    @property
    def type_name(self) -> str:
        return TYPE_NAME

    def command_line(self) -> list[str]:
        return []

    def to_data(self) -> dict[str, Any]:
        return {"command": self.command, "args": self.args, "kwargs": self.kwargs, "type": TYPE_NAME}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PythonCall):
            return NotImplemented
        return (self.name, self.args, self.kwargs) == (other.name, other.args, other.kwargs)

    def __repr__(self) -> str:
        return f"PythonCall({self.name!r}, args={self.args!r}, kwargs={self.kwargs!r})"


def description_from_data(data: Mapping[str, Any]) -> TaskDescription:
    """The description a row or a job body holds: a Python call when its command says so, else a command's."""
    if isinstance(data, Mapping) and isinstance(data.get("command"), str) and data["command"].startswith(PREFIX):
        args, kwargs = data.get("args", []), data.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidInput("python task description: args must be a list and kwargs an object")
        return PythonCall(data["command"][len(PREFIX):], args, kwargs)
    return TaskDescription.from_data(data)


def check_task_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > MAX_TASK_NAME or not TASK_NAME.match(name):
        raise InvalidInput(f"{name!r} is not a valid Python task name (dotted words of A-Z a-z 0-9 _, at most "
                           f"{MAX_TASK_NAME} characters)")
    return name


def check_json(what: str, value: Any, depth: int = 0) -> Any:
    """`value` when it is a JSON value that reads back as it is; else InvalidInput naming `what`."""
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{what} nests more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_TOO_BIG < value < _TOO_BIG:
            raise InvalidInput(f"{what} is a whole number of more than {MAX_INT_DIGITS} digits; pass it as a str")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{what} is {value}, which JSON cannot carry")
        return value
    if isinstance(value, str):
        check_text(what, value)
        return value
    if isinstance(value, (list, tuple)):
        return [check_json(f"{what}[{index}]", item, depth + 1) for index, item in enumerate(value)]
    if isinstance(value, dict):
        checked: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{what} has the key {shown(key)} ({type(key).__name__}); JSON object keys are "
                                   "text")
            checked[check_json(f"{what} key", key, depth + 1)] = check_json(f"{what}[{key!r}]", item, depth + 1)
        return checked
    raise InvalidInput(f"{what} is {type(value).__name__} {shown(value)}; a task's arguments are JSON values "
                       "(None, bool, int, float, str, list, dict with str keys): pass an id or plain data instead")


def to_json(value: Any) -> str:
    """`value` (already checked) as compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
