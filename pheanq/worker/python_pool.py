"""Python tasks in child processes of a worker that imported the application once.

The worker forks one child ahead of need and hands it each Python task it claims; the child runs it and says
how it went (pheanq.worker.python_child). A child serves `max_tasks_per_child` tasks (1: a fresh fork per
task), then it is replaced; so is a child that a stop killed, that died, or that uses more than
`max_child_memory` MB after a task. The fork happens while the worker is idle, between tasks, not while a
job waits.

The same guarantees as a command's child hold: the worker says ``CHILD <pid>`` before the child may start the
task; the child dies with its worker (PDEATHSIG); a time limit, a cancel, a lost lease or SIGINT stops the
child's whole process group (SIGTERM, then SIGKILL after a grace); what the task left running is killed when
it ends; its stdout and stderr (its `logging` output with them) are kept in bounded memory for its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from pheanq.dispatch import WorkPackage
from pheanq.python_call import PythonCall
from pheanq.retry import Retry
from pheanq.schedules import slot_text
from pheanq.task_context import progress_json
from pheanq.worker.child import BoundedOutput, exit_unreaped, stop_tree
from pheanq.worker.python_child import ChildPipes, child_main

log = logging.getLogger("pheanq.worker")

_READ_CHUNK = 65536
# How a stop for using too much memory starts (the attempt fails, where other stops hand the task back).
MEMORY_STOP = "its process used"
# How long a child that was told to stop (its pipe closed) gets to exit before it is killed.
RETIRE_SECONDS = 5.0
# The order that ends a child (python_child._serve): a pipe closed without it means that the worker died.
END_ORDER = b'{"end":true}\n'


@dataclasses.dataclass(frozen=True)
class PythonRun:
    """How one task's run in a child went."""

    exit_code: int                  # 0 returned, 1 raised; else the child's own exit (-N: signal N) when it died
    outcome: dict[str, Any] | None  # the child's report (result, error, traceback), None when it gave none
    output: str
    output_bytes: int
    stopped: str | None             # why the worker stopped the child, or None
    seconds: float
    progress: str | None            # the last progress the task reported, as JSON


class PythonPool:
    """The worker's Python child: forked ahead, given tasks one at a time, replaced when it must be."""

    def __init__(self, max_tasks_per_child: int, max_child_memory: int | None, max_output: int,
                 forget_in_child: Callable[[], None], state_output: int | None = None) -> None:
        self.max_tasks_per_child = max_tasks_per_child
        self.max_child_memory = max_child_memory
        self.max_output = max_output
        self.forget_in_child = forget_in_child
        # A copy of the worker's state-line output for the children (see pheanq.worker.python_child).
        self.state_output = os.dup(sys.stdout.fileno() if state_output is None else state_output)
        os.set_inheritable(self.state_output, False)
        self.child: _Child | None = None
        self.forks = 0

    def prepare(self) -> None:
        """Have a child ready for the next task (fork one now if there is none, or if it died while it waited)."""
        if self.child is not None and self.child.exit_seen() is not None:
            # An alarm a task left armed, a thread that called os._exit, the OOM killer: the next task must not be
            # handed to a dead child, and judged by its death without having started.
            code = self.child.reap()
            self.child.drain(BoundedOutput(self.max_output))
            log.warning("the Python child %d ended between tasks (%s); forking another", self.child.pid,
                        f"killed by signal {-code}" if code < 0 else f"exit code {code}")
            self.child = None
        if self.child is None:
            self.child = self._fork()

    def run(self, package: WorkPackage, call: PythonCall, keep_running: Callable[[], str | None],
            on_start: Callable[[int], None], on_exit: Callable[[int], None],
            on_progress: Callable[[str], None], poll_seconds: float = 0.2) -> PythonRun:
        """Run the task in the child, to its end or until `keep_running()` gives a reason to stop it."""
        self.prepare()
        child = self.child
        assert child is not None
        started = time.monotonic()
        output = BoundedOutput(self.max_output)
        on_start(child.pid)
        order = {"task_id": package.task_id, "name": call.name, "args": call.args, "kwargs": call.kwargs,
                 "attempt": package.attempt, "batch_id": package.row.batch_id,
                 "scheduled_for": None if package.row.scheduled_for is None else slot_text(package.row.scheduled_for),
                 # What the child tells the tender of an exception the task's retry policy does not retry.
                 "final_errors": sorted(Retry.from_json(package.row.retry).error_names)}
        child.send((json.dumps(order, separators=(",", ":"), ensure_ascii=False) + "\n").encode())
        stopped: str | None = None
        outcome: dict[str, Any] | None = None
        progress: str | None = None

        def take(messages: list[dict[str, Any]]) -> None:
            nonlocal outcome, progress
            for message in messages:
                if message.get("task_id") != package.task_id:
                    continue  # not about this task: a thread an earlier task left running reports its progress
                if "progress" in message:
                    reported = progress_json(message["progress"])
                    if reported is not None:
                        progress = reported
                        on_progress(progress)
                elif "ok" in message and outcome is None:
                    outcome = message

        next_check = started + poll_seconds
        while outcome is None:
            now = time.monotonic()
            if now >= next_check:
                stopped = keep_running() or self._over_memory(child)
                if stopped is not None:
                    # An outcome that came meanwhile wins: the function completed, and is not run again.
                    take(child.pending_messages())
                    if outcome is not None:
                        stopped = None
                    break
                next_check = now + poll_seconds
            take(child.wait(next_check - now, output))
            if outcome is None and child.exit_seen() is not None:
                # Whatever it said before it ended is in the pipe now: its outcome may be there, unread.
                take(child.pending_messages())
                break
        if stopped is not None:
            stop_tree(child.pid)
            code = child.reap()
            # The child holds SIGTERM back from its EXITED line to its outcome: a stop that came in between let it
            # finish saying how the task went, and the function's completion wins over the stop.
            take(child.pending_messages())
            if outcome is not None:
                stopped, code = None, 0 if outcome.get("ok") is True else 1
        elif outcome is None:  # the child ended by itself without saying how the task went: a crash, os._exit
            code = child.exit_seen() or 0
            on_exit(code)
            child.reap()
        else:
            code = 0 if outcome.get("ok") is True else 1
            child.served += 1
        child.drain(output)
        self._after_task(child)
        return PythonRun(code, outcome, output.render(), output.total, stopped, time.monotonic() - started, progress)

    def close(self) -> None:
        """Stop the child (it ends on its end order), then close the worker's copy of its output."""
        if self.child is not None:
            self.child.retire()
            self.child = None
        with contextlib.suppress(OSError):
            os.close(self.state_output)

    def _after_task(self, child: _Child) -> None:
        """Kill what the task left running; replace the child when it ended, served its share or grew too big."""
        if child.ended:
            self.child = None
            return
        child.kill_descendants()
        if child.served >= self.max_tasks_per_child or self._over_memory(child) is not None:
            child.retire()
            self.child = None

    def _over_memory(self, child: _Child) -> str | None:
        if self.max_child_memory is None:
            return None
        try:
            used = psutil.Process(child.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None
        if used <= self.max_child_memory:
            return None
        return f"{MEMORY_STOP} {used:.0f} MB, more than max_child_memory ({self.max_child_memory} MB)"

    def _fork(self) -> _Child:
        if threading.active_count() > 1:
            log.warning("forking a Python task child while this worker runs %d threads: only the forking thread "
                        "exists in the child", threading.active_count())
        tasks_read, tasks_write = os.pipe()
        messages_read, messages_write = os.pipe()
        output_read, output_write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            for fd in (tasks_write, messages_read, output_read):
                os.close(fd)
            state = os.dup(self.state_output)
            os.set_inheritable(state, False)
            child_main(ChildPipes(tasks_read, messages_write, output_write, state), parent,
                       self.max_tasks_per_child, self.forget_in_child)
        for fd in (tasks_read, messages_write, output_write):
            os.close(fd)
        self.forks += 1
        return _Child(pid, tasks_write, messages_read, output_read)


class _Child:
    """One forked child, seen from its worker: its pipes, its pid (and pidfd), how many tasks it ran."""

    def __init__(self, pid: int, tasks: int, messages: int, output: int) -> None:
        self.pid = pid
        self.tasks: int | None = tasks
        self.messages: int | None = messages
        self.output: int | None = output
        self.served = 0
        self.ended = False
        self._pending = bytearray()
        self.selector = selectors.DefaultSelector()
        self.selector.register(messages, selectors.EVENT_READ)
        self.selector.register(output, selectors.EVENT_READ)
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ)

    def send(self, data: bytes) -> None:
        """Hand the child a task; a child that is gone finds out by itself (its exit is seen next)."""
        if self.tasks is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.tasks, view):]
        except BrokenPipeError:
            pass  # the child died before its task: the worker sees its exit and its output says why

    def wait(self, seconds: float, output: BoundedOutput) -> list[dict[str, Any]]:
        """Read output and messages for at most `seconds` (or until the child exits); the messages that came."""
        messages: list[dict[str, Any]] = []
        for key, _ in self.selector.select(max(0.0, seconds)):
            if key.fileobj == self.output:
                self._read_output(output)
            elif key.fileobj == self.messages:
                messages.extend(self._read_messages())
        return messages

    def pending_messages(self) -> list[dict[str, Any]]:
        """The messages already in the pipe, without waiting for more."""
        messages: list[dict[str, Any]] = []
        if self.messages is None:
            return messages
        os.set_blocking(self.messages, False)
        try:
            while self.messages is not None:
                try:
                    messages.extend(self._read_messages())
                except BlockingIOError:
                    break
        finally:
            if self.messages is not None:
                os.set_blocking(self.messages, True)
        return messages

    def exit_seen(self) -> int | None:
        """The child's exit code once it has ended (-N: signal N), without reaping it; else None."""
        try:
            return exit_unreaped(self.pid)
        except ChildProcessError:
            return -9

    def reap(self) -> int:
        """Wait for the child's end; its exit code (-N: signal N)."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 9
        self.ended = True
        return os.waitstatus_to_exitcode(status)

    def drain(self, output: BoundedOutput) -> None:
        """Read what the task printed that is still in the pipe (everything, once the child said its outcome)."""
        if self.output is None:
            return
        os.set_blocking(self.output, False)
        try:
            while self._read_output(output):
                pass
        finally:
            if self.output is not None:
                os.set_blocking(self.output, True)
        if self.ended:
            self._close()

    def kill_descendants(self) -> None:
        """Kill the processes the task started and left running: a task is over when its function is."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as listing:
                if not listing.read().split():
                    return
        except OSError:
            pass  # no such listing here: ask psutil
        with contextlib.suppress(psutil.Error):
            for leftover in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    leftover.kill()

    def retire(self) -> None:
        """Tell the child to end and close its task pipe, wait for it a moment, then kill it if it is still there. (A
        pipe that closes with no end order means its worker died: the child then dies by SIGKILL.)"""
        if self.tasks is not None:
            with contextlib.suppress(OSError):  # a child that is gone already
                os.write(self.tasks, END_ORDER)
            os.close(self.tasks)
            self.tasks = None
        deadline = time.monotonic() + RETIRE_SECONDS
        while self.exit_seen() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.exit_seen() is None:
            stop_tree(self.pid)
        self.reap()
        self._close()

    def _read_output(self, output: BoundedOutput) -> bool:
        assert self.output is not None
        try:
            chunk = os.read(self.output, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno == errno.EAGAIN:
                return False
            raise
        if not chunk:
            self.selector.unregister(self.output)
            os.close(self.output)
            self.output = None
            return False
        output.add(chunk)
        return True

    def _read_messages(self) -> list[dict[str, Any]]:
        assert self.messages is not None
        chunk = os.read(self.messages, _READ_CHUNK)
        if not chunk:
            self.selector.unregister(self.messages)
            os.close(self.messages)
            self.messages = None
            return []
        self._pending += chunk
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not the child's (something the task started wrote on its pipe): not a message
            if isinstance(message, dict):
                messages.append(message)
        return messages

    def _close(self) -> None:
        for name in ("tasks", "messages", "output"):
            fd = getattr(self, name)
            if fd is not None:
                if name != "tasks":
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(fd)
                os.close(fd)
                setattr(self, name, None)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.selector.close()
