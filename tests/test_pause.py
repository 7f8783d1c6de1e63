"""Pausing a tube, with real workers, a real beanstalkd (restarted too) and real databases: a paused tube's
tasks wait while queueing goes on, a running task finishes, the pause outlives a beanstalkd restart, and it
ends on `pheanq resume` or by itself."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import greenstalk
from support import Beanstalkd, WorkerProcess, one_error_line, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def tube_is_paused_in_beanstalkd(server: Beanstalkd, tube: str) -> bool:
    with greenstalk.Client(server.address, encoding=None) as client:
        return int(str(dict(client.stats_tube(tube))["pause"])) > 0


def test_a_paused_tube_waits_through_a_beanstalkd_restart_and_runs_once_resumed(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    write_config(tmp_path, commands={"ok": [sys.executable, "-c", "pass"]})
    service = make_service(db_url)
    env = make_env(db_url)
    first = service.queue_task(TaskDescription("ok"), tube="mail")
    paused = pheanq(["pause", "--use-tube", "mail"], env, tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "tube mail paused until `pheanq resume`\n"
    status = json.loads(pheanq(["status", "--json"], env, tmp_path).stdout)
    assert list(status["paused"]) == ["mail"]

    worker = start_worker(["--use-tube", "mail,other"], env)
    other = service.queue_task(TaskDescription("ok"), tube="other")  # another tube the worker serves goes on
    wait_for(lambda: service.status_of(other) is Status.DONE, 15, "the other tube's task")
    assert service.status_of(first) is Status.NEW
    worker.signal(15)
    assert worker.wait() == 0

    # beanstalkd forgets its pause (and, without a binlog, its jobs) when it restarts; the reconciler sends the
    # task again and pauses the tube again, and workers keep to the table's flag meanwhile.
    beanstalkd.stop()
    beanstalkd.start()
    alone = start_worker(["--use-tube", "mail", "--stop-when-empty"], env)
    assert alone.wait(15) == 0, alone.log
    assert "every tube is paused; stopping (--stop-when-empty)" in alone.log
    assert pheanq(["reconcile", "--min-age", "0"], env, tmp_path).returncode == 0
    assert tube_is_paused_in_beanstalkd(beanstalkd, "mail")
    assert service.status_of(first) is Status.NEW

    resumed = pheanq(["resume", "--use-tube", "mail"], env, tmp_path)
    assert resumed.stdout == "tube mail resumed\n"
    again = start_worker(["--use-tube", "mail", "--stop-when-empty"], env)
    assert again.wait(15) == 0, again.log
    assert service.status_of(first) is Status.DONE
    assert pheanq(["resume", "--use-tube", "mail"], env, tmp_path).stdout == "tube mail was not paused\n"


def test_a_pause_for_a_while_ends_by_itself(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    write_config(tmp_path, commands={"ok": [sys.executable, "-c", "pass"]})
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    task_id = service.queue_task(TaskDescription("ok"))
    paused = pheanq(["pause", "--for", "2"], env, tmp_path)
    assert paused.stdout.startswith("tube pheanq paused until 20") and paused.stdout.endswith(" UTC\n")
    assert tube_is_paused_in_beanstalkd(beanstalkd, "pheanq")
    worker = start_worker([], env)
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, f"the task after the pause; {worker.log}")
    row = service.find_task(task_id)
    assert row.started is not None and (row.started - row.created).total_seconds() >= 1.5  # not before its end


def test_pause_and_resume_refuse_bad_arguments_in_one_line(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    env = make_env(sqlite_url)
    for args, named in ((["pause", "--for", "0"], "--for"), (["pause", "--use-tube", "a,b"], "--use-tube"),
                        (["resume", "--use-tube", "-x"], "--use-tube")):
        result = pheanq(args, env, tmp_path)
        assert result.returncode == 2, result.stderr
        assert named in one_error_line(result)
