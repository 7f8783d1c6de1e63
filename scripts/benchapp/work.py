"""The workloads: a no-op, 5 ms of CPU, and a function of an application whose import costs ~300 ms."""

from __future__ import annotations

import os
import time


def noop(key: str, out: str) -> None:
    _record(key, out, time.time())


def cpu(key: str, out: str) -> None:
    started = time.time()
    deadline = time.process_time() + 0.005
    while time.process_time() < deadline:
        pass
    _record(key, out, started)


def heavy(key: str, out: str) -> None:
    started = time.time()
    from benchapp import heavy_app  # ~300 ms the first time in a process, nothing after

    heavy_app.handle()
    _record(key, out, started)


WORKLOADS = {"noop": noop, "cpu": cpu, "heavy": heavy}


def _record(key: str, out: str, started: float) -> None:
    # One write of one line with O_APPEND: lines of concurrent workers never interleave.
    line = f"{key} {started:.6f} {time.time():.6f}\n".encode()
    descriptor = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
