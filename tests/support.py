"""Helpers the tests share: a real beanstalkd, config files, pheanq processes, waiting with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import greenstalk
import pytest

from pheanq.config import Settings, load_settings
from pheanq.producer.service import TaskQueueService
from pheanq.status import Status
from pheanq.worker.child import process_ended
from pheanq.worker.claims import TaskClaims

SYSTEM_PYTHON = "/usr/bin/python3"


def need_second_local_user(what: str, same_python: bool = False) -> None:
    """Skip a test that acts as a second local user where this machine cannot make one (not root, no useradd,
    userdel or setpriv, or with `same_python` a system Python of another version than this one's): but fail
    it in CI (CI=true), where scripts/test installs what it needs, so that nothing is skipped there."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [tool for tool in ("useradd", "userdel", "setpriv") if shutil.which(tool) is None]
    if same_python and subprocess.run(
            [SYSTEM_PYTHON, "-c", f"import sys; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"],
            check=False).returncode != 0:
        missing.append(f"{SYSTEM_PYTHON} of Python {sys.version_info[0]}.{sys.version_info[1]}")
    if missing:
        skip_here_fail_in_ci(f"{what} needs {', '.join(missing)}")


def skip_here_fail_in_ci(reason: str) -> None:
    """Skip a test this machine cannot run, but fail it in CI (CI=true), where scripts/test provides what it needs
    (and runs as root), so that nothing is skipped there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: in CI, scripts/test provides it")
    pytest.skip(reason)


def job_state(server: Beanstalkd, job_id: int) -> str | None:
    """The state beanstalkd gives the job (ready, delayed, reserved, buried), or None once it is gone."""
    with greenstalk.Client(server.address, encoding=None) as client:
        try:
            return str(client.stats_job(job_id)["state"])
        except greenstalk.NotFoundError:
            return None


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
        time.sleep(interval)  # the poll of a deadline wait: how every test waits


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Beanstalkd:
    """A real beanstalkd on a free loopback port; `binlog_dir` makes it durable, `max_job_size` is its -z."""

    def __init__(self, binlog_dir: Path | None = None, max_job_size: int | None = None) -> None:
        self.binary = shutil.which("beanstalkd") or "/usr/bin/beanstalkd"
        if not os.path.exists(self.binary):
            raise RuntimeError("beanstalkd is not installed: run ./scripts/test, which installs it")
        self.port = free_port()
        self.binlog_dir = binlog_dir
        self.max_job_size = max_job_size
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def address_text(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Beanstalkd:
        for attempt in range(3):
            argv = [self.binary, "-l", "127.0.0.1", "-p", str(self.port)]
            if self.binlog_dir is not None:
                argv += ["-b", str(self.binlog_dir)]
            if self.max_job_size is not None:
                argv += ["-z", str(self.max_job_size)]
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(self._accepts, 10, f"beanstalkd on port {self.port}")
            except RuntimeError:
                # It exited: a first start may have lost its free port to another process meanwhile (tests run
                # in parallel); a restart must come back on its port.
                if self.started_once or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self.started_once = True
            break
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def _accepts(self) -> bool:
        """This beanstalkd listens on its port: not merely some process (which then makes it exit at once)."""
        import psutil

        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"beanstalkd exited with {self.process.returncode}")
        try:
            process = psutil.Process(self.process.pid)
            sockets = process.net_connections("tcp") if hasattr(process, "net_connections") else \
                process.connections("tcp")
        except psutil.Error:
            return False
        return any(sock.status == psutil.CONN_LISTEN and sock.laddr.port == self.port for sock in sockets)


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


def register_work_script(directory: Path, script: str) -> Path:
    """Write `script` (a Python task command whose first argument is the path of runs.txt) to task.py,
    register it in directory/pheanq.toml as the command `work`; returns the empty runs.txt it writes to."""
    path = directory / "task.py"
    path.write_text(textwrap.dedent(script))
    runs = directory / "runs.txt"
    runs.touch()
    write_config(directory, commands={"work": [sys.executable, str(path), str(runs)]})
    return runs


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


class PheanqProcess:
    """A long-running `pheanq COMMAND ARGS` process whose stdout and stderr lines are collected as they come."""

    def __init__(self, command: str, args: Sequence[str], env: Mapping[str, str], cwd: Path,
                 global_args: Sequence[str] = (), python: Sequence[str] = (sys.executable,)) -> None:
        """`python` is how Python is started: a command line that ends in exec (setpriv ... python3) keeps `pid`."""
        self.process = subprocess.Popen(
            [*python, "-m", "pheanq", *global_args, command, *args], env=dict(env), cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        )
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr_lines), daemon=True),
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

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code


class WorkerProcess(PheanqProcess):
    """A `pheanq task-worker` process: `lines` are its READY and BUSY <id> lines, `stdout_lines` every state
    line (with CHILD <pid> and EXITED <code>), `errors` its log."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path,
                 python: Sequence[str] = (sys.executable,)) -> None:
        super().__init__("task-worker", args, env, cwd, python=python)
        self.errors = self.stderr_lines

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout_lines if line.split(" ")[0] in ("READY", "BUSY")]

    def wait_line(self, line: str, timeout: float = 15) -> None:
        wait_for(lambda: line in self.lines, timeout, f"worker line {line!r} (got {self.lines[-5:]})")

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
    from pheanq.storage import Store
    from pheanq.storage.tables import metadata

    store = Store(url)
    try:
        with store.database.engine.begin() as conn:
            for name in [*metadata.tables, "pheanq_alembic_version"]:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    finally:
        store.close()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed pheanq command wrote on stderr; fails on a traceback or any other line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


class TcpProxy:
    """A loopback TCP forwarder to a real server, whose line can be cut and restored on the same port.

    It stands between pheanq and a real database to make an outage: `cut()` drops every connection and
    closes each new one at once, `restore()` forwards again. The port stays bound throughout, so no other
    server of a test running beside this one can take it while the line is cut.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._forwarding = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> TcpProxy:
        with self._lock:
            self._forwarding = True
            if self._listener is not None:
                return self
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(16)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._forwarding = False
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Cut the line and give the port up."""
        self.cut()
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                with self._lock:
                    if self._listener is not listener:
                        return  # closed: the port is given up
                # A client that gave up before it was accepted (ECONNABORTED): the proxy serves the next one. Had
                # this thread ended, every later connection would hang until its client's timeout.
                time.sleep(0.01)  # a listener that keeps failing must not spin: a moment before the next accept
                continue
            with self._lock:
                forwarding = self._forwarding
            if not forwarding:
                client.close()  # the line is cut: the connection ends at once, as a refused one would
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if not self._forwarding:
                    client.close()
                    server.close()
                    continue
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class TenderProcess(PheanqProcess):
    """A `pheanq worker-tender` process: `lines` are its stderr (its own log, and every worker line passed
    through as ``worker <pid>: <line>``). `stop()` ends it and everything below it."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path,
                 global_args: Sequence[str] = (), python: Sequence[str] = (sys.executable,)) -> None:
        super().__init__("worker-tender", args, env, cwd, global_args, python)
        self.lines = self.stderr_lines
        self.output = self.stdout_lines

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def tender_lines(self, text: str = "") -> list[str]:
        """The tender's own log lines (not its workers') that contain `text`."""
        mark = f" pheanq.tender[{self.pid}] "
        return [line for line in list(self.lines) if mark in line and text in line]

    def worker_lines(self, pid: int) -> list[str]:
        """What worker `pid` printed, as the tender passed it through (without the prefix)."""
        prefix = f"worker {pid}: "
        return [line[len(prefix):] for line in list(self.lines) if line.startswith(prefix)]

    def wait_log(self, text: str, timeout: float = 15, count: int = 1) -> list[str]:
        """Wait until `count` of the tender's own log lines contain `text`; returns them."""
        found: list[str] = wait_for(lambda: len(self.tender_lines(text)) >= count and self.tender_lines(text),
                                    timeout, f"{count} tender log line(s) with {text!r}; log:\n{self.log[-3000:]}")
        return found

    def workers(self) -> list[int]:
        """Pids of the tender's live child processes (its workers), zombies left out."""
        return psutil_children(self.pid)

    def descendants(self) -> list[int]:
        """Pids of every live process below the tender (workers and their task processes)."""
        return psutil_children(self.pid, recursive=True)

    def stop(self) -> None:
        """Kill the tender and whatever still runs below it (a test that failed half-way leaves no process)."""
        if self.process.poll() is None:
            below = psutil_processes(self.pid)
            self.process.kill()
            self.process.wait(10)
            for process in below:
                with contextlib.suppress(Exception):
                    process.kill()
        for reader in self._readers:
            reader.join(5)


def psutil_processes(pid: int) -> list[Any]:
    """Every descendant of `pid` as psutil.Process objects ([] when `pid` is gone)."""
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def psutil_children(pid: int, recursive: bool = False) -> list[int]:
    """Pids of the live (not zombie) children, or all descendants, of `pid`; [] when `pid` is gone."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=recursive)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child.pid)
    return alive


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs: it does not exist, or it is a zombie waiting to be reaped."""
    return process_ended(pid)


def kill_worker_once_its_command_exited(sqlite_url: str, tender: TenderProcess, worker_pid: int, code: int,
                                        go: Path) -> None:
    """Hold the SQLite database so that the worker cannot record its task's result, let the command end (by
    creating `go`), and SIGKILL the worker once it said ``EXITED <code>``: only its tender can record the end."""
    database = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30)
    database.execute("BEGIN IMMEDIATE")
    try:
        go.touch()
        wait_for(lambda: f"worker {worker_pid}: EXITED {code}" in tender.log, 20, "the worker to see its command end")
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: f"worker {worker_pid} died" in tender.log, 10, "the tender to see its worker die")
    finally:
        database.rollback()
        database.close()


def claims(service: TaskQueueService) -> TaskClaims:
    """The worker's side of `service`: reserve and claim tasks, and record how their attempts ended."""
    return TaskClaims(service.dispatch)


def finish_next(service: TaskQueueService, tube: str, status: Status) -> int:
    """Reserve the next task of `tube` and end its attempt `failed` or `done` (or leave it `working`)."""
    package = claims(service).reserve_task(tube, timeout=0)
    assert package is not None
    if status is Status.FAILED:
        assert claims(service).mark_failed(package, "it broke\n", 3)
    elif status is Status.DONE:
        assert claims(service).mark_done(package, None)
    return package.task_id


@contextlib.contextmanager
def folds_beside(url: str, threads: int = 4) -> Iterator[list[BaseException]]:
    """Fold the task counts (pheanq.storage.counts) a change at a time in `threads` threads, each on a store of its
    own, for as long as the block runs; yields the list of what they raised (empty when all went well)."""
    from pheanq.storage import Store, counts

    errors: list[BaseException] = []
    stop = threading.Event()

    def fold_until_stopped() -> None:
        folder = Store(url)
        try:
            while not stop.is_set():
                counts.fold(folder.database, page=1)
        except BaseException as error:  # whatever a thread met, the test reports
            errors.append(error)
        finally:
            folder.close()

    folders = [threading.Thread(target=fold_until_stopped) for _ in range(threads)]
    for folder in folders:
        folder.start()
    try:
        yield errors
    finally:
        stop.set()
        for folder in folders:
            folder.join(30)


# --- Python tasks: the test applications (pytasks.py and others beside this file) and the workers that import them


TESTS = Path(__file__).resolve().parent


def python_env(make_env: Callable[..., dict[str, str]], url: str, **extra: str) -> dict[str, str]:
    """A worker's environment in which `--import pytasks` (or another module of tests/) finds the test application."""
    return make_env(url, PYTHONPATH=str(TESTS), **extra)


def drain(start_worker: Callable[..., WorkerProcess], env: Mapping[str, str], *modules: str,
          timeout: float = 60) -> WorkerProcess:
    """Run a worker importing `modules` (default pytasks) until its tube is drained; it must exit 0."""
    imports = [arg for module in (modules or ("pytasks",)) for arg in ("--import", module)]
    worker: WorkerProcess = start_worker([*imports, "--stop-when-drained"], env)
    assert worker.wait(timeout) == 0, worker.log
    return worker


def log_of(service: TaskQueueService, task_id: int) -> str:
    """The task's log, which must have something in it."""
    log = service.find_task(task_id).log
    assert log is not None
    return log


def jobs_per_task(server: Beanstalkd, tube: str = "pheanq") -> dict[int, int]:
    """task id -> how many jobs of the tube (in any state) point at it, read with a plain client."""
    counts: dict[int, int] = {}
    with greenstalk.Client(server.address, encoding=None, use=tube) as client:
        try:
            stats: dict[str, Any] = dict(client.stats_tube(tube))
        except greenstalk.NotFoundError:
            return counts
        total = sum(int(stats[f"current-jobs-{state}"]) for state in ("ready", "reserved", "delayed", "buried"))
        for job_id in range(1, int(client.stats()["total-jobs"]) + 1):
            try:
                body = client.peek(job_id).body
            except greenstalk.NotFoundError:
                continue
            task_id = int(json.loads(body)["task_id"])
            counts[task_id] = counts.get(task_id, 0) + 1
    assert sum(counts.values()) == total
    return counts
