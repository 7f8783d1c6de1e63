"""What a task runs: a registered command name, its arguments and options; chains of them; argv building.

A chain, `a.then(b).then(c)`, runs b once a is done and c once b is done. It is queued in one
transaction: its first task `new` (or `waiting`, when it waits for tasks given with `after=`), each later
one `waiting` for the one before. If a step fails (after its retries) or is cancelled, every later step
ends `upstream_failed` with a log line that names that step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from pheanq.errors import InvalidInput
from pheanq.limits import MAX_INT_DIGITS

Argument = str | int
OptionValue = str | int | bool

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through.
COMMAND_NAME = re.compile(r"^[A-Za-z0-9_:.-]+\Z")
# An option name never starts with "-": "--" is added in front of it.
OPTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_TOO_BIG = 10**MAX_INT_DIGITS


class TaskDescription:
    """A command from the worker's registry, with its arguments and options.

    Use it as it is, ``TaskDescription("invoice", [42], {"send": True})``, or
    subclass it for an application's own task types::

        class SendInvoice(TaskDescription):
            command = "invoice"
            tube = "billing"        # optional: the tube it goes to when queue_task names none

            def __init__(self, invoice_id: int, *, email: bool = True) -> None:
                super().__init__(arguments=[invoice_id], options={"email": email})

    Everything is checked when the description is made, so a bad value fails
    in the application, never later in a worker.
    """

    command: str = ""
    # The tube a task type is routed to when queue_task names none (before the default_tube setting).
    tube: str | None = None
    # Queue options of the task type itself (a `@task`'s retry, timeout, ...): a queue call's own options win.
    queue_defaults: Mapping[str, Any] = MappingProxyType({})

    def __init__(
        self,
        command: str | None = None,
        arguments: Iterable[Argument] = (),
        options: Mapping[str, OptionValue] | None = None,
    ) -> None:
        self.command = _check_command(command if command is not None else type(self).command)
        self.arguments: list[Argument] = [_check_argument(i, a) for i, a in enumerate(arguments)]
        self.options: dict[str, OptionValue] = {
            _check_option_name(name): _check_option_value(name, value) for name, value in (options or {}).items()
        }

    def then(self, step: TaskDescription) -> Chain:
        """A chain: `step` runs once this task is done (queue it with `TaskQueueService.queue_chain`)."""
        return Chain((self,)).then(step)

    @property
    def type_name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

    def command_line(self) -> list[str]:
        """The arguments and options as they follow the command's registered argv prefix."""
        line = [str(argument) for argument in self.arguments]
        for name, value in self.options.items():
            if value is True:
                line.append(f"--{name}")
            elif value is not False:
                line.append(f"--{name}={value}")
        return line

    def to_data(self) -> dict[str, Any]:
        """The JSON-able form stored in the task's row."""
        return {"command": self.command, "arguments": self.arguments, "options": self.options,
                "type": self.type_name}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> TaskDescription:
        if not isinstance(data, Mapping):
            raise InvalidInput("a task description must be a JSON object")
        arguments = data.get("arguments", [])
        options = data.get("options", {})
        if not isinstance(arguments, list):
            raise InvalidInput("task description: arguments must be a list")
        if not isinstance(options, dict):
            raise InvalidInput("task description: options must be an object")
        return TaskDescription(data.get("command"), arguments, options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskDescription):
            return NotImplemented
        return (self.command, self.arguments, self.options) == (other.command, other.arguments, other.options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(command={self.command!r}, arguments={self.arguments!r}, " \
               f"options={self.options!r})"


class Chain:
    """Task descriptions that run one after another. Build one with `TaskDescription.then`."""

    def __init__(self, steps: tuple[TaskDescription, ...]) -> None:
        self.steps = steps

    def then(self, step: TaskDescription) -> Chain:
        if not isinstance(step, TaskDescription):
            raise InvalidInput(f"then() takes a TaskDescription, not {type(step).__name__}")
        return Chain((*self.steps, step))

    def __iter__(self) -> Iterator[TaskDescription]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return " -> ".join(step.command for step in self.steps)


def build_argv(prefix: Iterable[str], description: TaskDescription) -> list[str]:
    """The child's argv: the registered prefix, then arguments and options; never a shell string."""
    return [*prefix, *description.command_line()]


def _check_command(command: Any) -> str:
    if not isinstance(command, str) or not COMMAND_NAME.match(command):
        raise InvalidInput(f"command {command!r} is not a valid command name (A-Z a-z 0-9 _ : . -)")
    return command


def _check_argument(index: int, value: Any) -> Argument:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"argument {index} is {type(value).__name__} {shown(value)}; only str and int are "
                           "allowed")
    if isinstance(value, str):
        check_text(f"argument {index}", value)
    else:
        _check_whole(f"argument {index}", value)
    return value


def _check_option_name(name: Any) -> str:
    if not isinstance(name, str) or not OPTION_NAME.match(name):
        raise InvalidInput(f"option name {name!r} is not valid (A-Z a-z 0-9 _ -, not starting with -)")
    return name


def _check_option_value(name: str, value: Any) -> OptionValue:
    if not isinstance(value, (str, int)):  # bool is an int
        raise InvalidInput(f"option {name!r} is {type(value).__name__} {shown(value)}; only str, int and bool "
                           "are allowed")
    if isinstance(value, str):
        check_text(f"option {name!r}", value)
    elif not isinstance(value, bool):
        _check_whole(f"option {name!r}", value)
    return value


def check_text(what: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL byte, which no command line can carry")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None


def _check_whole(what: str, value: int) -> None:
    """An int becomes text on the command line and in the JSON body, which every worker must read back: one
    of more than MAX_INT_DIGITS digits (Python's default conversion limit) is refused here, whatever limit this
    process set itself, not with a bare ValueError at queue time nor as a body no worker can read."""
    if not -_TOO_BIG < value < _TOO_BIG:
        raise InvalidInput(f"{what} is a whole number of more than {MAX_INT_DIGITS} digits, more than a worker "
                           "reads back as text; pass it as a str")


def shown(value: Any) -> str:
    """`repr(value)` for an error message, short (a huge value must not fill the message, nor fail in repr: an
    int past the conversion limit, an object whose own __repr__ raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "(too long to show)"
    except Exception:
        return "(cannot be shown)"
    return text if len(text) <= 80 else text[:77] + "..."
