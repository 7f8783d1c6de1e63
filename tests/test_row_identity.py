"""A job names one row: ids are never handed out twice, a body carries its row's nonce, and whether a task may
run on a worker is decided on the row (the command that will run), never on what the body says.

Real `pheanq task-worker` processes, a real beanstalkd, jobs put with a plain greenstalk client as any other
program on the beanstalkd port could, on every database where SQL decides.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import greenstalk
import sqlalchemy as sa
from support import Beanstalkd, WorkerProcess, job_state, pheanq, write_config

from pheanq import Status, TaskDescription
from pheanq.body import decode_body, encode_body
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

TUBE = "pheanq"  # the default tube
SECRET = "row-identity-test-secret-0123456789"

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def record_command(tmp_path: Path) -> tuple[list[str], Path]:
    """A command that appends `<task id> <arguments>` to runs.txt, and that file."""
    runs = tmp_path / "runs.txt"
    script = tmp_path / "record.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(" ".join([os.environ["PHEANQ_TASK_ID"], *sys.argv[2:]]) + "\\n")
    """))
    return [sys.executable, str(script), str(runs)], runs


def runs_of(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def put(server: Beanstalkd, body: bytes) -> int:
    with greenstalk.Client(server.address, encoding=None, use=TUBE, watch=TUBE) as client:
        return client.put(body)


def peek(server: Beanstalkd, job_id: int) -> bytes:
    with greenstalk.Client(server.address, encoding=None, use=TUBE, watch=TUBE) as client:
        return client.peek(job_id).body


def test_ids_are_never_handed_out_again_after_task_cleanup_deletes_the_newest_rows(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    """SQLite used to give the next task the id of the newest row once task-cleanup deleted it."""
    command, runs = record_command(tmp_path)
    write_config(tmp_path, commands={"record": command})
    service = make_service(db_url, commands={"record": command})
    env = make_env(db_url)
    first = [service.queue_task(TaskDescription("record", [n])) for n in range(3)]
    worker = start_worker(["--stop-when-empty"], env)
    assert worker.wait() == 0, worker.log
    assert all(service.status_of(task_id) is Status.DONE for task_id in first)
    assert sorted(runs_of(runs)) == [f"{task_id} {n}" for n, task_id in enumerate(first)]

    cleanup = pheanq(["task-cleanup", "--period", "0"], env, tmp_path)
    assert cleanup.returncode == 0, cleanup.stderr
    assert "deleted 3 done task(s)" in cleanup.stdout
    assert all(service.status_of(task_id) is None for task_id in first)

    later = service.queue_task(TaskDescription("record", ["later"]))
    assert later > max(first), f"task id {later} was handed out before ({first})"


def test_a_job_left_from_a_re_created_database_is_buried_and_does_not_touch_the_task_that_now_has_its_id(
    tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, beanstalkd: Beanstalkd,
) -> None:
    """The job of task 1 of a database that was re-created (or restored from a backup) while beanstalkd kept
    its jobs is signed and well-formed; it names task 1, which is now another task. It must not run that task,
    nor end it."""
    command, runs = record_command(tmp_path)
    write_config(tmp_path, commands={"record": command}, secret=SECRET)
    old_url, new_url = (f"sqlite:///{tmp_path / name}" for name in ("old.db", "new.db"))
    for url in (old_url, new_url):
        assert pheanq(["db", "upgrade"], make_env(url), tmp_path).returncode == 0
    old = make_service(old_url, commands={"record": command}, secret=SECRET)
    old_task = old.queue_task(TaskDescription("record", ["from the old database"]))
    old_job = old.find_task(old_task).job_id
    assert old_job is not None
    new = make_service(new_url, commands={"record": command}, secret=SECRET)
    new_task = new.queue_task(TaskDescription("record", ["from the new database"]))
    assert new_task == old_task  # the same id, another task

    worker = start_worker(["--stop-when-empty"], make_env(new_url))
    assert worker.wait() == 0, worker.log
    # The old job came first (beanstalkd hands out the older of two equal jobs first) and was buried; the task's
    # own job ran it, once.
    assert runs_of(runs) == [f"{new_task} from the new database"], worker.log[-3000:]
    assert job_state(beanstalkd, old_job) == "buried"
    assert f"the job names task {new_task}, but not the row that has that id now" in worker.log
    row = new.find_task(new_task)
    assert (row.status, row.attempts, row.exit_code) == (Status.DONE, 1, 0)


def test_a_task_whose_command_the_worker_does_not_have_is_left_as_it_is_whatever_command_its_body_names(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    """Without a secret anyone can put a body: one that names a task whose command is not registered on this
    worker, but names a command that is, used to make the worker claim the task, run the row's command (not
    registered: the attempt fails) and end the task `failed` for good."""
    command, runs = record_command(tmp_path)
    write_config(tmp_path, commands={"record": command})
    producer = make_service(db_url, commands={"record": command, "elsewhere": ["/bin/true"]})
    task_id = producer.queue_task(TaskDescription("elsewhere", ["only on other hosts"]), tube="other")
    row = producer.find_task(task_id)
    assert row.job_id is not None
    genuine = decode_body(peek(beanstalkd, row.job_id))  # beanstalkd has no authentication: anyone can peek
    forged = encode_body(task_id, TaskDescription("record", ["forged"]), nonce=genuine.nonce)
    row_before = producer.find_task(task_id)
    with greenstalk.Client(beanstalkd.address, encoding=None, use="other") as client:
        forged_job = client.put(forged)

    worker = start_worker(["--stop-when-empty", "--use-tube", "other"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    assert runs_of(runs) == []
    assert job_state(beanstalkd, forged_job) == "buried"
    assert job_state(beanstalkd, row.job_id) == "buried"  # the genuine job too: its command is not here
    assert f"task {task_id}: command 'elsewhere' is not registered on this worker" in worker.log
    row = producer.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code, row.log) == (Status.NEW, 0, None, row_before.log)


def test_a_body_without_a_nonce_or_with_another_one_is_buried_and_the_row_it_names_is_untouched(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    command, runs = record_command(tmp_path)
    write_config(tmp_path, commands={"record": command})
    service = make_service(db_url, commands={"record": command})
    task_id = service.queue_task(TaskDescription("record", ["later"]), delay=3600)
    description = TaskDescription("record", ["forged"])
    no_nonce = put(beanstalkd, encode_body(task_id, description))
    other_nonce = put(beanstalkd, encode_body(task_id, description, nonce="0123456789abcdef"))
    bad_nonce = put(beanstalkd, json.dumps({"pheanq": 1, "task_id": task_id, "nonce": 7,
                                            "description": description.to_data()}).encode())

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    assert runs_of(runs) == []
    for job_id in (no_nonce, other_nonce, bad_nonce):
        assert job_state(beanstalkd, job_id) == "buried"
    assert "nonce is not 1-32 lowercase hex digits" in worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.NEW, 0, None)


def test_a_row_and_a_job_from_before_nonces_still_run_together(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    """After the upgrade to revision 0008, rows written before it have no nonce, and neither have their jobs
    waiting in beanstalkd: those run as before."""
    command, runs = record_command(tmp_path)
    write_config(tmp_path, commands={"record": command})
    service = make_service(db_url, commands={"record": command})
    task_id = service.queue_task(TaskDescription("record", ["old"]), delay=3600)
    with service.store.database.transaction() as conn:
        conn.execute(sa.update(task_table).where(task_table.c.id == task_id).values(nonce=None, run_at=None))
    legacy_job = put(beanstalkd, encode_body(task_id, TaskDescription("record", ["old"])))

    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    assert runs_of(runs) == [f"{task_id} old"]
    assert job_state(beanstalkd, legacy_job) is None
    row = service.find_task(task_id)
    assert (row.status, row.attempts) == (Status.DONE, 1)


def test_every_task_row_gets_its_own_nonce_and_its_job_carries_it(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    ids = [service.queue_task(TaskDescription("work", [n])) for n in range(3)]
    ids += service.queue_many([TaskDescription("work", ["many"])] * 2)
    rows = [service.find_task(task_id) for task_id in ids]
    nonces = [row.nonce for row in rows]
    assert all(nonce is not None and len(nonce) == 16 for nonce in nonces), nonces
    assert len(set(nonces)) == len(nonces)
    for row in rows:
        assert row.job_id is not None
        assert decode_body(peek(beanstalkd, row.job_id)).nonce == row.nonce
