"""What a task runs: a registered command name, its arguments and options; the JSON codec; argv building."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pheanq import signing
from pheanq.errors import InvalidInput

Argument = str | int
OptionValue = str | int | bool

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through.
COMMAND_NAME = re.compile(r"^[A-Za-z0-9_:.-]+\Z")
# An option name never starts with "-": "--" is added in front of it.
OPTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\Z")

# beanstalkd's default max-job-size (-z); a larger body would be refused by the server.
MAX_BODY_BYTES = 65535
BODY_VERSION = 1
# The largest id the task table can hold (a signed 64-bit integer); a body naming a larger one is not ours.
MAX_TASK_ID = 2**63 - 1


if TYPE_CHECKING:
    from pheanq.chain import Chain


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
        from pheanq.chain import Chain

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


def build_argv(prefix: Iterable[str], description: TaskDescription) -> list[str]:
    """The child's argv: the registered prefix, then arguments and options; never a shell string."""
    return [*prefix, *description.command_line()]


@dataclass(frozen=True)
class JobBody:
    """What travels through beanstalkd: a pointer to the row, plus the description for inspection."""

    task_id: int
    description: TaskDescription


class MalformedBody(InvalidInput):
    """A job body that is not a pheanq job."""


def encode_body(task_id: int, description: TaskDescription, secret: str | None = None) -> bytes:
    """The job body for a task; signed (see `pheanq.signing`) when a secret is given."""
    body = json.dumps({"pheanq": BODY_VERSION, "task_id": task_id, "description": description.to_data()},
                      separators=(",", ":"), ensure_ascii=False).encode()
    if secret is not None:
        body = signing.sign(body, secret)
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInput(f"the task description is {len(body)} bytes as a job body; beanstalkd takes at "
                           f"most {MAX_BODY_BYTES}: pass an id and load the data in the command instead")
    return body


def decode_body(raw: bytes, secret: str | None = None) -> JobBody:
    """Parse a job body, or raise MalformedBody saying what is wrong with it.

    With a secret, only a body signed with it is read: its signature is checked on the raw bytes
    first, and what is parsed is exactly the bytes the signature covers. Without one, a signed
    body's `hmac` is ignored, so producers can start signing before workers start checking.
    """
    if len(raw) > MAX_BODY_BYTES + signing.SIGNATURE_BYTES:
        # pheanq never writes one this big (a beanstalkd with a larger -z lets other clients put it).
        raise MalformedBody(f"too big: {len(raw)} bytes, a pheanq job body has at most "
                            f"{MAX_BODY_BYTES + signing.SIGNATURE_BYTES} ({_preview(raw)})")
    payload = raw if secret is None else _verified(raw, secret)
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody(f"not JSON ({_preview(raw)})") from None
    except RecursionError:
        raise MalformedBody(f"JSON nested too deeply ({_preview(raw)})") from None
    version = data.get("pheanq") if isinstance(data, dict) else None
    if type(version) is not int or version != BODY_VERSION:  # not true, not 1.0
        raise MalformedBody(f"not a pheanq job body ({_preview(raw)})")
    task_id = data.get("task_id")
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 < task_id <= MAX_TASK_ID:
        raise MalformedBody(f"task_id is not a positive integer ({_preview(raw)})")
    try:
        description = TaskDescription.from_data(data.get("description", {}))
    except InvalidInput as error:
        raise MalformedBody(f"task {task_id}: {error}") from None
    return JobBody(task_id, description)


def encode_data(description: TaskDescription) -> str:
    return json.dumps(description.to_data(), separators=(",", ":"), ensure_ascii=False)


def decode_data(text: str) -> TaskDescription:
    try:
        return TaskDescription.from_data(json.loads(text))
    except ValueError as error:
        raise InvalidInput(f"stored task data is not valid: {error}") from None


def _verified(raw: bytes, secret: str) -> bytes:
    try:
        return signing.verify(raw, secret)
    except signing.Unsigned:
        raise MalformedBody(f"unsigned job body: a secret is configured, so every job must be signed "
                            f"({_preview(raw)})") from None
    except signing.WrongSignature as error:
        # The message says why, never what the signature should have been.
        raise MalformedBody(f"wrong signature: {error} ({_preview(raw)})") from None


def _preview(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > limit else "")


def _check_command(command: Any) -> str:
    if not isinstance(command, str) or not COMMAND_NAME.match(command):
        raise InvalidInput(f"command {command!r} is not a valid command name (A-Z a-z 0-9 _ : . -)")
    return command


def _check_argument(index: int, value: Any) -> Argument:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"argument {index} is {type(value).__name__} {value!r}; only str and int are allowed")
    if isinstance(value, str):
        _check_text(f"argument {index}", value)
    return value


def _check_option_name(name: Any) -> str:
    if not isinstance(name, str) or not OPTION_NAME.match(name):
        raise InvalidInput(f"option name {name!r} is not valid (A-Z a-z 0-9 _ -, not starting with -)")
    return name


def _check_option_value(name: str, value: Any) -> OptionValue:
    if not isinstance(value, (str, int)):  # bool is an int
        raise InvalidInput(f"option {name!r} is {type(value).__name__} {value!r}; only str, int and bool "
                           "are allowed")
    if isinstance(value, str):
        _check_text(f"option {name!r}", value)
    return value


def _check_text(what: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL byte, which no command line can carry")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None
