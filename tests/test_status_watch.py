"""`pheanq status --watch` on every database: the counts drawn again every interval, with the tasks each tube
ended done or failed in the last minute (from their `finished` times: a task that ended earlier is not counted),
in place on a terminal, one drawing after another elsewhere, a JSON line each with --json; Ctrl-C ends it
quietly, and bad options are one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from support import finish_next, pheanq, wait_for

from pheanq import Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
WATCH = ["status", "--watch", "--interval", "0.5"]


def test_each_drawing_has_the_counts_and_what_each_tube_ended_in_the_last_minute(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    for n in range(4):
        service.queue_task(TaskDescription("invoice", [n]), tube="billing")
    service.queue_task(TaskDescription("invoice", [9]))
    finish_next(service, "billing", Status.DONE)
    finish_next(service, "billing", Status.FAILED)
    long_ago = finish_next(service, "billing", Status.DONE)
    with service.store.database.transaction() as conn:  # it ended two minutes ago: no longer in the rate
        conn.execute(task_table.update().where(task_table.c.id == long_ago)
                     .values(finished=utc_now() - dt.timedelta(minutes=2)))

    result = pheanq([*WATCH, "--json", "--count", "2"], make_env(db_url), tmp_path)
    assert result.returncode == 0, result.stderr
    drawings = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(drawings) == 2
    for drawing in drawings:
        billing = drawing["tubes"]["billing"]
        assert (billing["tasks"]["done"], billing["tasks"]["failed"], billing["tasks"]["new"]) == (2, 1, 1)
        assert billing["last_minute"] == {"done": 1, "failed": 1}
        assert drawing["tubes"]["pheanq"]["last_minute"] == {"done": 0, "failed": 0}
    first, second = (dt.datetime.fromisoformat(drawing["at"].rstrip("Z")) for drawing in drawings)
    assert second >= first


def test_off_a_terminal_the_drawings_follow_each_other(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(sqlite_url)
    service.queue_task(TaskDescription("invoice", [1]), tube="billing")
    finish_next(service, "billing", Status.DONE)
    result = pheanq([*WATCH, "--count", "3"], make_env(sqlite_url), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    assert result.stdout.count("pheanq status at ") == 3
    assert result.stdout.count("ended in the last minute:\n") == 3
    assert result.stdout.count("  billing: 1 done, 0 failed\n") == 3


def test_on_a_terminal_each_drawing_replaces_the_last_and_ctrl_c_ends_it_quietly(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    terminal, its_side = pty.openpty()
    seen = b""
    try:
        process = subprocess.Popen([sys.executable, "-m", "pheanq", *WATCH], stdout=its_side,
                                   stderr=subprocess.PIPE, env=make_env(sqlite_url), cwd=tmp_path)
        os.close(its_side)

        def two_drawings() -> bool:
            nonlocal seen
            seen += os.read(terminal, 65536)
            return seen.count(b"\x1b[H\x1b[2J") >= 2

        wait_for(two_drawings, 30, "two drawings on the terminal")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        os.close(terminal)
    assert process.returncode == 0
    assert b"Traceback" not in err and err == b"", err
    assert seen.count(b"pheanq status at ") >= 2


def test_bad_watch_options_are_one_line_errors(sqlite_url: str, tmp_path: Path, make_env: MakeEnv) -> None:
    env = make_env(sqlite_url)
    for args, named in ((["status", "--count", "2"], "--count goes with --watch"),
                        ([*WATCH[:2], "--interval", "0.1"], "--interval"),
                        ([*WATCH, "--count", "0"], "--count")):
        result = pheanq(args, env, tmp_path)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
