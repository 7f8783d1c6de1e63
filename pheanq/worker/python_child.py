"""What runs inside a Python task's child process, forked by its worker (pheanq.worker.python_pool).

The child reads tasks from its worker, one JSON line each, and runs them one after another until the worker
closes the pipe or the child has run its share (`max_tasks_per_child`). For each task it says, in order:
its stdout and stderr (fds 1 and 2, on the worker's output pipe), then ``EXITED 0`` (returned) or
``EXITED 1`` (raised) on the worker's own state-line output, then the outcome as one JSON line on the
message pipe. The state line goes first for the same reason a command's exit is said before its result
is recorded: a tender that hears it knows the task completed even if the worker dies before it records
it (pheanq.tender.recovery), so a completed task is never run again.

Nothing of pheanq's own state is used here: the worker's database connections are forgotten without being
closed (they are the worker's), and the child ends with os._exit, so nothing the worker holds is finalised
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import io
import json
import os
import signal
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

from pheanq import task_context, task_registry
from pheanq.limits import MAX_RESULT_BYTES
from pheanq.retry import class_name
from pheanq.worker.child import linux_prctl
from pheanq.worker.protocol import MAX_NAME

# Exit code of a child whose on_child_start hook failed (it ran no task).
EXIT_HOOK_FAILED = 3
# The longest traceback an attempt's log keeps (its head and tail).
MAX_TRACEBACK = 16384
_PR_SET_PDEATHSIG = 1
# Signals the child takes with their default action (the worker's handlers are the worker's), before its first
# task and after each one.
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2)
# Where asyncio's own frames come from (asyncio.run's, above an async task's first frame).
_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep


@dataclasses.dataclass(frozen=True)
class ChildPipes:
    """The child's ends: tasks come in, messages go out, output goes to fds 1 and 2; `state` is a copy of the
    worker's state-line output (None when the worker has none to share)."""

    tasks: int
    messages: int
    output: int
    state: int | None


def child_main(pipes: ChildPipes, parent: int, max_tasks: int, forget: Callable[[], None]) -> NoReturn:
    """The forked child's whole life; it never returns."""
    code = 1
    try:
        _detach(parent, pipes)
        forget()
        code = _serve(pipes, max_tasks)
    except BaseException:  # the child must end here, whatever happened, and never return into the worker's code
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            _flush_output()
        os._exit(code)


def _detach(parent: int, pipes: ChildPipes) -> None:
    """Its own session (a stop signals its whole group), death with the worker, default signals, and fds 1 and 2
    on the output pipe."""
    os.setsid()
    prctl = linux_prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the line above took effect
        os._exit(137)
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    _restore_streams(pipes)


def _restore_streams(pipes: ChildPipes) -> None:
    """fds 0 (/dev/null), 1 and 2 (the output pipe) and sys.stdin/stdout/stderr on them: set up once, and set
    again after a task that closed or replaced them, so that the next task of this child has them too. The
    child keeps `pipes.output` open (not inheritable) to do this."""
    null = os.open(os.devnull, os.O_RDONLY)
    if not _same_file(0, null):
        os.dup2(null, 0)
    os.close(null)
    for fd in (1, 2):
        if not _same_file(fd, pipes.output):
            os.dup2(pipes.output, fd)
    # The child's own streams, for as long as it lives (os._exit ends it: nothing is left to close).
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = getattr(sys, name)
        if getattr(stream, "_pheanq_fd", None) != fd or stream.closed:
            stream = open(fd, mode, buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
            stream._pheanq_fd = fd  # type: ignore[attr-defined]
            setattr(sys, name, stream)


@dataclasses.dataclass(frozen=True)
class _ProcessState:
    """What a task may change in its process that the next task of the child must not inherit, as the child
    had it before its first task."""

    cwd: str
    environ: dict[str, str]

    @classmethod
    def now(cls) -> _ProcessState:
        return cls(os.getcwd(), dict(os.environ))

    def restore(self, blocked: set[signal.Signals]) -> None:
        """The working directory, environment, signal handlers, mask (but `blocked`) and timer as they were."""
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, 0)  # an alarm the task left armed would kill the child while idle
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _same_file(fd: int, other: int) -> bool:
    try:
        mine, theirs = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _serve(pipes: ChildPipes, max_tasks: int) -> int:
    for hook in task_registry.hooks("child"):
        try:
            hook()
        except Exception:
            print(f"pheanq: the on_child_start hook {getattr(hook, '__qualname__', hook)!r} failed:", file=sys.stderr)
            traceback.print_exc()
            return EXIT_HOOK_FAILED
    tasks = os.fdopen(pipes.tasks, "rb", buffering=0)
    reader = io.BufferedReader(tasks)
    state = pipes.state
    child = os.getpid()
    before = _ProcessState.now()
    for _ in range(max_tasks):
        line = reader.readline()
        if not line:
            # No end order, only the end of the pipe: the worker died (its PDEATHSIG may not have come yet). The
            # child dies by SIGKILL as its worker's death would have it: an exit code 0 would tell the tender that
            # reaps it that a task completed.
            os.kill(child, signal.SIGKILL)
            os._exit(137)  # as SIGKILL would: never reached
        order = json.loads(line)
        if order.get("end"):
            return 0  # the worker is stopping, or retiring this child
        outcome = _run(order, pipes)
        if os.getpid() != child:
            # A process the task forked came back here (its function returned, raised or called sys.exit in
            # it): only the child says how a task went, so it ends without a word (its EXITED line would tell
            # the tender the task completed; its outcome would be taken for the task's).
            os._exit(0 if outcome["ok"] else 1)
        outcome["task_id"] = order["task_id"]
        # From the EXITED line to the outcome, a stop (SIGTERM) waits: the tender and the worker must both learn
        # that the function completed, or neither (SIGKILL, after the stop's grace, cannot be held back). The line
        # comes as soon as the function returned, before the child tidies up for its next task: a worker killed
        # meanwhile then leaves a task its tender records as completed, not one that runs again.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        if state is not None:
            try:
                _write(state, _state_lines(outcome, order.get("final_errors", [])))
            except OSError:
                # Nobody reads the worker's state lines any more (its tender was killed), or the task closed the
                # descriptor: the worker carries on without them (pheanq.worker.protocol), and so does its child,
                # to hand over the outcome.
                state = None
        _flush_output()
        with contextlib.suppress(OSError):
            _restore_streams(pipes)
        with contextlib.suppress(OSError, ValueError):
            before.restore(blocked={signal.SIGTERM})
        _write(pipes.messages, (json.dumps(outcome, separators=(",", ":")) + "\n").encode())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return 0


def _state_lines(outcome: dict[str, Any], final_errors: list[str]) -> bytes:
    """``EXITED 0`` or ``EXITED 1``, after ``RAISED <class>`` when the exception is one the task's retry policy
    does not retry: one write, so that the tender reads both or neither."""
    if outcome["ok"]:
        return b"EXITED 0\n"
    final = next((name for name in outcome.get("errors", ()) if name in final_errors and len(name) <= MAX_NAME),
                 None)
    return (b"" if final is None else f"RAISED {final}\n".encode()) + b"EXITED 1\n"


def _run(order: dict[str, Any], pipes: ChildPipes) -> dict[str, Any]:
    """Run one task; its outcome as the worker reads it."""
    registered = task_registry.lookup(order["name"])
    if registered is None:  # the claim checked the name against this worker's tasks: only a bug gets here
        return {"ok": False, "errors": [], "error": f"task {order['name']!r} is not registered in this child"}

    child = os.getpid()

    def report(message: dict[str, Any]) -> None:
        if os.getpid() == child:  # never from a process the task forked
            message = {**message, "task_id": order["task_id"]}
            _write(pipes.messages, (json.dumps(message, separators=(",", ":")) + "\n").encode())

    scheduled_for = order.get("scheduled_for")
    context = task_context.TaskContext(order["task_id"], order["name"], order["attempt"], order.get("batch_id"),
                                       None if scheduled_for is None else dt.datetime.fromisoformat(scheduled_for),
                                       _report=report)
    task_context.enter(context)
    try:
        value = registered.function(*order["args"], **order["kwargs"])
        if registered.is_async or inspect.iscoroutine(value):  # an async function under a plain decorator too
            value = asyncio.run(value)
    except SystemExit as stop:
        if stop.code in (0, None):
            return {"ok": True, "result": None, "note": "the task called sys.exit(0): no result"}
        return _failure(stop, registered.is_async)
    except BaseException as error:  # KeyboardInterrupt, GeneratorExit: the attempt failed, the child lives on
        return _failure(error, registered.is_async)
    finally:
        context.flush()
        task_context.enter(None)
    return {"ok": True, **_result(value)}


def _result(value: Any) -> dict[str, Any]:
    """The return value as the row keeps it, or a note saying why it is not kept."""
    if value is None:
        return {"result": None}
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())  # UnicodeEncodeError: a lone surrogate (a file name read with surrogateescape)
    except Exception as error:  # whatever the value's own methods raise: the function completed all the same
        return {"result": None, "note": f"the return value is not JSON ({type(value).__name__}: "
                                        f"{_short(error)}); it is not stored"}
    if size > MAX_RESULT_BYTES:
        return {"result": None, "note": f"the return value is {size} bytes of JSON, more than "
                                        f"{MAX_RESULT_BYTES}; it is not stored"}
    return {"result": text}


def _failure(error: BaseException, is_async: bool = False) -> dict[str, Any]:
    # From the task's own frame: the first one is this module's call of the function (and, for a coroutine,
    # those after it are asyncio.run's).
    trace = error.__traceback__.tb_next if error.__traceback__ is not None else None
    if is_async:
        trace = _past_asyncio(trace)
    text = "".join(traceback.format_exception(type(error), error, trace))
    if len(text) > MAX_TRACEBACK:
        half = MAX_TRACEBACK // 2
        text = f"{text[:half]}\n[... pheanq cut {len(text) - MAX_TRACEBACK} characters here ...]\n{text[-half:]}"
    names = [class_name(cls) for cls in type(error).__mro__ if issubclass(cls, BaseException)]
    return {"ok": False, "errors": names, "error": f"{type(error).__name__}: {_short(error)}",
            "traceback": _storable(text)}


def _past_asyncio(trace: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from its first frame outside asyncio (the task's coroutine); as it is when all are asyncio's."""
    found = trace
    while found is not None and found.tb_frame.f_code.co_filename.startswith(_ASYNCIO):
        found = found.tb_next
    return found if found is not None else trace


def _short(error: BaseException) -> str:
    try:
        text = _storable(str(error))
    except Exception:
        return "(its message cannot be shown)"
    return text if len(text) <= 300 else text[:297] + "..."


def _storable(text: str) -> str:
    """`text` as every database stores it: a lone surrogate (a file name read with surrogateescape, in a
    message) shown as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _flush_output() -> None:
    """Everything the task printed reaches the pipe before its outcome is said (the worker's own stream objects
    too: logging handlers made before the fork write through them, to fd 2)."""
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s}.values():
        with contextlib.suppress(Exception):
            stream.flush()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
