"""The fault-injection scenarios of scripts/chaos.py, smaller: every task queue_task() accepted ends done,
none whose command completed runs twice, counted from the file the command writes and from the table.

Each scenario runs against its own real beanstalkd, its own SQLite database (postgres-restart: a private
PostgreSQL cluster it starts, restarts, kills -9 and removes), a real worker-tender and real signals.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"
TASKS = 60
HOSTILE = 60
SEED = 20240611


def _load_chaos() -> ModuleType:
    """scripts/chaos.py is a script, not a package module: load it from its path."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))  # what it imports beside it (chaostasks), as running it would find
    spec = importlib.util.spec_from_file_location("chaos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def run(name: str, tmp_path: Path, tasks: int = TASKS, database_url: str | None = None) -> Any:
    plan = chaos.Plan(tasks=tasks, hostile=HOSTILE, database_url=database_url, seed=SEED)
    outcome = chaos.run_scenario(name, plan, tmp_path)
    print(outcome.line())
    return outcome


def assert_promise_kept(outcome: Any, queued: int) -> None:
    """Both counts, each on its own: nothing lost, nothing completed twice, no problem of the scenario."""
    where = f"{outcome.line()}\nlogs: {outcome.directory}"
    assert outcome.problems == [], where
    assert outcome.queued == queued, where
    assert (outcome.done, outcome.failed) == (queued, 0), where
    assert (outcome.lost_file, outcome.lost_table) == (0, 0), where
    assert (outcome.twice_file, outcome.twice_table) == (0, 0), where
    assert outcome.ok, where
    assert outcome.directory is None, "a scenario that passed removes its directory"


def test_kill_workers(tmp_path: Path) -> None:
    outcome = run("kill-workers", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.figures["killed"] >= 5, outcome.line()
    # A busy worker killed -9 takes its command with it: that run is interrupted and the task runs again.
    assert outcome.reruns >= 1, outcome.line()


def test_beanstalkd_lost_without_binlog(tmp_path: Path) -> None:
    """The reconciler's re-sends under live workers (its lock and compare-and-set on every database are in
    test_reconcile.py)."""
    outcome = run("beanstalkd-lost", tmp_path, tasks=40)
    assert_promise_kept(outcome, 40)
    assert outcome.figures["resent"] >= 1, "beanstalkd restarted empty: the reconciler must have sent tasks again"


def test_beanstalkd_restarted_with_binlog(tmp_path: Path) -> None:
    outcome = run("beanstalkd-binlog", tmp_path)
    assert_promise_kept(outcome, TASKS)
    # Only tasks queued in the moment beanstalkd was down needed the reconciler; the binlog kept the others.
    assert outcome.figures["resent"] <= outcome.pending, outcome.line()


def test_beanstalkd_down_while_queueing(tmp_path: Path) -> None:
    outcome = run("beanstalkd-down", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.pending == TASKS - TASKS // 2, "every task queued while beanstalkd was down warned"
    # The reconciler sent them; a worker may claim a re-sent job before the reconciler records it ("moved on").
    assert outcome.figures["resent"] >= 1, outcome.line()


def test_postgres_restarted_and_killed(tmp_path: Path) -> None:
    outcome = run("postgres-restart", tmp_path)
    assert_promise_kept(outcome, TASKS)


def test_tasks_longer_than_their_ttr(tmp_path: Path) -> None:
    outcome = run("past-ttr", tmp_path, tasks=200)  # past-ttr runs a tenth: 20 tasks of about 2 s, ttr 1
    assert_promise_kept(outcome, 20)


def test_hostile_bodies(tmp_path: Path) -> None:
    outcome = run("hostile-bodies", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.figures["buried"] == outcome.figures["hostile"] > 0, outcome.line()


def test_tender_restarted(tmp_path: Path) -> None:
    outcome = run("tender-restart", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.figures["interrupted"] >= 1, "the short --shutdown-timeout interrupted a long task"


def test_workflows_under_worker_kills(tmp_path: Path) -> None:
    """Chains and a batch while busy workers are killed -9: each step once and in order, the batch finished,
    its finally callback run once (the scenario checks the order and the batch; the counts come here)."""
    outcome = run("workflows", tmp_path, tasks=40)
    chains = 40 // 4
    assert_promise_kept(outcome, chains * 4 + 1)
    assert outcome.figures["killed"] >= 5, outcome.line()


def test_python_tasks_under_worker_kills(tmp_path: Path) -> None:
    """Busy workers killed -9 while their forked children run Python tasks: each child dies with its worker, the
    task runs again elsewhere, and no task whose function completed runs twice."""
    outcome = run("python-kill-workers", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.figures["killed"] >= 5, outcome.line()


def test_python_tasks_across_tender_restarts(tmp_path: Path) -> None:
    outcome = run("python-tender-restart", tmp_path)
    assert_promise_kept(outcome, TASKS)
    assert outcome.figures["interrupted"] >= 1, "the short --shutdown-timeout interrupted a long task"


# --- the harness itself -------------------------------------------------------------------------------------


def test_line_format_shows_the_worse_count() -> None:
    outcome = chaos.Outcome("x", queued=3, done=2, lost_file=0, lost_table=1, twice_file=1, twice_table=0,
                            reruns=2, seconds=1.25, notes=["a note"])
    line = outcome.line()
    assert line.startswith("x: queued 3, done 2, failed 0, lost 1, ran twice 1 (")
    assert re.fullmatch(r"x: queued 3, done 2, failed 0, lost 1, ran twice 1 \(a note; 2 run\(s\) interrupted "
                        r"half-way and re-run; 1\.2s\)", line), line
    assert not outcome.ok
    assert json.loads(json.dumps(outcome.to_json()))["lost"] == 1


def test_an_outcome_is_ok_only_when_everything_ran_once() -> None:
    good = chaos.Outcome("x", queued=5, done=5)
    assert good.ok
    assert not chaos.Outcome("x", queued=5, done=5, problems=["timed out"]).ok
    assert not chaos.Outcome("x", queued=5, done=5, twice_table=1).ok
    assert not chaos.Outcome("x", queued=0, done=0).ok, "a scenario that queued nothing proved nothing"


def test_completed_attempts_are_read_from_the_log() -> None:
    log = ("--- attempt 1 on host:1: interrupted after 0.10s: SIGINT; the task goes back to its tube\n"
           "--- attempt 2 on host:2: done after 0.20s\nsome output\n"
           "--- attempt 3 on host:3: done; the worker died after its command ended, so its tender recorded it\n")
    assert len(chaos.COMPLETED_ATTEMPT.findall(log)) == 2


def test_hostile_bodies_cover_every_kind_and_fit_beanstalkd() -> None:
    bodies = chaos.hostile_bodies_for(random.Random(1), 240)
    assert len(bodies) == 240
    assert {kind for kind, _ in bodies} == set(chaos.HOSTILE_KINDS)
    assert max(len(body) for _, body in bodies) <= 65535


@pytest.mark.parametrize(("args", "complaint"), [
    (["--only", "nope"], "unknown scenario 'nope'"),
    (["--tasks", "0"], "0 is not a positive number"),
    (["--tasks", "many"], "'many' is not a whole number"),
    (["--database-url", "nosuch://x"], "--database-url"),
])
def test_bad_arguments_get_one_line_and_exit_code_2(args: list[str], complaint: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and complaint in lines[0], result.stderr
