"""Tender registration through flock'ed files (pheanq/tenders.py), with real files, processes and signals.

It proves that a second tender for a tube already served on the same beanstalkd is refused with a
message that names the tube, the running tender's pid and how to stop it, unless a second one is
allowed; that another tube or another beanstalkd is no conflict; that a tender killed with -9 leaves
a file that is cleaned up and no longer counts; that running_tenders lists exactly the live ones;
that stop_tenders SIGTERMs the tenders of a tube, waits until their lock is released, and reports
one that ignores SIGTERM as still running; that an unusable run directory is a one-line error; and
that of several processes racing to register for one tube exactly one wins.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pheanq.errors import PheanqError, TenderRunning
from pheanq.tender.registry import Registration, StopOutcome, TenderRecord, running_tenders, stop_tenders

BEANSTALKD = "127.0.0.1:11300"
OTHER_BEANSTALKD = "127.0.0.1:11301"

# A stand-in tender: registers, says so on one line, then waits. Modes: "slow-term" (on SIGTERM it takes
# 0.5 s to finish, releases its registration as a tender does, then takes 0.3 s more to exit), "ignore-term"
# (SIGTERM does nothing), "race" (registers only once it gets a shared lock on the gate file the test holds
# locked, so the test lets every racer go at the same instant).
CHILD = """
import fcntl, signal, sys, time
from pathlib import Path
from pheanq.tender.registry import Registration
from pheanq.errors import TenderRunning

run_dir, tubes, beanstalkd, mode, gate = sys.argv[1:6]

# A stand-in tender. On SIGTERM it exits slowly, as a real one may: stop_tenders must wait for that.
def finish(signum, frame):
    time.sleep(0.5)  # the slow exit is what the test is about: stop_tenders must wait it out
    registration.release()
    time.sleep(0.3)  # ... and go on waiting after the lock file is released, until the process is gone
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else finish)
if mode == "race":
    print("waiting", flush=True)
    fcntl.flock(open(gate), fcntl.LOCK_SH)
registration = Registration(Path(run_dir), tubes.split(","), beanstalkd)
try:
    registration.register()
except TenderRunning as error:
    print("refused:", error, flush=True)
    sys.exit(3)
print("registered", flush=True)
while True:
    time.sleep(60)  # runs until signalled
"""


class Child:
    """A stand-in tender process."""

    def __init__(self, run_dir: Path, tubes: str, beanstalkd: str = BEANSTALKD, mode: str = "slow-term",
                 gate: Path | None = None) -> None:
        # "worker-tender" in its command line, as a real tender has: stop_tenders signals only such a process.
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), tubes, beanstalkd, mode,
                                         str(gate), "worker-tender"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def line(self, timeout: float = 10.0) -> str:
        """The next line the child prints, waited for with a deadline."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"child {self.pid} printed nothing within {timeout}s"
        return self.process.stdout.readline().rstrip("\n")

    def registered(self) -> Child:
        line = self.line()
        assert line == "registered", line
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def start_child() -> Iterator[Callable[..., Child]]:
    """Start stand-in tenders; every one is killed at the end of the test."""
    children: list[Child] = []

    def start(run_dir: Path, tubes: str, beanstalkd: str = BEANSTALKD, mode: str = "slow-term",
              gate: Path | None = None) -> Child:
        child = Child(run_dir, tubes, beanstalkd, mode, gate)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


@pytest.fixture
def register() -> Iterator[Callable[..., Registration]]:
    """Register in this process; every registration is released at the end of the test."""
    made: list[Registration] = []

    def make(run_dir: Path, tubes: list[str], beanstalkd: str = BEANSTALKD, allow_second: bool = False) -> Registration:
        registration = Registration(run_dir, tubes, beanstalkd, allow_second)
        made.append(registration)
        registration.register()
        return registration

    yield make
    for registration in made:
        registration.release()


def pids(records: list[TenderRecord]) -> list[int]:
    return sorted(record.pid for record in records)


def test_a_second_tender_for_the_same_tube_and_beanstalkd_is_refused_naming_the_tube_pid_and_stop_command(
        run_dir: Path, start_child: Callable[..., Child], register: Callable[..., Registration]) -> None:
    first = start_child(run_dir, "emails").registered()
    with pytest.raises(TenderRunning) as refused:
        register(run_dir, ["emails"])
    message = str(refused.value)
    assert "\n" not in message
    assert "tube emails" in message and f"pid {first.pid}" in message and BEANSTALKD in message, message
    assert "pheanq stop-worker-tender --use-tube emails" in message and "--allow-second-tender" in message, message
    # Sharing one tube of several is a conflict too, and the message names the shared one.
    with pytest.raises(TenderRunning, match=r"tube emails .*--use-tube emails"):
        register(run_dir, ["reports", "emails"])
    assert pids(running_tenders(run_dir)) == [first.pid], "a refused registration left a record"


def test_a_second_tender_is_allowed_with_allow_second(run_dir: Path, start_child: Callable[..., Child],
                                                      register: Callable[..., Registration]) -> None:
    first = start_child(run_dir, "emails").registered()
    register(run_dir, ["emails"], allow_second=True)
    assert pids(running_tenders(run_dir)) == sorted([first.pid, os.getpid()])


def test_one_process_may_hold_two_registrations_and_release_one(run_dir: Path,
                                                                 register: Callable[..., Registration]) -> None:
    first = register(run_dir, ["emails"])
    second = register(run_dir, ["emails"], allow_second=True)
    assert [record.tubes for record in running_tenders(run_dir)] == [("emails",), ("emails",)]
    second.release()
    records = running_tenders(run_dir)
    assert [(record.pid, record.tubes, record.path) for record in records] == [(os.getpid(), ("emails",), first.path)]


def test_another_tube_or_another_beanstalkd_is_no_conflict(run_dir: Path, start_child: Callable[..., Child],
                                                           register: Callable[..., Registration]) -> None:
    first = start_child(run_dir, "emails").registered()
    register(run_dir, ["reports"])
    register(run_dir, ["emails"], OTHER_BEANSTALKD)
    served = sorted((record.pid == first.pid, record.tubes, record.beanstalkd) for record in running_tenders(run_dir))
    assert served == [(False, ("emails",), OTHER_BEANSTALKD), (False, ("reports",), BEANSTALKD),
                      (True, ("emails",), BEANSTALKD)]


def test_running_tenders_lists_the_live_ones_with_their_details(run_dir: Path,
                                                                start_child: Callable[..., Child]) -> None:
    before = time.time()
    emails = start_child(run_dir, "emails").registered()
    both = start_child(run_dir, "reports,invoices", OTHER_BEANSTALKD).registered()
    records = {record.pid: record for record in running_tenders(run_dir)}
    assert sorted(records) == sorted([emails.pid, both.pid])
    assert (records[emails.pid].tubes, records[emails.pid].beanstalkd) == (("emails",), BEANSTALKD)
    assert (records[both.pid].tubes, records[both.pid].beanstalkd) == (("reports", "invoices"), OTHER_BEANSTALKD)
    assert records[both.pid].serves("invoices") and not records[both.pid].serves("emails")
    for record in records.values():
        assert record.host == socket.gethostname()
        assert before - 1 <= record.started <= time.time()
        assert record.path.parent == run_dir and record.path.exists()


def test_a_tender_killed_with_sigkill_is_cleaned_up_and_no_longer_counts(
        run_dir: Path, start_child: Callable[..., Child], register: Callable[..., Registration]) -> None:
    survivor = start_child(run_dir, "reports").registered()
    killed = start_child(run_dir, "emails").registered()
    [leftover] = [record.path for record in running_tenders(run_dir) if record.pid == killed.pid]
    killed.process.send_signal(signal.SIGKILL)
    assert killed.process.wait(10) == -signal.SIGKILL
    assert leftover.exists(), "kill -9 cannot have removed the file; the test would prove nothing"

    assert pids(running_tenders(run_dir)) == [survivor.pid]
    assert not leftover.exists()
    register(run_dir, ["emails"])  # the dead tender no longer blocks its tube
    assert pids(running_tenders(run_dir)) == sorted([survivor.pid, os.getpid()])


def test_stop_tenders_sigterms_the_tube_s_tenders_and_waits_until_they_are_gone(
        run_dir: Path, start_child: Callable[..., Child]) -> None:
    emails = start_child(run_dir, "reports,emails", mode="slow-term").registered()
    reports = start_child(run_dir, "reports", OTHER_BEANSTALKD, mode="slow-term").registered()
    other = start_child(run_dir, "invoices", mode="slow-term").registered()
    started = time.monotonic()
    outcome = stop_tenders(run_dir, "emails", timeout=10)
    took = time.monotonic() - started
    assert (pids(outcome.stopped), outcome.running, outcome.unverified) == ([emails.pid], [], [])
    assert took >= 0.8, f"stop_tenders returned after {took:.2f}s, before the tender took 0.8 s to end"
    assert emails.process.poll() == 0, "stop_tenders returned while the tender still ran"
    assert reports.process.poll() is None and other.process.poll() is None, "a tender of another tube was stopped"
    assert pids(running_tenders(run_dir)) == sorted([reports.pid, other.pid])


def test_stop_tenders_reports_a_tender_that_ignores_sigterm_as_still_running(
        run_dir: Path, start_child: Callable[..., Child]) -> None:
    stubborn = start_child(run_dir, "emails", mode="ignore-term").registered()
    started = time.monotonic()
    outcome = stop_tenders(run_dir, "emails", timeout=0.6)
    stopped, running = outcome.stopped, outcome.running
    assert time.monotonic() - started >= 0.6
    assert (stopped, pids(running)) == ([], [stubborn.pid])
    assert stubborn.process.poll() is None
    stubborn.kill()
    assert running_tenders(run_dir) == []


def test_stop_tenders_with_no_tender_of_the_tube_stops_nothing(run_dir: Path,
                                                               start_child: Callable[..., Child]) -> None:
    assert stop_tenders(run_dir, "emails", timeout=1) == StopOutcome([], [], [])
    assert not run_dir.exists(), "looking for tenders created the run directory"
    other = start_child(run_dir, "reports").registered()
    assert stop_tenders(run_dir, "emails", timeout=1) == StopOutcome([], [], [])
    assert other.process.poll() is None


@pytest.mark.parametrize("blocked_by", ["a file as parent", "a file in its place"])
def test_a_run_dir_that_cannot_be_created_is_a_one_line_error(tmp_path: Path, blocked_by: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    run_dir = blocker / "run" if blocked_by == "a file as parent" else blocker
    with pytest.raises(PheanqError) as error:
        Registration(run_dir, ["emails"], BEANSTALKD).register()
    message = str(error.value)
    assert not isinstance(error.value, TenderRunning)
    assert "\n" not in message and str(run_dir) in message and "PHEANQ_RUN_DIR" in message, message
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)


def test_of_processes_racing_to_register_for_one_tube_exactly_one_wins(tmp_path: Path, run_dir: Path,
                                                                       start_child: Callable[..., Child]) -> None:
    gate_path = tmp_path / "gate"
    gate_path.touch()
    for tube in ("emails", "reports"):
        with open(gate_path) as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            racers = [start_child(run_dir, tube, mode="race", gate=gate_path) for _ in range(4)]
            for racer in racers:
                assert racer.line() == "waiting"
        # The gate closed: every racer's shared lock is granted at once.
        answers = {racer.pid: racer.line() for racer in racers}
        winners = [pid for pid, answer in answers.items() if answer == "registered"]
        assert len(winners) == 1, answers
        for pid, answer in answers.items():
            if pid != winners[0]:
                assert answer.startswith("refused:") and f"pid {winners[0]}" in answer, answer
        assert [racer.process.wait(10) for racer in racers if racer.pid != winners[0]] == [3, 3, 3]
        assert [record.pid for record in running_tenders(run_dir) if record.serves(tube)] == winners
