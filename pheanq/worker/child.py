"""Run one task's command as a child process: an argv list (never parsed by a shell), its own process group,
stdout and stderr captured together in bounded memory, the whole tree killed when it must stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import psutil

from pheanq.worker.protocol import under_tender

# How long a child asked to stop with SIGTERM gets before SIGKILL: time to clean up. The docs state it wherever
# a command is stopped (a cancel, a time limit, SIGINT); tests/test_cancel.py holds them to it.
STOP_GRACE_SECONDS = 3.0
# No gate holds the command back until its pid is known: it runs in a process group of its own inside its worker's
# session, so if the worker dies before telling its tender the pid (a command that already ended, its result not
# recorded), the tender still finds the command among the processes it adopts, by that session, and reads its
# exit status before reaping it (see pheanq.tender.orphans). A gate would cost a second exec per task.
_READ_CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class ChildResult:
    exit_code: int          # the child's exit code; -N when signal N ended it
    output: str             # head and tail of stdout+stderr, with a marker where it was cut
    output_bytes: int       # everything the child printed, cut or not
    stopped: str | None     # why pheanq stopped the child, or None when it ended by itself
    seconds: float


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    max_output: int,
    keep_running: Callable[[], str | None],
    poll_seconds: float = 0.2,
    on_start: Callable[[int], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> ChildResult:
    """Run `argv` to its end. Every `poll_seconds`, `keep_running()` may return a reason to stop it.

    `on_start(pid)` is called once the child runs, and `on_exit(code)` the moment it is seen to have
    ended by itself, before its last output is read: a supervisor told then knows the outcome even if
    this process dies before it records it.

    Output is read in this thread with a selector (no reader thread), and no Python code runs in the
    forked child, so the cost of starting a command stays close to a bare fork and exec.
    """
    started = time.monotonic()
    output = BoundedOutput(max_output)
    unstartable = _why_not_startable(argv[0], env)
    if unstartable is not None:
        code, reason = unstartable
        return ChildResult(code, f"cannot start {argv[0]!r}: {reason}", 0, None, time.monotonic() - started)
    prefix, arm = die_with_parent(signal.SIGKILL, covered=under_tender())
    try:
        process = subprocess.Popen(
            [*prefix, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(env), **_own_group(arm),
        )
    except OSError as error:
        message = f"cannot start {argv[0]!r}: {error.strerror or error}"
        return ChildResult(127 if isinstance(error, FileNotFoundError) else 126, message,
                           0, None, time.monotonic() - started)
    assert process.stdout is not None
    if on_start is not None:
        on_start(process.pid)
    events = _ChildEvents(process, output)
    stopped: str | None = None
    # Descendants seen while the child ran: one that left the group (setsid) is found again by this.
    seen: dict[int, psutil.Process] = {}
    next_check = started + poll_seconds
    while _exit_seen(process) is None:
        now = time.monotonic()
        if now >= next_check:
            seen.update((p.pid, p) for p in _descendants(process.pid))
            stopped = keep_running()
            if stopped is not None:
                stop_tree(process.pid, child=process)
                process.wait()
                break
            next_check = now + poll_seconds
        events.wait(next_check - now)
    ended = _exit_seen(process)
    if stopped is None and on_exit is not None and ended is not None:
        on_exit(ended)
    process.wait()  # reaped only now, after on_exit: until then, a supervisor could reap it if this process died
    # What the command left behind ends with it: a task is over when its command is.
    _signal_group(process.pid, signal.SIGKILL)
    for leftover in seen.values():
        with contextlib.suppress(psutil.Error):
            leftover.kill()  # psutil refuses when the pid was reused by another process
    events.drain(deadline=time.monotonic() + 5)
    return ChildResult(process.returncode, output.render(), output.total, stopped, time.monotonic() - started)


def stop_tree(pid: int, grace: float = STOP_GRACE_SECONDS, child: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the child's process group and every descendant, then SIGKILL what is left after `grace`.

    Pass `child`, the Popen of `pid`, when `pid` is this process's own child: it is then waited for through
    the Popen, so its exit code is kept (psutil would reap it and leave the Popen a made-up code 0).
    """
    started = time.monotonic()
    descendants = _descendants(pid)
    _signal_group(pid, signal.SIGTERM)
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    leader = _process(pid) if child is None else None
    alive = _wait_gone([p for p in [leader, *descendants] if p is not None], grace)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.0, grace - (time.monotonic() - started)))
    _signal_group(pid, signal.SIGKILL)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


class BoundedOutput:
    """Keeps the first and the last `limit / 2` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail.popleft())

    def render(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > self.tail_limit:
            tail = tail[-self.tail_limit:]
        cut = self.total - len(self.head) - len(tail)
        text = self.head.decode("utf-8", errors="replace")
        if cut > 0:
            text += f"\n[... pheanq cut {cut} bytes of output here ...]\n"
        return text + tail.decode("utf-8", errors="replace")


class _ChildEvents:
    """Waits for the child's output or its exit, whichever comes first, without polling.

    The exit is a pidfd in the same selector as the output pipe (Linux 5.3+); elsewhere, once the pipe
    is closed, the wait falls back to Popen's own polling.
    """

    def __init__(self, process: subprocess.Popen[bytes], output: BoundedOutput) -> None:
        assert process.stdout is not None
        self.process = process
        self.stream: IO[bytes] | None = process.stdout
        self.output = output
        self.selector = selectors.DefaultSelector()
        self.selector.register(process.stdout, selectors.EVENT_READ)
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(process.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ)

    def wait(self, seconds: float) -> None:
        """Read output, or wait for the exit, for at most `seconds`."""
        if self.stream is None and self.pidfd is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=max(0.0, seconds))
            return
        for key, _ in self.selector.select(max(0.0, seconds)):
            if key.fileobj is self.stream:
                self._read()

    def drain(self, deadline: float) -> None:
        """Read what is left in the pipe once the child and its group are gone, then close everything."""
        while self.stream is not None and time.monotonic() < deadline:
            if self.selector.select(max(0.0, deadline - time.monotonic())):
                self._read()
        if self.stream is not None:
            self._close_stream()
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.selector.close()

    def _read(self) -> None:
        assert self.stream is not None
        chunk = os.read(self.stream.fileno(), _READ_CHUNK)
        if chunk:
            self.output.add(chunk)
        else:
            self._close_stream()

    def _close_stream(self) -> None:
        assert self.stream is not None
        self.selector.unregister(self.stream)
        self.stream.close()
        self.stream = None


def _why_not_startable(program: str, env: Mapping[str, str]) -> tuple[int, str] | None:
    """(exit code, reason) like a shell's 127 / 126 when `program` cannot be run, else None."""
    path = program if os.sep in program else shutil.which(program, path=env.get("PATH", os.defpath))
    if path is None or not os.path.exists(path):
        return 127, "No such file or directory"
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return 126, "Permission denied"
    return None


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has ended; returns those still running after `timeout`.

    A zombie has ended: waiting for its reaper (init, often slow in containers) would only delay the stop.
    """
    deadline = time.monotonic() + timeout
    alive = processes
    while True:
        alive = [process for process in alive if _running(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_ended(pid: int) -> bool:
    """True once process `pid` no longer runs: it does not exist, or it is a zombie its parent has not reaped."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    process = _process(pid)
    if process is None:
        return []
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _exit_seen(process: subprocess.Popen[bytes]) -> int | None:
    """The child's exit code once it has ended, or None; without reaping it (waitid with WNOWAIT). A child
    reaped before `on_exit` has told the supervisor its code would leave the supervisor nothing to reap if
    this process were killed in between: the command's completion would be lost, and it would run again."""
    if process.returncode is not None or not hasattr(os, "waitid"):
        return process.poll()
    try:
        return exit_unreaped(process.pid)
    except ChildProcessError:
        return process.poll()


def exit_unreaped(pid: int) -> int | None:
    """The exit code (-N: signal N) of this process's child `pid` once it has ended, leaving it unreaped (waitid
    with WNOWAIT); None while it runs. ChildProcessError when `pid` is no child of this process (any more)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _own_group(arm: Callable[[], None] | None) -> dict[str, Any]:
    """Popen's keywords for a child in a process group of its own (and in this process's session), armed by
    `arm` in the fork if given. Python 3.11 does it without Python code in the fork (the fast spawn path)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0, "preexec_fn": arm}

    def own_group_then_arm() -> None:
        os.setpgid(0, 0)
        if arm is not None:
            arm()

    return {"preexec_fn": own_group_then_arm}


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@functools.cache
def die_with_parent(signum: int, covered: bool = False) -> tuple[tuple[str, ...], Callable[[], None] | None]:
    """How a child gets `signum` when its parent dies, even by kill -9 (Linux's PR_SET_PDEATHSIG).

    A `preexec_fn` sets it from Python inside the fork and checks that the parent still lives once it is set, so
    no child ever outlives a parent that died at its start; but it forbids the fast spawn path: about 3 ms a
    task. util-linux's `setpriv --pdeathsig` sets it and execs the command: about 1 ms a task, but a parent that
    dies in the millisecond before setpriv sets it leaves the child running. Pass `covered` when someone else
    deals with such a child (a worker-tender kills what its dead worker left: pheanq.tender.orphans) to take
    setpriv. Returns (argv prefix, preexec_fn).
    """
    setpriv = shutil.which("setpriv")
    if covered and setpriv is not None and sys.platform.startswith("linux"):
        return (setpriv, "--pdeathsig", signal.Signals(signum).name.removeprefix("SIG"), "--"), None
    prctl = linux_prctl()
    if prctl is None:
        return (), None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def arm() -> None:
        prctl(pr_set_pdeathsig, signum)
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            os._exit(137)

    return (), arm


@functools.cache
def linux_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl: Callable[..., int] = ctypes.CDLL(libc_name, use_errno=True).prctl
    return prctl
