"""Helpers the tests share: a real beanstalkd, config files, pheanq processes, waiting with deadlines."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pheanq.config import Settings, load_settings


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
              interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Beanstalkd:
    """A real beanstalkd on a free loopback port; `binlog_dir` makes it durable."""

    def __init__(self, binlog_dir: Path | None = None) -> None:
        self.binary = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
        if not os.path.exists(self.binary):
            raise RuntimeError("beanstalkd is not installed: run ./scripts/test, which installs it")
        self.port = free_port()
        self.binlog_dir = binlog_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def address_text(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Beanstalkd:
        argv = [self.binary, "-l", "127.0.0.1", "-p", str(self.port)]
        if self.binlog_dir is not None:
            argv += ["-b", str(self.binlog_dir)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._accepts, 10, f"beanstalkd on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"beanstalkd exited with {self.process.returncode}")
        try:
            socket.create_connection(self.address, timeout=0.5).close()
            return True
        except OSError:
            return False


def write_config(directory: Path, commands: Mapping[str, Sequence[str]] | None = None, **settings: Any) -> Path:
    """A pheanq.toml in `directory` with these settings and [commands]."""
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    if commands:
        lines.append("[commands]")
        for name, argv in commands.items():
            lines.append(f'"{name}" = {_toml(list(argv))}')
    path = directory / "pheanq.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def settings_for(database_url: str, beanstalkd: Beanstalkd, **values: Any) -> Settings:
    return load_settings({"database_url": database_url, "beanstalkd": beanstalkd.address_text, **values},
                         environ={})


def pheanq(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 60,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `pheanq` command to its end."""
    return subprocess.run([sys.executable, "-m", "pheanq", *args], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=input_text)


class WorkerProcess:
    """A `pheanq task-worker` process whose state lines (READY, BUSY <id>) are collected as they come."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pheanq", "task-worker", *args], env=dict(env), cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_line(self, line: str, timeout: float = 15) -> None:
        wait_for(lambda: line in self.lines, timeout, f"worker line {line!r} (got {self.lines[-5:]})")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def log(self) -> str:
        return "\n".join(self.errors)



def server_database_urls() -> dict[str, str]:
    """The server databases the tests may use, by kind: PHEANQ_TEST_POSTGRES_URL and PHEANQ_TEST_MYSQL_URL."""
    urls = {"postgresql": os.environ.get("PHEANQ_TEST_POSTGRES_URL"), "mysql": os.environ.get("PHEANQ_TEST_MYSQL_URL")}
    return {kind: url for kind, url in urls.items() if url}


def drop_pheanq_tables(url: str) -> None:
    """Make `url` a never-upgraded database again: pheanq's table and its alembic version table dropped."""
    from pheanq.store import Store

    store = Store(url)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS pheanq_task")
            conn.exec_driver_sql("DROP TABLE IF EXISTS pheanq_alembic_version")
    finally:
        store.close()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed pheanq command wrote on stderr; fails on a traceback or any other line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]
