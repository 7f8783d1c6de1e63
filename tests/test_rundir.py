"""Run and pid directories against a second local user (pheanq/rundir.py), with a real user, real
processes and real signals.

The test runs as root and makes a throw-away system user, the attacker, who acts through `setpriv`. It
proves that a `--single-id` pid file the attacker pre-linked to a file of root's (or to nothing) is
refused and neither writes the target nor creates it; that a directory of the attacker's, or one that
group or others can write, is refused with one line (exit 2) naming it and the fix, by the worker and by
`stop-worker-tender`; that a lock the attacker squats no longer passes for a running worker; that
`stop-worker-tender` signals no process a planted or stale tender record names unless it is that
tender; that directories pheanq makes are 0700 and its files 0600; and where the run directory of a
user without XDG_RUNTIME_DIR is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import SYSTEM_PYTHON, need_second_local_user, one_error_line, pheanq, wait_for

from pheanq.process_identity import ProcessIdentity
from pheanq.rundir import default_run_dir, private_directory
from pheanq.tender.registry import Registration

MakeEnv = Callable[..., dict[str, str]]
# Holds an exclusive flock on the file argv[1] (made if missing) until killed.
HOLD_LOCK = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); " \
            "print('locked', flush=True); time.sleep(60)"  # holds the lock until killed


@dataclasses.dataclass
class Attacker:
    """A second local user; `run` and `start` act as it."""

    name: str
    uid: int
    gid: int
    started: list[subprocess.Popen[str]] = dataclasses.field(default_factory=list)

    def argv(self, code: str, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                SYSTEM_PYTHON, "-c", code, *args]

    def run(self, code: str, *args: str) -> None:
        subprocess.run(self.argv(code, *args), check=True, timeout=30)

    def start(self, code: str, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(self.argv(code, *args), stdout=subprocess.PIPE, text=True)
        self.started.append(process)
        return process


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    need_second_local_user("acting as another local user")
    name = f"pheanq-attacker-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, timeout=30)
    entry = pwd.getpwnam(name)
    user = Attacker(name, entry.pw_uid, entry.pw_gid)
    try:
        yield user
    finally:
        for process in user.started:
            process.kill()
            process.wait(10)
        subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may write, like /tmp itself (sticky)."""
    path = Path(tempfile.mkdtemp(prefix="pheanq-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def victim() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes an attacker would like root to signal; killed at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], runs: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv`; return once the process runs `runs` (default: argv), as after a wrapper's exec."""
        process = subprocess.Popen(argv)
        started.append(process)
        wait_for(lambda: (identity := ProcessIdentity.of(process.pid)) is not None
                 and list(identity.cmdline) == (runs or argv), 5, "the victim's exec")
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(10)


def held(process: subprocess.Popen[str]) -> subprocess.Popen[str]:
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


# --- the pid file of `task-worker --single-id` -------------------------------------------------------------------

@pytest.mark.parametrize("directory", ["the other user's", "root's own, made private after the link was planted"])
@pytest.mark.parametrize("link_to", ["a file of root's", "nothing (dangling)"])
def test_a_pid_file_pre_linked_by_another_user_is_refused_and_its_target_neither_written_nor_made(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv,
        directory: str, link_to: str) -> None:
    target = tmp_path / ("precious" if link_to == "a file of root's" else "made-by-root")
    if link_to == "a file of root's":
        target.write_text("precious\n")
    pid_dir = shared / "pids"
    link = pid_dir / "task-worker-nightly.pid"
    attacker.run("import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777); "
                 "os.symlink(sys.argv[2], sys.argv[3])", str(pid_dir), str(target), str(link))
    if directory.startswith("root's own"):
        os.chown(pid_dir, 0, 0)
        pid_dir.chmod(0o700)
    result = pheanq(["task-worker", "--single-id", "nightly", "--pid-dir", str(pid_dir), "--stop-when-empty"],
                    make_env(sqlite_url), tmp_path)
    if link_to == "a file of root's":
        assert target.read_text() == "precious\n", "root's file was written through the link"
    else:
        assert not target.exists(), "root made the file the dangling link named"
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    if directory == "the other user's":
        assert f"run directory {pid_dir} belongs to uid {attacker.uid}" in line and "--pid-dir" in line, line
    else:
        assert f"{link} is a symbolic link" in line and "remove it" in line, line


def test_a_pid_file_with_a_second_hard_link_is_not_truncated(tmp_path: Path, sqlite_url: str,
                                                              make_env: MakeEnv) -> None:
    precious = tmp_path / "precious"
    precious.write_text("precious\n")
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(mode=0o700)
    os.link(precious, pid_dir / "task-worker-nightly.pid")
    result = pheanq(["task-worker", "--single-id", "nightly", "--pid-dir", str(pid_dir), "--stop-when-empty"],
                    make_env(sqlite_url), tmp_path)
    assert precious.read_text() == "precious\n", "root's file was truncated through its second link"
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "has 2 hard links" in one_error_line(result)


def test_a_lock_squatted_by_another_user_is_refused_not_taken_for_a_running_worker(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv) -> None:
    pid_dir = shared / "pids"
    attacker.run("import os, sys; os.mkdir(sys.argv[1], 0o755)", str(pid_dir))
    held(attacker.start(HOLD_LOCK, str(pid_dir / "task-worker-nightly.pid")))
    result = pheanq(["task-worker", "--single-id", "nightly", "--pid-dir", str(pid_dir), "--stop-when-empty"],
                    make_env(sqlite_url), tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert f"run directory {pid_dir} belongs to uid {attacker.uid}" in line and "remove it" in line, line


# --- unsafe directories, for the worker and for stop-worker-tender -----------------------------------------------

@pytest.mark.parametrize("command", ["task-worker --single-id", "stop-worker-tender"])
@pytest.mark.parametrize("unsafe", ["owned by the other user", "writable by others", "writable by the group"])
def test_an_unsafe_directory_is_refused_in_one_line_naming_it_and_the_fix(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv,
        command: str, unsafe: str) -> None:
    directory = shared / "run"
    if unsafe == "owned by the other user":
        attacker.run("import os, sys; os.mkdir(sys.argv[1], 0o700)", str(directory))
        fix = "remove it"
    else:
        directory.mkdir()
        directory.chmod(0o1777 if unsafe == "writable by others" else 0o770)
        fix = f"chmod 700 {directory}"
    if command == "stop-worker-tender":
        args, env = ["stop-worker-tender", "--use-tube", "emails", "--timeout", "1"], \
            make_env(sqlite_url, PHEANQ_RUN_DIR=str(directory))
    else:
        args, env = ["task-worker", "--single-id", "nightly", "--pid-dir", str(directory), "--stop-when-empty"], \
            make_env(sqlite_url)
    result = pheanq(args, env, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert f"run directory {directory} " in line and fix in line, line
    assert os.listdir(directory) == [], "pheanq wrote into a directory it refused"


# --- symbolic links on the way to a run directory (issue 11, item 3, review) ----------------------------------------

@pytest.mark.parametrize("where", ["the run directory itself", "a directory above it"])
def test_a_run_directory_that_is_another_users_symlink_is_refused(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv, where: str) -> None:
    """The attacker links a name in a shared (sticky) directory to a private directory of root's: root's worker
    followed it and made its pid file (or, through a linked parent, a directory of pheanq's) in root's."""
    precious = tmp_path / "precious"
    precious.mkdir(mode=0o700)
    link = shared / "run"
    attacker.run("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(precious), str(link))
    pid_dir = link if where == "the run directory itself" else link / "pheanq-made-this"
    result = pheanq(["task-worker", "--single-id", "cronjob", "--pid-dir", str(pid_dir), "--stop-when-empty"],
                    make_env(sqlite_url), tmp_path)
    assert os.listdir(precious) == [], "root wrote through the other user's link"
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert f"run directory {pid_dir}: {link} is a symbolic link of uid {attacker.uid}" in line, line
    assert "--pid-dir" in line, line


def test_a_run_directory_under_another_users_directory_is_refused_and_nothing_made_through_it(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv) -> None:
    """`att2/sub -> root's directory` in a directory of the attacker's own: even a link the attacker could
    swap after the check (their directory, their rules) is not passed through."""
    precious = tmp_path / "precious"
    precious.mkdir(mode=0o700)
    theirs = shared / "att2"
    attacker.run("import os, sys; os.mkdir(sys.argv[1], 0o755); os.symlink(sys.argv[2], sys.argv[3])",
                 str(theirs), str(precious), str(theirs / "sub"))
    pid_dir = theirs / "sub" / "pheanq-made-this"
    result = pheanq(["task-worker", "--single-id", "cronjob", "--pid-dir", str(pid_dir), "--stop-when-empty"],
                    make_env(sqlite_url), tmp_path)
    assert os.listdir(precious) == [], "root made a directory through the other user's link"
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert f"run directory {pid_dir}: {theirs} belongs to uid {attacker.uid}" in line, line


def test_a_run_directory_in_tmp_or_behind_a_link_of_this_users_own_is_made_and_used(
        tmp_path: Path, shared: Path) -> None:
    """What stays allowed: /tmp/mine/run made by the user itself in the sticky /tmp, and a link of one's own."""
    made = private_directory(shared / "mine" / "run", "set run_dir")
    assert made == shared / "mine" / "run" and stat.S_IMODE(made.stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(shared / "mine")
    assert private_directory(tmp_path / "link" / "run", "set run_dir") == made
    dotted = tmp_path / "link" / ".." / "mine" / "run"  # `..` after a link leaves its target, as the kernel does
    assert private_directory(dotted, "set run_dir") == Path(os.path.realpath(dotted)) == made


# --- stop-worker-tender and planted records ------------------------------------------------------------------------

def test_a_record_planted_in_another_user_s_run_dir_gets_no_process_signalled(
        tmp_path: Path, shared: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv,
        victim: Callable[..., subprocess.Popen[bytes]]) -> None:
    sleeper = victim(["sleep", "60"])  # an unrelated process that must outlive the test's stop-worker-tender
    run_dir = shared / "run"
    record = run_dir / "tender-1-1.json"
    attacker.run("import os, sys; os.mkdir(sys.argv[1], 0o700); open(sys.argv[2], 'w').write(sys.argv[3])",
                 str(run_dir), str(record), json.dumps(_record(sleeper.pid)))
    held(attacker.start(HOLD_LOCK, str(record)))
    result = pheanq(["stop-worker-tender", "--use-tube", "emails", "--timeout", "1"],
                    make_env(sqlite_url, PHEANQ_RUN_DIR=str(run_dir)), tmp_path)
    assert sleeper.poll() is None, "stop-worker-tender signalled the process an attacker's record named"
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"run directory {run_dir} belongs to uid {attacker.uid}" in one_error_line(result)


@pytest.mark.parametrize("forged", ["no identity", "another start time", "another command line", "another user's"])
def test_stop_worker_tender_signals_no_process_a_record_names_unless_it_is_that_tender(
        tmp_path: Path, attacker: Attacker, sqlite_url: str, make_env: MakeEnv,
        victim: Callable[..., subprocess.Popen[bytes]], forged: str) -> None:
    # The victim looks like a tender (its command line has the word), so only the record's identity tells.
    argv = [SYSTEM_PYTHON, "-c", "import time; time.sleep(60)", "worker-tender"]  # lives until the test ends it
    process = victim(attacker.argv(*argv[2:]) if forged == "another user's" else argv, argv)
    pid = ProcessIdentity.of(process.pid)
    assert pid is not None and pid.uid == (attacker.uid if forged == "another user's" else 0)
    identity = {"no identity": None,
                "another start time": dataclasses.replace(pid, started=pid.started - 5),
                "another command line": dataclasses.replace(pid, cmdline=(*pid.cmdline, "--use-tube")),
                "another user's": dataclasses.replace(pid, uid=0)}[forged]
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    record = run_dir / "tender-1-1.json"
    record.write_text(json.dumps(_record(process.pid, identity)))
    held(subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(record)], stdout=subprocess.PIPE, text=True))
    result = pheanq(["stop-worker-tender", "--use-tube", "emails", "--timeout", "1"],
                    make_env(sqlite_url, PHEANQ_RUN_DIR=str(run_dir)), tmp_path)
    assert process.poll() is None, "stop-worker-tender signalled a process that is not the tender of the record"
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"not signalled: pid {process.pid} named by {record} is not the worker-tender that wrote it" \
        in result.stderr, result.stderr


def _record(pid: int, identity: ProcessIdentity | None = None) -> dict[str, object]:
    record: dict[str, object] = {"pid": pid, "tubes": ["emails"], "beanstalkd": "127.0.0.1:11300",
                                 "host": "here", "started": time.time()}
    if identity is not None:
        record.update(uid=identity.uid, process_started=identity.started, cmdline=list(identity.cmdline))
    return record


# --- what pheanq makes, and where ----------------------------------------------------------------------------------

def test_directories_pheanq_makes_are_0700_and_its_files_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o002)  # a lax umask must not make a lax directory
    try:
        registration = Registration(tmp_path / "a" / "b" / "run", ["emails"], "127.0.0.1:11300")
        registration.register()
    finally:
        os.umask(old_umask)
    try:
        for directory in (tmp_path / "a", tmp_path / "a" / "b", registration.run_dir):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        assert stat.S_IMODE(registration.path.stat().st_mode) == 0o600
        assert stat.S_IMODE((registration.run_dir / ".lock").stat().st_mode) == 0o600
    finally:
        registration.release()


def test_the_default_run_dir_is_in_no_shared_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_run_dir() == tmp_path / "home" / ".local" / "state" / "pheanq" / "run"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_run_dir() == tmp_path / "state" / "pheanq" / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_run_dir() == Path("/run/user/1000/pheanq")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_run_dir() == Path("/run/pheanq")
