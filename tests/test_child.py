"""pheanq.worker.child runs a command as a real child process and never lets it, or what it started, outlive the task.

Proved here with real processes and real signals: exit codes (normal, non-zero, killed), stdout and stderr
captured together in bounded memory (a 50 MB flood costs the parent almost nothing), the whole tree stopped
when `keep_running` gives a reason (including a grandchild that escaped the process group with setsid),
leftovers killed when the command ends, clear codes for a command that cannot start, and a child that dies
with a worker killed by SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from support import WorkerProcess, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService
from pheanq.worker.child import BoundedOutput, run_child, stop_tree

MB = 1024 * 1024
ENV = dict(os.environ)


def _marker(cut: int) -> str:
    return f"\n[... pheanq cut {cut} bytes of output here ...]\n"


def _gone(pid: int) -> bool:
    """True when no process `pid` runs any more (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 5) -> None:
    wait_for(lambda: _gone(pid), timeout, f"process {pid} to be gone")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _never_stop() -> str | None:
    return None


# --- BoundedOutput: pure, exact cases -------------------------------------------------------------------------

def test_bounded_output_below_the_limit_keeps_everything_without_a_marker() -> None:
    output = BoundedOutput(10)
    output.add(b"abc")
    output.add(b"def")
    assert output.render() == "abcdef"
    assert output.total == 6


def test_bounded_output_exactly_at_the_limit_is_not_cut() -> None:
    output = BoundedOutput(10)
    output.add(b"0123456789")
    assert output.render() == "0123456789"
    assert output.total == 10


def test_bounded_output_one_byte_over_keeps_head_and_tail_and_marks_the_cut() -> None:
    output = BoundedOutput(10)
    output.add(b"0123456789A")
    assert output.render() == "01234" + _marker(1) + "6789A"
    assert output.total == 11


def test_bounded_output_of_many_small_chunks_keeps_the_first_and_last_bytes() -> None:
    output = BoundedOutput(6)
    for letter in b"abcdefghijklmnopqrstuvwxyz":
        output.add(bytes([letter]))
    assert output.render() == "abc" + _marker(20) + "xyz"
    assert output.total == 26
    assert output.tail_size < 6 + 2  # the tail is trimmed as it grows, not at the end


def test_bounded_output_splits_a_chunk_that_straddles_the_head() -> None:
    output = BoundedOutput(8)
    output.add(b"ab")
    output.add(b"cdefghijklmnop")
    assert output.render() == "abcd" + _marker(8) + "mnop"


def test_bounded_output_with_an_odd_limit_gives_the_extra_byte_to_the_tail() -> None:
    output = BoundedOutput(7)
    output.add(b"ABCDEFGHIJ")
    assert output.render() == "ABC" + _marker(3) + "GHIJ"


def test_bounded_output_cut_inside_a_utf8_character_renders_a_replacement_not_an_error() -> None:
    output = BoundedOutput(3)
    output.add("éééé".encode())  # 8 bytes; the head keeps only the first byte of the first é
    assert output.render() == "\ufffd" + _marker(5) + "é"
    assert output.total == 8


def test_bounded_output_reads_a_whole_stream_and_counts_every_byte() -> None:
    result = run_child([sys.executable, "-c", "import sys; sys.stdout.write('<' + '.' * 199998 + '>')"],
                       env=os.environ, max_output=100, keep_running=lambda: None)
    rendered = result.output
    assert result.output_bytes == 200_000
    assert rendered.startswith("<" + "." * 49)
    assert rendered.endswith("." * 49 + ">")
    assert _marker(199_900) in rendered


# --- run_child: exit codes and output ---------------------------------------------------------------------------

def test_run_child_reports_exit_code_zero_and_the_output() -> None:
    result = run_child(_python("print('all good')"), env=ENV, max_output=1000, keep_running=_never_stop)
    assert result.exit_code == 0
    assert result.output == "all good\n"
    assert result.output_bytes == len("all good\n")
    assert result.stopped is None


def test_run_child_reports_a_non_zero_exit_code() -> None:
    result = run_child(_python("import sys; sys.exit(3)"), env=ENV, max_output=1000, keep_running=_never_stop)
    assert result.exit_code == 3
    assert result.stopped is None


def test_run_child_killed_by_a_signal_gives_the_negative_signal_number() -> None:
    result = run_child(_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), env=ENV,
                       max_output=1000, keep_running=_never_stop)
    assert result.exit_code == -signal.SIGKILL
    assert result.stopped is None


def test_run_child_captures_stdout_and_stderr_together_in_order() -> None:
    result = run_child(_python("""
        import sys
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        print("stdout again", flush=True)
    """), env=ENV, max_output=1000, keep_running=_never_stop)
    assert result.output == "to stdout\nto stderr\nstdout again\n"


def test_run_child_passes_exactly_the_given_environment_and_no_stdin() -> None:
    result = run_child(_python("""
        import os, sys
        print(os.environ.get("PHEANQ_CHILD_TEST"), repr(sys.stdin.read()))
    """), env={**ENV, "PHEANQ_CHILD_TEST": "here"}, max_output=1000, keep_running=_never_stop)
    assert result.output == "here ''\n"


def test_a_child_printing_50_mb_is_bounded_and_the_parent_does_not_hold_it(tmp_path: Path) -> None:
    total = 50 * MB
    script = tmp_path / "flood.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        out = sys.stdout.buffer
        block = b"x" * {MB}
        out.write(b"BEGIN\\n" + block[6:])
        for _ in range(48):
            out.write(block)
        out.write(block[4:] + b"END\\n")
        out.flush()
        time.sleep(0.1)  # the parent's memory is sampled once it has read everything
    """))
    me = psutil.Process()
    before = me.memory_info().rss
    peak = before

    def sample_memory() -> None:
        nonlocal peak
        peak = max(peak, me.memory_info().rss)

    def keep_running() -> str | None:
        sample_memory()
        return None

    result = run_child([sys.executable, str(script)], env=ENV, max_output=10_000, keep_running=keep_running,
                       poll_seconds=0.01)
    sample_memory()
    assert result.exit_code == 0
    assert result.output_bytes == total
    assert result.output == "BEGIN\n" + "x" * 4994 + _marker(total - 10_000) + "x" * 4996 + "END\n"
    assert len(result.output) <= 10_000 + len(_marker(total))
    assert peak - before < 20 * MB, f"the parent grew by {(peak - before) / MB:.1f} MB while reading 50 MB"


# --- run_child: stopping, leftovers, commands that cannot start ------------------------------------------------

FAMILY = """
import os, subprocess, sys, time
pidfile, linger = sys.argv[1], float(sys.argv[2])
escaped = pidfile + ".escaped"
# The child under test. Its sleeps are its work: the grandchildren live until killed, and the child
# itself lives `linger` seconds. One grandchild stays in the child's process group, one leaves it with setsid().
same = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # lives until killed
escaper = subprocess.Popen([sys.executable, "-c",
    "import os, sys, time; os.setsid(); open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)", escaped])  # lives until killed
while not os.path.exists(escaped):
    time.sleep(0.01)  # the child under test waits for its grandchild's pid file (the test holds the deadline)
print("family started", flush=True)  # before the pid file, which tells the test it may stop the child
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {same.pid} {escaper.pid}")
os.replace(pidfile + ".tmp", pidfile)
time.sleep(linger)  # the child's own work: it lives `linger` seconds
"""


def _family(tmp_path: Path, linger: float) -> tuple[list[str], Path]:
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    pidfile = tmp_path / "family.pids"
    return [sys.executable, str(script), str(pidfile), str(linger)], pidfile


def _pids(pidfile: Path) -> tuple[int, int, int]:
    child, same, escaper = (int(word) for word in pidfile.read_text().split())
    return child, same, escaper


def test_keep_running_giving_a_reason_stops_the_child_and_every_grandchild(tmp_path: Path) -> None:
    argv, pidfile = _family(tmp_path, linger=60)
    groups: dict[str, int] = {}

    def keep_running() -> str | None:
        if not pidfile.exists():
            return None
        child, same, escaper = _pids(pidfile)
        groups.update(child=os.getpgid(child), same=os.getpgid(same), escaper=os.getpgid(escaper))
        return "the test wants it stopped"

    started = time.monotonic()
    result = run_child(argv, env=ENV, max_output=1000, keep_running=keep_running, poll_seconds=0.05)
    child, same, escaper = _pids(pidfile)
    # The set-up is what it claims: one grandchild shares the child's group, the other escaped it.
    assert groups["same"] == groups["child"] == child
    assert groups["escaper"] == escaper != child
    assert result.stopped == "the test wants it stopped"
    assert result.exit_code == -signal.SIGTERM
    assert result.output == "family started\n"
    assert time.monotonic() - started < 10
    for pid in (child, same, escaper):
        _wait_gone(pid)


def test_grandchildren_left_running_when_the_command_ends_are_killed(tmp_path: Path) -> None:
    argv, pidfile = _family(tmp_path, linger=0.6)
    started = time.monotonic()
    result = run_child(argv, env=ENV, max_output=1000, keep_running=_never_stop, poll_seconds=0.05)
    child, same, escaper = _pids(pidfile)
    assert result.exit_code == 0
    assert result.stopped is None
    assert result.output == "family started\n"
    # Neither grandchild kept the output pipe open until the reader gave up on it.
    assert time.monotonic() - started < 4.5
    for pid in (child, same, escaper):
        _wait_gone(pid)


def test_stop_tree_kills_a_child_that_ignores_sigterm_after_the_grace_and_keeps_its_exit_code() -> None:
    process = subprocess.Popen(
        _python("""
            import signal, sys, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring", flush=True)
            time.sleep(60)  # runs until the test kills it
        """), stdout=subprocess.PIPE, start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ignoring\n"
        started = time.monotonic()
        stop_tree(process.pid, grace=0.3, child=process)
        assert process.wait(5) == -signal.SIGKILL
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_a_command_that_does_not_exist_exits_127_with_a_message_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-command")
    result = run_child([missing, "arg"], env=ENV, max_output=1000, keep_running=_never_stop)
    assert result.exit_code == 127
    assert missing in result.output
    assert result.stopped is None


def test_a_command_that_is_not_executable_exits_126_with_a_message_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    result = run_child([str(script)], env=ENV, max_output=1000, keep_running=_never_stop)
    assert result.exit_code == 126
    assert str(script) in result.output


# --- PR_SET_PDEATHSIG: a child never outlives its worker --------------------------------------------------------

def test_the_child_dies_when_its_worker_is_killed_with_sigkill(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "sleeper.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(60)  # a task that runs until its worker is killed
    """))
    write_config(tmp_path, commands={"sleeper": [sys.executable, str(script), str(pidfile)]})
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("sleeper"))
    worker = start_worker([], make_env(sqlite_url))
    worker.wait_line(f"BUSY {task_id}")
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, "the child's pid file"))
    assert psutil.Process(child).ppid() == worker.pid
    worker.signal(signal.SIGKILL)
    assert worker.wait(10) == -signal.SIGKILL
    wait_for(lambda: _gone(child), 5, f"the child {child} to die with its worker")
    assert service.status_of(task_id) is Status.WORKING  # nobody recorded anything: the worker just died
