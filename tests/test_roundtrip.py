"""A task queued from application code runs in a real worker and ends `done` in SQL, on every database."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from support import WorkerProcess, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService


def test_queued_task_runs_once_and_is_done(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    marker = tmp_path / "ran.txt"
    write_config(tmp_path, commands={"record": [sys.executable, "-c",
                 "import os,sys; open(sys.argv[1],'a').write("
                 "os.environ['PHEANQ_TASK_ID']+' '+' '.join(sys.argv[2:])+'\\n')",
                 str(marker)]})
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("record", ["a b", 7], {"flag": True, "off": False, "n": 3}))
    assert service.status_of(task_id) is Status.NEW

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log

    assert marker.read_text() == f"{task_id} a b 7 --flag --n=3\n"
    row = service.find_task(task_id)
    assert row.status is Status.DONE
    assert row.exit_code == 0 and row.attempts == 1
    assert row.started is not None and row.finished is not None and row.finished >= row.started
    assert worker.lines == ["READY", f"BUSY {task_id}", "READY"]
