"""Fault injection: prove that a task `queue_task()` accepted ends `done`, and that no task whose command
completed is run again, while workers, beanstalkd, the database and the tender are knocked over.

Each scenario gets its own temp directory, its own beanstalkd on a free loopback port, its own database
(a fresh SQLite file unless --database-url is given; the PostgreSQL scenario always starts a private,
throwaway cluster), a pheanq.toml registering one command, ``chaos``, which sleeps for the task's argument
and then appends its task id (``$PHEANQ_TASK_ID``) to ``ran.txt`` with one short O_APPEND write (the
``python-*`` scenarios queue the Python task of chaostasks.py instead, which does the same in a worker's
forked child). pheanq is
driven only through its public surface: ``TaskQueueService.queue_task`` in this process, and the CLI
(``db upgrade``, ``worker-tender``, ``reconcile``, ``buried``, ``status``) in child processes.

Per scenario one line::

    <scenario>: queued N, done N, failed 0, lost 0, ran twice 0 (notes)

`lost` and `ran twice` are each counted twice, independently: from ran.txt (a queued id never written;
an id written more than once) and from the table (a queued id not `done`; a log with more than one
completed attempt). The line shows the worse of the two; --json has both. A run killed half-way and
run again is expected and is not "ran twice": the note says how many re-runs there were.

Exit code 0 only when every scenario has done == queued, failed 0, lost 0, ran twice 0 and no problem
of its own (hostile jobs not buried, a worker crash loop, a timeout); 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import glob
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import chaos_schedules
import greenstalk
import psutil
import sqlalchemy as sa
from chaos_limits import limits_under_kills
from chaostasks import sleep_and_record

from pheanq import TaskDescription, TaskPendingWarning, TaskQueueService, load_settings
from pheanq.errors import PheanqError
from pheanq.storage.engine import create_engine

DEFAULT_TASKS = 2000
DEFAULT_HOSTILE = 1000
COMMAND = "chaos"
# $1 is ran.txt (part of the registered prefix), $2 the task's duration. echo is a shell builtin: the id
# goes out in one write(2) on an O_APPEND descriptor, so concurrent lines never interleave.
TASK_SCRIPT = 'sleep "$2"; echo "$PHEANQ_TASK_ID" >> "$1"'
POLL_SECONDS = 0.2
# While waiting for the last tasks: with no progress for this long, an operator would run `pheanq reconcile`.
RECONCILE_WHEN_STUCK_SECONDS = 2.5
TENDER_RECONCILE_INTERVAL = 5.0
# A tender's log line when a worker start fails quickly (pheanq/tender.py): the crash-loop rule applies.
CRASH_LOOP_MARK = "in a row); next start in"
WORKER_DIED_MARK = re.compile(r"worker \d+ died \(")
# A tender's reconciler pass that sent jobs again (pheanq.tender.reconciler: "reconciled tube T: ... sent again N").
TENDER_RESENT_MARK = re.compile(r"reconciled tube \S+: .*?sent again (\d+)")
COMPLETED_ATTEMPT = re.compile(r"^--- attempt \d+ on \S+: (done|failed)\b", re.MULTILINE)
BEANSTALKD = "/usr/bin/beanstalkd"
SCRIPTS = Path(__file__).resolve().parent


# --- what a run is asked, and what a scenario found -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every scenario of one run is asked to do."""

    tasks: int = DEFAULT_TASKS
    hostile: int = DEFAULT_HOSTILE
    database_url: str | None = None     # None: a fresh SQLite file per scenario
    seed: int = 0
    keep: bool = False                  # keep every scenario's directory (a failed one's is always kept)


@dataclasses.dataclass
class Outcome:
    """What one scenario found: the counts of its line, both ways, and what went wrong besides."""

    scenario: str
    queued: int = 0
    done: int = 0
    failed: int = 0
    lost_file: int = 0
    lost_table: int = 0
    twice_file: int = 0
    twice_table: int = 0
    extra: int = 0          # ids in ran.txt that queue_task never returned (a queue_task that raised late)
    reruns: int = 0         # attempts beyond the first: runs interrupted half-way and run again
    pending: int = 0        # queue_task calls that warned TaskPendingWarning
    seconds: float = 0.0
    figures: dict[str, int] = dataclasses.field(default_factory=dict)  # a scenario's own counts (kills, ...)
    notes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    directory: str | None = None

    @property
    def lost(self) -> int:
        return max(self.lost_file, self.lost_table)

    @property
    def ran_twice(self) -> int:
        return max(self.twice_file, self.twice_table)

    @property
    def ok(self) -> bool:
        return (self.queued > 0 and self.done == self.queued and self.failed == 0 and self.lost == 0
                and self.ran_twice == 0 and not self.problems)

    def line(self) -> str:
        note = [*self.notes, f"{self.reruns} run(s) interrupted half-way and re-run"]
        if self.pending:
            note.append(f"{self.pending} queued while beanstalkd was unreachable")
        if self.extra:
            note.append(f"{self.extra} unreturned id(s) ran")
        note += [f"PROBLEM: {problem}" for problem in self.problems]
        note.append(f"{self.seconds:.1f}s")
        return (f"{self.scenario}: queued {self.queued}, done {self.done}, failed {self.failed}, lost {self.lost}, "
                f"ran twice {self.ran_twice} ({'; '.join(note)})")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lost": self.lost, "ran_twice": self.ran_twice, "ok": self.ok}


class ScenarioFailed(Exception):
    """A scenario cannot go on (a process would not start, a deadline passed); the message says what."""


# --- every process this script starts is stopped at the end, on error and on Ctrl-C -------------------------

_processes: list[subprocess.Popen[bytes]] = []
_clusters: list[PostgresCluster] = []


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a process in its own session (a Ctrl-C on the terminal reaches only this script, which then
    stops everything in order), killed by the kernel if this script dies (setpriv --pdeathsig)."""
    prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    process: subprocess.Popen[bytes] = subprocess.Popen(
        [*prefix, *argv], stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
    _processes.append(process)
    return process


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and everything below it (a tender's workers and their task processes)."""
    below = []
    with contextlib.suppress(psutil.Error):
        below = psutil.Process(process.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    for child in below:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if process in _processes:
        _processes.remove(process)


def stop_everything() -> None:
    # Newest first: tenders before the beanstalkd and the database they talk to.
    for process in reversed(list(_processes)):
        kill_tree(process)
    for cluster in list(_clusters):
        cluster.remove()


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: stop, clean up, exit 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


# --- waiting with deadlines --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = POLL_SECONDS) -> Any:
    """Poll `condition` until it is truthy; ScenarioFailed naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)  # the poll of a deadline wait


# A worker's state line as its tender passes it on: `worker <pid>: CHILD <pid>` (see pheanq.worker.protocol).
_WORKER_STATE = re.compile(r"^worker (\d+): (READY|BUSY|CHILD|EXITED)(?: -?\d+)?$")


def pause(seconds: float) -> None:
    """The harness's own pacing between two faults (not a wait for a condition)."""
    time.sleep(seconds)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# --- the servers -------------------------------------------------------------------------------------------


class Beanstalkd:
    """A beanstalkd on a loopback port that stays the same across restarts; `binlog_dir` makes it durable."""

    def __init__(self, binlog_dir: Path | None = None) -> None:
        self.binary = shutil.which("beanstalkd") or BEANSTALKD
        self.binlog_dir = binlog_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        for _attempt in range(5):
            port = self.port or free_port()
            argv = [self.binary, "-l", "127.0.0.1", "-p", str(port)]
            if self.binlog_dir is not None:
                argv += ["-b", str(self.binlog_dir)]
            process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._answers(process, port):
                self.process, self.port = process, port
                return
            kill_tree(process)
            if self.port:  # a restart must come back on its port: wait for the old socket to go
                pause(0.2)
        raise ScenarioFailed(f"beanstalkd would not start (port {self.port or 'any free one'})")

    @staticmethod
    def _answers(process: subprocess.Popen[bytes], port: int) -> bool:
        with contextlib.suppress(ScenarioFailed):
            wait_until(lambda: process.poll() is not None or port_answers(port), 10, f"beanstalkd on port {port}",
                       0.02)
        return process.poll() is None and port_answers(port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            kill_tree(self.process)
            self.process = None

    def client(self, tube: str) -> greenstalk.Client[bytes]:
        return greenstalk.Client(("127.0.0.1", self.port), encoding=None, use=tube, watch=tube)


class PostgresCluster:
    """A private, throwaway PostgreSQL cluster on a free port of `listen` (loopback unless told; trust auth), run
    as user postgres when this script runs as root, with `settings` as extra server settings (-c NAME=VALUE).
    Never the machine's own server."""

    def __init__(self, listen: str = "127.0.0.1", settings: Mapping[str, str] | None = None) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        if not found and shutil.which("initdb") is None:
            raise ScenarioFailed("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
        self.bindir = Path(found[-1]).parent if found else Path(shutil.which("initdb") or "").parent
        self.root = Path(tempfile.mkdtemp(prefix="pheanq-chaos-pg-"))
        self.data = self.root / "data"
        self.listen = listen
        self.settings = dict(settings or {})
        self.port = free_port(listen)
        self.as_owner: list[str] = []
        _clusters.append(self)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.listen}:{self.port}/postgres"

    def start(self, timeout: float = 30) -> None:
        """Start it, again and again until the deadline: after a crash, the old backends may still hold
        the shared memory for a moment."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.listen} -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        deadline = time.monotonic() + timeout
        while True:
            result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "20",
                               "-o", options, "start", check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"PostgreSQL would not start: {result.stdout.strip()[-300:]}")
            pause(0.5)  # the crashed server's processes are still going away

    def restart_fast(self) -> None:
        # -l as at the start: the new postmaster must not inherit this script's pipes (run() would wait on them).
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30", "-m", "fast",
                  "restart")

    def crash(self) -> None:
        """SIGKILL the postmaster and all its processes, as a crash of the server would."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(pid)
            family = [server, *server.children(recursive=True)]
            for process in family:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(family, timeout=10)
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self, keep_log: Path | None = None) -> None:
        if self.postmaster_pid() is not None:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "20", "stop", check=False)
            self.crash()
        if keep_log is not None:
            with contextlib.suppress(OSError):
                shutil.copy(self.root / "server.log", keep_log)
        shutil.rmtree(self.root, ignore_errors=True)
        if self in _clusters:
            _clusters.remove(self)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.as_owner, str(self.bindir / tool), *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and result.returncode != 0:
            raise ScenarioFailed(f"{tool} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        return result


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


# --- one scenario's world ------------------------------------------------------------------------------------


class Tender:
    """A `pheanq worker-tender` process; its stderr (its log and every worker's lines) goes to a file."""

    def __init__(self, lab: Lab, args: Sequence[str], number: int) -> None:
        self.log_path = lab.directory / f"tender-{number}.log"
        self._log = self.log_path.open("wb")
        self.process = spawn([sys.executable, "-m", "pheanq", "worker-tender", "--use-tube", lab.tube, *args],
                             env=lab.env, cwd=lab.directory, stdout=self._log, stderr=subprocess.STDOUT)
        self._read_up_to = 0
        self._states: dict[int, str] = {}     # worker pid -> the kind of its last state line

    def workers(self) -> list[psutil.Process]:
        """The tender's live task-worker processes (not the orphans it adopts and kills)."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children():
                with contextlib.suppress(psutil.Error):
                    if child.status() != psutil.STATUS_ZOMBIE and "task-worker" in child.cmdline():
                        found.append(child)
        return found

    def busy_workers(self) -> list[psutil.Process]:
        """Workers running a task's command right now (a worker killed then is 'killed while it works'), as their
        own state lines say: CHILD, and neither EXITED nor READY since. The tender's log carries every worker's
        lines; reading what it added is cheap, where asking /proc for each worker's children takes a second on a
        loaded machine, long enough for the short tasks of a small run to end unseen."""
        with self.log_path.open("rb") as log:
            log.seek(self._read_up_to)
            added = log.read()
        complete = added.rfind(b"\n") + 1
        self._read_up_to += complete
        for line in added[:complete].decode(errors="replace").splitlines():
            said = _WORKER_STATE.match(line)
            if said is not None:
                self._states[int(said.group(1))] = said.group(2)
        busy = []
        for pid, state in self._states.items():
            if state == "CHILD":
                with contextlib.suppress(psutil.Error):
                    worker = psutil.Process(pid)
                    if worker.status() != psutil.STATUS_ZOMBIE:
                        busy.append(worker)
        return busy

    def longest_running_task(self) -> float:
        """The largest duration argument among the tasks running now (their command line ends with it)."""
        longest = 0.0
        for worker in self.busy_workers():
            with contextlib.suppress(psutil.Error, ValueError, IndexError):
                for child in worker.children():
                    longest = max(longest, float(child.cmdline()[-1]))
        return longest

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float) -> int:
        """SIGTERM and wait for it to drain and exit; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.process)
            raise ScenarioFailed(f"the worker-tender did not exit within {timeout:.0f}s of SIGTERM") from None
        finally:
            self._log.close()
        if self.process in _processes:
            _processes.remove(self.process)
        return code

    def kill(self) -> None:
        kill_tree(self.process)
        self._log.close()


class Lab:
    """One scenario's directory, beanstalkd, database, configuration, tube and counts."""

    def __init__(self, name: str, plan: Plan, directory: Path, pending: set[int],
                 cluster: PostgresCluster | None = None, binlog: bool = False, python: bool = False) -> None:
        self.name = name
        self.python = python            # tasks are the Python task of scripts/chaostasks.py, not the command
        self.cluster = cluster
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:{name}")
        self.directory = directory
        # A tube of its own: with a shared --database-url, earlier runs' rows are not counted or touched.
        self.tube = f"chaos-{name}-{os.getpid()}-{self.rng.randrange(10**6)}"
        self.ran_file = directory / "ran.txt"
        self.ran_file.touch()
        self.database_url = (cluster.url if cluster else plan.database_url) or f"sqlite:///{directory / 'pheanq.db'}"
        self.beanstalkd = Beanstalkd(directory / "binlog" if binlog else None)
        if binlog:
            (directory / "binlog").mkdir()
        self.beanstalkd.start()
        self.config = directory / "pheanq.toml"
        self._write_config()
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
        self.env["PHEANQ_CONFIG"] = str(self.config)
        if python:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), self.env.get("PYTHONPATH")]))
        self.outcome = Outcome(name, directory=str(directory))
        self.queued: list[int] = []
        self.pending = pending          # ids whose queue_task warned TaskPendingWarning
        self.refused = 0                # queue_task calls that raised (the database was down): not accepted
        self.raw_errors: collections.Counter[str] = collections.Counter()  # ... with something not a PheanqError
        self.resent = 0                 # jobs `pheanq reconcile` sent again (a task lost twice counts twice)
        self.reconciles = 0             # how often it ran
        self.operator_reconciles = False  # run `pheanq reconcile` when no task finishes for a while
        self.tenders: list[Tender] = []
        self._feeders: list[threading.Thread] = []
        self._stop = threading.Event()
        self._engine: sa.Engine | None = None

    def _write_config(self) -> None:
        (self.directory / "run").mkdir(exist_ok=True)
        argv = ["/bin/sh", "-c", TASK_SCRIPT, COMMAND, str(self.ran_file)]
        lines = [f"database_url = {json.dumps(self.database_url)}",
                 f"beanstalkd = {json.dumps(self.beanstalkd.address)}",
                 f"default_tube = {json.dumps(self.tube)}",
                 f"run_dir = {json.dumps(str(self.directory / 'run'))}",
                 "[commands]",
                 f"{COMMAND} = {json.dumps(argv)}"]
        self.config.write_text("\n".join(lines) + "\n")

    def note(self, text: str) -> None:
        self.outcome.notes.append(text)

    def problem(self, text: str) -> None:
        self.outcome.problems.append(text)

    # --- pheanq's public surface ---

    def service(self) -> TaskQueueService:
        return TaskQueueService(load_settings({"config_file": str(self.config)}, environ={}))

    def pheanq(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pheanq", *args], env=self.env, cwd=self.directory,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def upgrade(self) -> None:
        result = self.pheanq("db", "upgrade")
        if result.returncode != 0:
            raise ScenarioFailed(f"pheanq db upgrade failed: {result.stderr.strip()[-300:]}")

    def start_tender(self, workers: int, *extra: str, spare: int = 0) -> Tender:
        args = ["--min-workers", str(workers), "--spare-workers", str(spare), "--max-workers", str(workers + spare),
                "--reconcile-interval", str(TENDER_RECONCILE_INTERVAL), *extra]
        if self.python:
            args += ["--import", "chaostasks"]
        tender = Tender(self, args, len(self.tenders) + 1)
        self.tenders.append(tender)
        wait_until(lambda: len(tender.workers()) >= min(workers, 1) or tender.process.poll() is not None, 30,
                   "the worker-tender's first worker")
        if tender.process.poll() is not None:
            raise ScenarioFailed(f"the worker-tender exited with {tender.process.returncode}: "
                                 f"{tender.log_text()[-500:]}")
        return tender

    def reconcile(self) -> None:
        """What an operator (or cron) would run: `pheanq reconcile` for the tube, no minimum age."""
        result = self.pheanq("reconcile", "--use-tube", self.tube, "--min-age", "0")
        self.reconciles += 1
        with (self.directory / "reconcile.log").open("a") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} exit {result.returncode}\n{result.stdout}{result.stderr}")
        found = re.search(r"sent again (\d+)", result.stdout)
        if result.returncode != 0 or found is None:
            said = (result.stderr or result.stdout).strip()[-200:]
            self.problem(f"pheanq reconcile exited {result.returncode}: {said}")
            return
        self.resent += int(found.group(1))

    # --- queueing ---

    def queue(self, service: TaskQueueService, duration: float, ttr: int = 60) -> int | None:
        """One task; its id (remembered as queued), or None when queue_task raised (not accepted)."""
        try:
            description = sleep_and_record.describe(round(duration, 3), str(self.ran_file)) if self.python \
                else TaskDescription(COMMAND, [f"{duration:.3f}"])
            task_id = service.queue_task(description, ttr=ttr)
        except PheanqError:
            self.refused += 1
            return None
        except Exception as error:  # not one of pheanq's errors: the application would get a raw exception
            self.refused += 1
            self.raw_errors[f"{type(error).__name__}: {str(error).splitlines()[0][:150]}"] += 1
            return None
        self.queued.append(task_id)
        return task_id

    def feed(self, count: int, duration: Callable[[random.Random], float], ttr: int = 60,
             seconds: float = 0.0) -> threading.Thread:
        """Queue `count` tasks on a thread of its own, spread over about `seconds` (0: as fast as it goes).
        A refused queue_task (database down) is tried again after a moment, as an application would."""
        rng = random.Random(self.rng.random())

        def run() -> None:
            service = self.service()
            started = time.monotonic()
            try:
                accepted = 0
                while accepted < count and not self._stop.is_set():
                    if self.queue(service, duration(rng), ttr) is None:
                        self._stop.wait(0.2)  # the application's pause before trying again
                        continue
                    accepted += 1
                    ahead = started + seconds * accepted / count - time.monotonic()
                    if ahead > 0:
                        self._stop.wait(ahead)  # spreading the load over time
            finally:
                service.close()

        thread = threading.Thread(target=run, name=f"feed-{self.name}", daemon=True)
        self._feeders.append(thread)
        thread.start()
        return thread

    def feeding(self) -> bool:
        return any(thread.is_alive() for thread in self._feeders)

    def wait_fed(self, timeout: float) -> None:
        wait_until(lambda: not self.feeding(), timeout, f"queueing the tasks ({len(self.queued)} queued)")

    # --- the table ---

    def longest_running_task(self, tender: Tender) -> float:
        """The largest duration among the tasks running now: from their commands' command lines, or for Python
        tasks (run in the worker's own child, whose command line is the worker's) from the table."""
        if not self.python:
            return tender.longest_running_task()
        with self.engine().connect() as conn:
            rows = conn.execute(sa.text("SELECT data FROM pheanq_task WHERE status = 'working' AND tube = :tube"),
                                {"tube": self.tube}).scalars().all()
        return max((float(json.loads(data)["args"][0]) for data in rows), default=0.0)

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def rows(self) -> dict[int, tuple[str, int, str]]:
        """id → (status, attempts, log) of every task of this scenario's tube; {} while the database is down."""
        query = sa.text("SELECT id, status, attempts, log FROM pheanq_task WHERE tube = :tube")
        try:
            with self.engine().connect() as conn:
                return {int(row[0]): (str(row[1]), int(row[2] or 0), str(row[3] or ""))
                        for row in conn.execute(query, {"tube": self.tube})}
        except sa.exc.DBAPIError:
            return {}

    def statuses(self) -> dict[str, int]:
        """How many of the tube's tasks are in each status ({} while the database cannot say)."""
        query = sa.text("SELECT status, count(*) FROM pheanq_task WHERE tube = :tube GROUP BY status")
        try:
            with self.engine().connect() as conn:
                return {str(status): int(count) for status, count in conn.execute(query, {"tube": self.tube})}
        except sa.exc.DBAPIError:
            return {}

    def finished(self) -> int:
        """How many of the tube's tasks are done or failed (-1 while the database cannot say)."""
        counts = self.statuses()
        return counts.get("done", 0) + counts.get("failed", 0) if counts else -1

    def all_finished(self) -> bool:
        """Queueing is over, and every task of the tube (at least every queued one) is done or failed."""
        if self.feeding():
            return False
        counts = self.statuses()
        finished = counts.get("done", 0) + counts.get("failed", 0)
        return bool(counts) and finished == sum(counts.values()) and finished >= len(self.queued)

    def wait_finished(self, count: int, timeout: float) -> None:
        """Until `count` tasks are done or failed; ScenarioFailed, saying what is missing, after `timeout`."""
        if not self._progress(lambda: self.finished() >= count, timeout):
            raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {count} task(s) to finish: "
                                 f"{self._missing()}")

    def finish(self, timeout: float) -> None:
        """Wait for the queueing to end and every task to finish; on timeout, note what is missing."""
        if not self._progress(self.all_finished, timeout):
            self.problem(f"timed out after {timeout:.0f}s: {self._missing()}")

    def _progress(self, reached: Callable[[], bool], timeout: float) -> bool:
        """Wait until `reached()`; False at the deadline. In a scenario where beanstalkd loses jobs, run
        `pheanq reconcile` whenever no task finished for a few seconds and nothing is being queued."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while not reached():
            count, now = self.finished(), time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            elif self.operator_reconciles and not self.feeding() and now - last_change > RECONCILE_WHEN_STUCK_SECONDS:
                self.reconcile()
                last_change = time.monotonic()
            if now > deadline:
                return False
            pause(POLL_SECONDS)
        return True

    def _missing(self) -> str:
        rows = self.rows()
        waiting = [task_id for task_id in self.queued if rows.get(task_id, ("",))[0] not in ("done", "failed")]
        statuses = collections.Counter(rows[task_id][0] if task_id in rows else "no row" for task_id in waiting)
        status = self.pheanq("status", "--json", timeout=30)
        figures: Any = "?"
        with contextlib.suppress(ValueError, KeyError):
            figures = json.loads(status.stdout)["tubes"][self.tube]["beanstalkd"]
        return (f"{len(waiting)} of {len(self.queued)} queued task(s) not finished ({dict(statuses)}; e.g. ids "
                f"{waiting[:5]}); beanstalkd's figures for the tube: {figures}; still queueing: {self.feeding()}")

    # --- the end ---

    def count(self) -> Outcome:
        """Both counts: from ran.txt and from the table, each on its own."""
        outcome = self.outcome
        queued = set(self.queued)
        outcome.queued = len(self.queued)
        outcome.pending = len(self.pending & queued)
        ran = collections.Counter(int(line) for line in self.ran_file.read_text().split() if line.isdigit())
        outcome.lost_file = len(queued - set(ran))
        outcome.twice_file = sum(1 for task_id in queued if ran[task_id] > 1)
        outcome.extra = len(set(ran) - queued)
        rows = self.rows()
        if not rows and queued:
            self.problem("the table could not be read at the end")
        mine = {task_id: row for task_id, row in rows.items() if task_id in queued}
        outcome.done = sum(1 for status, _, _ in mine.values() if status == "done")
        outcome.failed = sum(1 for status, _, _ in mine.values() if status == "failed")
        outcome.lost_table = outcome.queued - outcome.done
        outcome.twice_table = sum(1 for _, _, log in mine.values() if len(COMPLETED_ATTEMPT.findall(log)) > 1)
        outcome.reruns = sum(max(attempts - 1, 0) for _, attempts, _ in mine.values())
        if self.refused:
            self.note(f"{self.refused} queue_task call(s) refused while the database was down (tried again)")
        for error, times in self.raw_errors.items():
            self.problem(f"queue_task raised {error} ({times}x), not a pheanq error")
        if self.operator_reconciles:
            # The tenders' own passes re-send too: at once after a beanstalkd restart.
            by_tenders = sum(int(n) for tender in self.tenders
                             for n in TENDER_RESENT_MARK.findall(tender.log_text()))
            outcome.figures["resent"] = self.resent + by_tenders
            self.note(f"pheanq reconcile sent {self.resent} job(s) again in {self.reconciles} run(s), the tenders "
                      f"{by_tenders}")
        died = quick = 0
        for tender in self.tenders:
            text = tender.log_text()
            died += len(WORKER_DIED_MARK.findall(text))
            quick += text.count(CRASH_LOOP_MARK)
        if quick:
            self.problem(f"{quick} worker start(s) counted towards a crash loop")
        outcome.notes.insert(0, f"{died} worker death(s) seen by the tender")
        return outcome

    def close(self) -> None:
        self._stop.set()
        for thread in self._feeders:
            thread.join(30)
        for tender in self.tenders:
            if tender.process.poll() is None:
                with contextlib.suppress(ScenarioFailed):
                    tender.terminate(30)
            tender.kill()
        self.beanstalkd.kill()
        if self._engine is not None:
            self._engine.dispose()


# --- the scenarios ---------------------------------------------------------------------------------------------


def short_tasks(rng: random.Random) -> float:
    return rng.uniform(0.0, 0.2)


def feed_seconds(tasks: int) -> float:
    """How long queueing is spread over, so that faults land while tasks are still being queued."""
    return min(10.0, max(2.0, tasks / 200))


def deadline(tasks: int, mean_seconds: float, workers: int, faults_seconds: float = 0.0) -> float:
    """A generous bound for the whole run of a scenario: pool start, four times the expected work, faults."""
    return 60.0 + faults_seconds + 4 * tasks * (mean_seconds + 0.1) / workers


def kill_workers(lab: Lab) -> None:
    """SIGKILL busy workers of a tender at random, many times, while tasks are queued and run."""
    workers, tasks = 8, lab.plan.tasks
    lab.upgrade()
    tender = lab.start_tender(workers)
    lab.feed(tasks, short_tasks, seconds=feed_seconds(tasks))
    _kill_busy_workers(lab, tender, max(15, tasks // 8), deadline(tasks, 0.1, workers))
    lab.finish(deadline(tasks, 0.1, workers))


def _kill_busy_workers(lab: Lab, tender: Tender, budget: int, limit: float) -> None:
    kills = 0
    end = time.monotonic() + limit
    while kills < budget and not lab.all_finished() and time.monotonic() < end:
        busy = tender.busy_workers()
        if not busy:
            pause(0.01)  # look again soon: a kill must catch a worker while its command runs
            continue
        with contextlib.suppress(psutil.Error):
            lab.rng.choice(busy).kill()
            kills += 1
        pause(lab.rng.uniform(0.05, 0.3))  # the pace of the kills
    lab.outcome.figures["killed"] = kills
    lab.note(f"{kills} busy worker(s) killed -9")


def workflows(lab: Lab) -> None:
    """Chains of three steps and one batch, queued while busy workers are SIGKILLed: every step ends done once,
    after the step before it; the batch finishes and its `finally` callback runs once."""
    workers, chains = 8, max(4, lab.plan.tasks // 4)   # three chain steps and one batch task per chain
    lab.upgrade()
    tender = lab.start_tender(workers)
    service = lab.service()
    batch = service.create_batch("chaos", finally_=TaskDescription(COMMAND, ["0"]))
    rng = random.Random(lab.rng.random())
    chained: list[list[int]] = []

    def step() -> TaskDescription:
        return TaskDescription(COMMAND, [f"{short_tasks(rng):.3f}"])

    def feed() -> None:
        for _ in range(chains):
            ids = service.queue_chain(step().then(step()).then(step()))
            chained.append(ids)
            lab.queued.extend(ids)
            lab.queued.append(batch.add(step()))
        batch.close()

    feeder = threading.Thread(target=feed, name=f"feed-{lab.name}", daemon=True)
    lab._feeders.append(feeder)
    feeder.start()
    tasks = chains * 4
    _kill_busy_workers(lab, tender, max(15, tasks // 8), deadline(tasks, 0.1, workers))
    lab.finish(deadline(tasks, 0.1, workers))
    progress = batch.progress()
    service.close()
    if progress.state != "finished" or progress.done != chains or progress.callbacks["finally"] is None:
        lab.problem(f"the batch did not finish with {chains} task(s) done: {progress.summary()}")
    else:
        lab.queued.append(progress.callbacks["finally"])   # counted like every task: run once, done
    first_run: dict[int, int] = {}
    for position, line in enumerate(lab.ran_file.read_text().split()):
        if line.isdigit():
            first_run.setdefault(int(line), position)
    late = [ids for ids in chained
            if not all(first_run.get(a, -1) < first_run.get(b, -1) for a, b in itertools.pairwise(ids))]
    if late:
        lab.problem(f"{len(late)} chain(s) ran a step before the step it waits for, e.g. {late[:3]}")
    lab.note(f"{chains} chains of 3 and a batch of {chains} with a finally callback")


def beanstalkd_lost(lab: Lab) -> None:
    """beanstalkd SIGKILLed and restarted without a binlog, twice: its jobs vanish; the reconciler re-sends."""
    _kill_beanstalkd_twice(lab, down_for=0.5)
    lab.note("beanstalkd killed -9 and restarted empty twice")
    lab.finish(deadline(lab.plan.tasks, 0.1, 6))


def beanstalkd_binlog(lab: Lab) -> None:
    """beanstalkd with a binlog SIGKILLed and restarted, twice: its jobs come back."""
    _kill_beanstalkd_twice(lab, down_for=0.0)
    lab.note("beanstalkd (-b binlog) killed -9 and restarted twice")
    lab.finish(deadline(lab.plan.tasks, 0.1, 6))


def _kill_beanstalkd_twice(lab: Lab, down_for: float) -> None:
    """Under load from 6 workers: kill beanstalkd once 40% of the tasks are queued, and again once half are done."""
    lab.operator_reconciles = True
    workers, tasks = 6, lab.plan.tasks
    lab.upgrade()
    lab.start_tender(workers)
    lab.feed(tasks, short_tasks, seconds=feed_seconds(tasks))
    limit = deadline(tasks, 0.1, workers)
    wait_until(lambda: len(lab.queued) >= 0.4 * tasks, limit, "40% of the tasks to be queued")
    lab.beanstalkd.kill()
    if down_for:
        pause(down_for)  # beanstalkd stays down a moment
    lab.beanstalkd.start()
    lab.wait_fed(limit)
    lab.wait_finished(tasks // 2, limit)
    lab.beanstalkd.kill()
    lab.beanstalkd.start()


def beanstalkd_down(lab: Lab) -> None:
    """Half the tasks queued while beanstalkd is down: each gets an id and a TaskPendingWarning; the
    reconciler sends them once beanstalkd is back."""
    lab.operator_reconciles = True
    workers, tasks = 6, lab.plan.tasks
    lab.upgrade()
    lab.start_tender(workers)
    limit = deadline(tasks, 0.1, workers)
    first = tasks // 2
    lab.feed(first, short_tasks)
    lab.wait_fed(limit)
    lab.wait_finished(first, limit)
    lab.beanstalkd.kill()
    before = len(lab.queued)
    lab.feed(tasks - first, short_tasks)
    lab.wait_fed(limit)
    while_down = set(lab.queued[before:])
    unwarned = len(while_down - lab.pending)
    if unwarned:
        lab.problem(f"{unwarned} task(s) queued while beanstalkd was down got no TaskPendingWarning")
    lab.beanstalkd.start()
    lab.finish(limit)


def postgres_restart(lab: Lab) -> None:
    """A private PostgreSQL restarted mid-run (pg_ctl restart -m fast), then crashed (kill -9) and started."""
    cluster = lab.cluster
    assert cluster is not None
    workers, tasks = 6, lab.plan.tasks
    lab.upgrade()
    lab.start_tender(workers)
    lab.feed(tasks, short_tasks, seconds=feed_seconds(tasks))
    limit = deadline(tasks, 0.1, workers, 60)
    wait_until(lambda: len(lab.queued) >= 0.3 * tasks, limit, "30% of the tasks to be queued")
    cluster.restart_fast()
    lab.wait_finished(int(0.6 * tasks), limit)
    cluster.crash()
    pause(1.0)  # the database stays down a moment
    cluster.start()
    lab.note("PostgreSQL restarted (-m fast), then killed -9 and started")
    lab.finish(limit)


def past_ttr(lab: Lab) -> None:
    """Tasks of about 2 s with ttr=1: the worker keeps the reservation alive; nothing runs twice."""
    tasks = max(10, lab.plan.tasks // 10)
    workers = min(10, tasks)
    lab.upgrade()
    lab.start_tender(workers)
    lab.feed(tasks, lambda rng: rng.uniform(1.5, 2.5), ttr=1)
    lab.note("ttr 1 s, tasks 1.5-2.5 s")
    lab.finish(deadline(tasks, 2.0, workers))


def hostile_bodies(lab: Lab) -> None:
    """Random and hostile job bodies put straight into the tube with greenstalk, interleaved with real
    tasks: the real ones all end done, the hostile ones buried, and no worker dies."""
    workers, tasks, hostile = 6, lab.plan.tasks, lab.plan.hostile
    lab.upgrade()
    tender = lab.start_tender(workers)
    service = lab.service()
    client = lab.beanstalkd.client(lab.tube)
    bodies = hostile_bodies_for(lab.rng, hostile)
    order = ["task"] * tasks + ["hostile"] * hostile
    lab.rng.shuffle(order)
    put: dict[int, str] = {}     # hostile job id → its kind
    forged = 0
    try:
        for what in order:
            if what == "task":
                lab.queue(service, short_tasks(lab.rng))
                continue
            kind, body = bodies.pop()
            if kind == "forged":
                # A well-formed body for a real task, with other arguments: it may run that task (the row's
                # own arguments, once) or be deleted unrun; it must never make the task run twice.
                if not lab.queued:
                    continue
                victim = lab.rng.choice(lab.queued)
                body = forged_body(victim, service.find_task(victim).nonce, lab.rng)
                forged += 1
            elif kind == "unregistered-real" and lab.queued:
                body = pheanq_body(lab.rng.choice(lab.queued), "not-registered-" + str(lab.rng.randrange(100)))
            put[client.put(body, ttr=5)] = kind
    finally:
        service.close()
    lab.finish(deadline(tasks + hostile, 0.1, workers))
    with contextlib.suppress(ScenarioFailed):  # what is left over is reported job by job below
        wait_until(lambda: tube_idle(client, lab.tube), 30 + hostile * 0.05, "the hostile jobs to be dealt with")
    wanted_buried = {job_id: kind for job_id, kind in put.items() if kind != "forged"}
    states: collections.Counter[str] = collections.Counter()
    wrong: collections.Counter[str] = collections.Counter()
    for job_id, kind in wanted_buried.items():
        state = job_state(client, job_id)
        states[state] += 1
        if state != "buried":
            wrong[f"{kind}: {state}"] += 1
    forged_buried = sum(1 for job_id, kind in put.items() if kind == "forged" and job_state(client, job_id) == "buried")
    client.close()
    if wrong:
        lab.problem(f"{sum(wrong.values())} hostile job(s) not buried: {dict(wrong)}")
    if forged_buried:
        lab.problem(f"{forged_buried} well-formed job(s) for real tasks were buried")
    listed = lab.pheanq("buried", "--use-tube", lab.tube, "--json", timeout=60)
    try:
        total = int(json.loads(listed.stdout)["total"])
    except (ValueError, KeyError, TypeError):
        lab.problem(f"pheanq buried --json gave no total: {(listed.stderr or listed.stdout).strip()[-200:]}")
        total = -1
    if total != len(wanted_buried):
        lab.problem(f"pheanq buried lists {total} buried job(s), {len(wanted_buried)} expected")
    died = len(WORKER_DIED_MARK.findall(tender.log_text()))
    if died:
        lab.problem(f"{died} worker(s) died on hostile bodies")
    lab.outcome.figures.update(hostile=len(wanted_buried), buried=states["buried"], forged=forged)
    lab.note(f"{states['buried']} of {len(wanted_buried)} hostile bodies buried, {forged} forged bodies of real "
             f"tasks")


def tender_restart(lab: Lab) -> None:
    """The worker-tender SIGTERMed mid-run and started again: once draining its running tasks, once with
    --shutdown-timeout 0.3 while a long task runs, so it is interrupted and handed back."""
    workers, tasks = 6, lab.plan.tasks
    lab.upgrade()
    limit = deadline(tasks, 0.3, workers, 60)
    tender = lab.start_tender(workers)
    # Mostly short tasks, some of 1-2 s: those outlast the second tender's shutdown timeout.
    lab.feed(tasks, lambda rng: rng.uniform(0.0, 0.2) if rng.random() < 0.85 else rng.uniform(1.0, 2.0),
             seconds=feed_seconds(tasks))
    lab.wait_finished(tasks // 4, limit)
    wait_until(tender.busy_workers, limit, "busy workers")
    codes = [tender.terminate(90)]
    tender = lab.start_tender(workers, "--shutdown-timeout", "0.3")
    wait_until(lambda: len(lab.queued) >= 0.6 * tasks, limit, "60% of the tasks to be queued")
    wait_until(lambda: lab.longest_running_task(tender) >= 1.0, limit, "a long task to run")
    codes.append(tender.terminate(60))
    interrupting = re.findall(r"--shutdown-timeout passed: interrupting (\d+) worker", tender.log_text())
    lab.start_tender(workers)
    lab.outcome.figures["interrupted"] = sum(map(int, interrupting))
    if any(codes):
        lab.problem(f"the SIGTERMed tenders exited with {codes}, not 0")
    lab.note(f"tender SIGTERMed twice (drain; --shutdown-timeout 0.3: {sum(map(int, interrupting))} busy "
             "worker(s) interrupted) and started again")
    lab.finish(limit)


@dataclasses.dataclass(frozen=True)
class Scenario:
    run: Callable[[Lab], None]
    binlog: bool = False
    postgres: bool = False
    python: bool = False        # the tasks are Python tasks run in the workers' children


SCENARIOS: dict[str, Scenario] = {
    "kill-workers": Scenario(kill_workers),
    "beanstalkd-lost": Scenario(beanstalkd_lost),
    "beanstalkd-binlog": Scenario(beanstalkd_binlog, binlog=True),
    "beanstalkd-down": Scenario(beanstalkd_down),
    "postgres-restart": Scenario(postgres_restart, postgres=True),
    "past-ttr": Scenario(past_ttr),
    "hostile-bodies": Scenario(hostile_bodies),
    "tender-restart": Scenario(tender_restart),
    "workflows": Scenario(workflows),
    "python-kill-workers": Scenario(kill_workers, python=True),
    "python-tender-restart": Scenario(tender_restart, python=True),
    "limits": Scenario(limits_under_kills),
    "schedules": Scenario(chaos_schedules.schedules),
}


# --- hostile bodies -------------------------------------------------------------------------------------------

HOSTILE_KINDS = ("random-bytes", "not-json", "json-not-ours", "huge", "bad-id", "missing-row", "deep",
                 "bad-description", "bad-version", "unregistered", "unregistered-real", "forged")


def hostile_bodies_for(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` (kind, body) pairs, every kind in turn. 'unregistered-real' and 'forged' bodies get a real
    task id when they are put (the placeholder body here is replaced)."""
    makers: dict[str, Callable[[], bytes]] = {
        "random-bytes": lambda: rng.randbytes(rng.randrange(1, 3000)),
        "not-json": lambda: rng.choice([b"hello", b"{", b"\x00\x01\x02", b"pheanq", b"task_id=5", b"[1,2",
                                        "\u00e9t\u00e9 \U0001f600".encode(), b"\xff\xfe{}", b" "]),
        "json-not-ours": lambda: json.dumps(rng.choice([
            None, True, 42, -1.5, "task", [1, 2, 3], {}, {"task_id": 5}, {"pheanq": None},
            {"job": "x", "data": list(range(rng.randrange(50)))}, [{"pheanq": 1, "task_id": 1}]])).encode(),
        "huge": lambda: rng.choice([
            json.dumps({"pheanq": 1, "task_id": 10**12 + rng.randrange(10**6),
                        "description": {"command": COMMAND, "arguments": ["x" * 60000], "options": {}}}).encode(),
            b"[" + b"1," * 32000 + b"1]",
            rng.randbytes(65000)]),
        "bad-id": lambda: json.dumps({"pheanq": 1, "task_id": rng.choice(
            [0, -1, -(2**63), 2**63, 2**64, 10**30, 1.5, "7", True, None, [1], {"id": 1}]),
            "description": {"command": COMMAND, "arguments": ["0"], "options": {}}}).encode(),
        "missing-row": lambda: pheanq_body(10**12 + rng.randrange(10**9), COMMAND),
        "deep": lambda: rng.choice([
            # As deep as beanstalkd's 65,535-byte job limit allows: far past Python's recursion limit.
            b"[" * 30000 + b"]" * 30000,
            b'{"a":' * 10000 + b"1" + b"}" * 10000,
            b'{"pheanq":1,"task_id":' + b"[" * 20000 + b"]" * 20000 + b"}",
            b'{"pheanq":1,"task_id":1,"description":' + b'{"c":' * 10000 + b"1" + b"}" * 10001]),
        "bad-description": lambda: json.dumps({"pheanq": 1, "task_id": 10**12 + rng.randrange(10**6),
                                               "description": rng.choice([
                                                   None, [], "chaos", {"command": "rm -rf /"},
                                                   {"command": COMMAND, "arguments": "0"},
                                                   {"command": COMMAND, "arguments": [None]},
                                                   {"command": COMMAND, "arguments": ["a\x00b"]},
                                                   {"command": COMMAND, "options": {"--x": 1}},
                                                   {"command": COMMAND, "options": {"x": [1]}},
                                                   {"command": ["chaos"]},
                                                   {"command": COMMAND, "arguments": ["\ud800"]}])}).encode(),
        "bad-version": lambda: json.dumps({"pheanq": rng.choice([2, 0, True, "1", 1.0, None]),
                                           "task_id": 10**12 + rng.randrange(10**6),
                                           "description": {"command": COMMAND, "arguments": ["0"]}}).encode(),
        "unregistered": lambda: pheanq_body(10**12 + rng.randrange(10**9), "unknown-" + str(rng.randrange(100))),
        "unregistered-real": lambda: b"",
        "forged": lambda: b"",
    }
    bodies = [(kind, makers[kind]()) for kind in (HOSTILE_KINDS[i % len(HOSTILE_KINDS)] for i in range(count))]
    rng.shuffle(bodies)
    return bodies


def pheanq_body(task_id: int, command: str) -> bytes:
    return json.dumps({"pheanq": 1, "task_id": task_id,
                       "description": {"command": command, "arguments": ["0"], "options": {}}}).encode()


def forged_body(task_id: int, nonce: str | None, rng: random.Random) -> bytes:
    """A well-formed body for a real task (its id and nonce, as a peek at its job shows), with other arguments."""
    return json.dumps({"pheanq": 1, "task_id": task_id, "nonce": nonce, "description": {
        "command": COMMAND, "arguments": [f"{rng.uniform(0, 0.05):.3f}"], "options": {}}}).encode()


def tube_idle(client: greenstalk.Client[bytes], tube: str) -> bool:
    """No job of the tube is ready or reserved (buried and delayed ones may remain)."""
    stats = client.stats_tube(tube)
    return int(stats.get("current-jobs-ready", 0)) + int(stats.get("current-jobs-reserved", 0)) == 0


def job_state(client: greenstalk.Client[bytes], job_id: int) -> str:
    try:
        return str(client.stats_job(job_id).get("state", "?"))
    except greenstalk.NotFoundError:
        return "deleted"


# --- running scenarios -----------------------------------------------------------------------------------------


def run_scenario(name: str, plan: Plan, base: Path | None = None) -> Outcome:
    """Run one scenario in a fresh directory (under `base`, else the system's temp dir) and count."""
    scenario = SCENARIOS[name]
    directory = Path(tempfile.mkdtemp(prefix=f"pheanq-chaos-{name}-", dir=base))
    started = time.monotonic()
    cluster: PostgresCluster | None = None
    lab: Lab | None = None
    outcome = Outcome(name, directory=str(directory))
    with _counting_pending_warnings() as pending, _pheanq_log_to(directory / "harness.log"):
        try:
            if scenario.postgres:
                cluster = PostgresCluster()
                cluster.start()
            lab = Lab(name, plan, directory, pending, cluster, binlog=scenario.binlog, python=scenario.python)
            outcome = lab.outcome
            scenario.run(lab)
        except ScenarioFailed as error:
            outcome.problems.append(str(error))
        except Exception as error:  # a bug of the harness: this scenario reports it, the others still run
            with (directory / "harness.log").open("a") as log:
                traceback.print_exc(file=log)
            outcome.problems.append(f"harness error {type(error).__name__}: {error} (traceback in harness.log)")
        finally:
            if lab is not None:
                lab.close()
                outcome = lab.count()
            if cluster is not None:
                cluster.remove(keep_log=directory / "postgres.log")
            stop_everything()  # whatever the scenario started and did not stop (it failed half-way)
    outcome.seconds = round(time.monotonic() - started, 1)
    if outcome.ok and not plan.keep:
        shutil.rmtree(directory, ignore_errors=True)
        outcome.directory = None
    return outcome


@contextlib.contextmanager
def _counting_pending_warnings() -> Iterator[set[int]]:
    """Collect the task ids of every TaskPendingWarning issued meanwhile, on any thread (catch_warnings
    puts the filters and showwarning back at the end)."""
    pending: set[int] = set()
    lock = threading.Lock()
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if isinstance(message, TaskPendingWarning):
                with lock:
                    pending.add(message.task_id)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.filterwarnings("always", category=TaskPendingWarning)
        warnings.showwarning = show
        yield pending


@contextlib.contextmanager
def _pheanq_log_to(path: Path) -> Iterator[None]:
    """pheanq's own log lines from this process (a pending task, a put that failed) go to a file, not the
    terminal: the harness counts them itself."""
    logger = logging.getLogger("pheanq")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate, logger.level = saved


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2, no usage dump
        self.exit(2, f"chaos: {message}\n")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=_positive, default=DEFAULT_TASKS, metavar="N",
                        help=f"tasks per scenario (past-ttr runs a tenth of them) [default {DEFAULT_TASKS}]")
    parser.add_argument("--hostile", type=_positive, default=DEFAULT_HOSTILE, metavar="N",
                        help=f"hostile bodies in hostile-bodies [default {DEFAULT_HOSTILE}]")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"scenarios to run: {', '.join(SCENARIOS)}")
    parser.add_argument("--database-url", metavar="URL",
                        help="run on this database (each scenario in its own tube) instead of a fresh SQLite file "
                             "per scenario; postgres-restart always uses a private cluster")
    parser.add_argument("--seed", type=int, default=None, help="random seed [default: a new one, printed]")
    parser.add_argument("--keep", action="store_true", help="keep every scenario's directory (failed ones are "
                        "always kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.only is None else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        parser.error(f"--only: unknown scenario {(unknown or [args.only])[0]!r} (known: {', '.join(SCENARIOS)})")
    args.names = names
    if args.database_url is not None:
        try:
            load_settings({"database_url": args.database_url}, environ={})
        except PheanqError as error:
            parser.error(f"--database-url: {error}")
    return args


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    plan = Plan(tasks=args.tasks, hostile=args.hostile, database_url=args.database_url, seed=seed, keep=args.keep)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    outcomes: list[Outcome] = []
    print(f"chaos: seed {seed}, {plan.tasks} tasks per scenario", file=sys.stderr)
    try:
        for name in args.names:
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            outcome = run_scenario(name, plan)
            outcomes.append(outcome)
            if not args.json:
                print(outcome.line(), flush=True)
            if outcome.directory is not None:
                print(f"chaos: {name}: logs kept in {outcome.directory}", file=sys.stderr)
    except KeyboardInterrupt:
        print("chaos: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"chaos: {stopped}; stopping everything it started", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        stop_everything()
    ok = all(outcome.ok for outcome in outcomes)
    if args.json:
        print(json.dumps({"seed": seed, "tasks": plan.tasks, "ok": ok,
                          "scenarios": [outcome.to_json() for outcome in outcomes]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
