"""A dead worker's command found by its session (pheanq.tender.orphans): no gate holds a command back until its
worker said its pid, so a worker can die after its command ended and before the tender heard of it. Real
processes: a subreaper standing in for the tender, a session leader standing in for the worker that runs a real
command through pheanq's own run_child and dies by SIGKILL at the worst moment, and a real PDEATHSIG.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# The worker: runs `argv` with run_child and dies by SIGKILL the moment the command ended by itself (before it is
# reaped), or the moment it started when DIE_AT is "start". Before that it starts a process of a session of its
# own (as a Python task's child is), which must never be taken for the command.
WORKER = """
    import os, signal, subprocess, sys
    from pheanq.worker.child import run_child

    die_at, argv = sys.argv[1], sys.argv[2:]
    subprocess.Popen(["sleep", "30"], start_new_session=True)
    die = lambda _value: os.kill(os.getpid(), signal.SIGKILL)
    run_child(argv, env=dict(os.environ), max_output=1000, keep_running=lambda: None,
              on_start=die if die_at == "start" else None, on_exit=die if die_at == "exit" else None)
    print("the worker outlived its command", flush=True)
"""

# The tender: a child subreaper that starts the worker as a session leader (saying it is its tender, or not: then
# the worker is as one started alone), waits for its death, then looks for its command as the tender does, and
# prints what it found.
TENDER = """
    import json, os, signal, subprocess, sys, time
    from pheanq.tender.orphans import adopted_pids, command_of_dead_worker, kill_left_running, session_of
    from pheanq.tender.recovery import reap_exit_code
    from pheanq.worker.child import linux_prctl
    from pheanq.worker.protocol import TENDER_PID_VARIABLE

    linux_prctl()(36, 1)  # PR_SET_CHILD_SUBREAPER
    env = {**os.environ, TENDER_PID_VARIABLE: str(os.getpid())} if sys.argv[2] == "tender" else dict(os.environ)
    worker = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[3:]], start_new_session=True, env=env)
    worker.wait()
    command = command_of_dead_worker(worker.pid)
    others = [pid for pid in adopted_pids() if pid != command]
    ended = None  # how the command ended (-N: signal N), read before it is reaped, as the tender would
    deadline = time.monotonic() + 5
    while command is not None and ended is None and time.monotonic() < deadline:
        info = os.waitid(os.P_PID, command, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            ended = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        time.sleep(0.01)  # the poll of a deadline wait (5 s): how long the command takes to end is not known
    code = None if command is None else reap_exit_code(command)
    if command is not None and code is None:
        kill_left_running(command, worker.pid)
    left = [pid for pid in adopted_pids() if session_of(pid) == worker.pid]
    for pid in others:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps({"worker": worker.returncode, "found": command is not None, "ended": ended, "code": code,
                      "others": len(others), "left": len(left)}))
"""


def run_tender(tmp_path: Path, worker_of: str, die_at: str, *argv: str) -> dict[str, object]:
    worker, tender = tmp_path / "worker.py", tmp_path / "tender.py"
    worker.write_text(textwrap.dedent(WORKER))
    tender.write_text(textwrap.dedent(TENDER))
    done = subprocess.run([sys.executable, str(tender), str(worker), worker_of, die_at, *argv], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_a_command_that_ended_before_its_worker_died_unreaped_is_found_with_its_own_exit_code(tmp_path: Path) -> None:
    found = run_tender(tmp_path, "tender", "exit", sys.executable, "-c", "import sys; sys.exit(3)")
    # The command, not the process of another session that the worker left behind too.
    assert found == {"worker": -9, "found": True, "ended": 3, "code": 3, "others": 1, "left": 0}


def test_a_worker_started_alone_that_dies_as_its_command_starts_takes_the_command_with_it(tmp_path: Path) -> None:
    for _ in range(3):
        found = run_tender(tmp_path, "alone", "start", "sleep", "300")
        # PDEATHSIG, set before the command runs: it ended by SIGKILL with its worker, never by itself.
        assert found == {"worker": -9, "found": True, "ended": -9, "code": None, "others": 1, "left": 0}


def test_a_tenders_worker_that_dies_as_its_command_starts_leaves_nothing_running_once_the_tender_looked(
    tmp_path: Path,
) -> None:
    for _ in range(3):
        found = run_tender(tmp_path, "tender", "start", "sleep", "300")
        # setpriv may not have set PDEATHSIG yet when the worker died: then the tender kills the command itself.
        assert found["ended"] in (-9, None)
        assert {key: found[key] for key in ("worker", "found", "code", "others", "left")} == \
            {"worker": -9, "found": True, "code": None, "others": 1, "left": 0}
