"""Run one task's command as a child process: an argv list, no shell, its own process group,
stdout and stderr captured together in bounded memory, the whole tree killed when it must stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import psutil

# How long a child asked to stop with SIGTERM gets before SIGKILL.
STOP_GRACE_SECONDS = 3.0
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
) -> ChildResult:
    """Run `argv` to its end. Every `poll_seconds`, `keep_running()` may return a reason to stop it."""
    started = time.monotonic()
    output = BoundedOutput(max_output)
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(env), start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
        )
    except OSError as error:
        message = f"cannot start {argv[0]!r}: {error.strerror or error}"
        return ChildResult(127 if isinstance(error, FileNotFoundError) else 126, message,
                           0, None, time.monotonic() - started)
    assert process.stdout is not None
    reader = threading.Thread(target=output.read_all, args=(process.stdout,), daemon=True)
    reader.start()
    stopped: str | None = None
    while True:
        try:
            process.wait(timeout=poll_seconds)
            break
        except subprocess.TimeoutExpired:
            pass
        stopped = keep_running()
        if stopped is not None:
            stop_tree(process.pid)
            process.wait()
            break
    # What the command left behind in its group ends with it: a task is over when its command is.
    _signal_group(process.pid, signal.SIGKILL)
    reader.join(timeout=5)
    return ChildResult(process.returncode, output.render(), output.total, stopped, time.monotonic() - started)


def stop_tree(pid: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the child's process group and every descendant, then SIGKILL what is left after `grace`."""
    descendants = _descendants(pid)
    _signal_group(pid, signal.SIGTERM)
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs([p for p in [_process(pid), *descendants] if p is not None], timeout=grace)
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

    def read_all(self, stream: IO[bytes]) -> None:
        read = getattr(stream, "read1", stream.read)
        while chunk := read(_READ_CHUNK):
            self.add(chunk)

    def render(self) -> str:
        tail = b"".join(self.tail)
        if len(tail) > self.tail_limit:
            tail = tail[-self.tail_limit:]
        cut = self.total - len(self.head) - len(tail)
        text = self.head.decode("utf-8", errors="replace")
        if cut > 0:
            text += f"\n[... pheanq cut {cut} bytes of output here ...]\n"
        return text + tail.decode("utf-8", errors="replace")


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


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """On Linux, the child gets SIGKILL when the worker dies, even by kill -9 (PR_SET_PDEATHSIG)."""
    prctl = _prctl()
    if prctl is None:
        return None
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the worker died before the line above took effect
            os._exit(137)

    return arm


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl: Callable[..., int] = ctypes.CDLL(libc_name, use_errno=True).prctl
    return prctl
