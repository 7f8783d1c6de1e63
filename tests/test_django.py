"""Django: tasks queued with `django_db=` in a real Django project (tests/djangoproject) on pheanq's own database.

Each step of the application runs as a Django process of its own (djangoproject.scenario), configured for this
test's database; a real `pheanq task-worker --import djangoproject.worker` runs the task, which reads and updates
the invoice through the ORM. beanstalkd is real, and its jobs are counted with a plain client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import greenstalk
import pytest
import sqlalchemy as sa
from support import Beanstalkd, WorkerProcess, jobs_per_task

from pheanq import Status
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import task_table

TESTS = Path(__file__).parent
TASK = "py:djangoproject.billing.tasks.pay_invoice"  # a Python task's command: py:<its name>

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]
Django = Callable[..., dict[str, Any]]


@pytest.fixture
def django_env(db_url: str, make_env: MakeEnv) -> dict[str, str]:
    """The environment of the Django project and of its pheanq worker, both on this test's database."""
    path = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return make_env(db_url, DJANGO_SETTINGS_MODULE="djangoproject.settings", PYTHONPATH=os.pathsep.join(path))


@pytest.fixture
def django(django_env: dict[str, str], tmp_path: Path) -> Django:
    """Run one step of the Django application (`django("queue-in-atomic")`); its JSON answer. The database is
    migrated, without invoices, before the first step."""

    def run(step: str, *args: str, **env: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "djangoproject.scenario", step, *args], cwd=tmp_path,
                              env={**django_env, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"django step {step} failed:\n{done.stderr}"
        answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return answer

    run("migrate")
    return run


def task_ids(service: TaskQueueService) -> list[int]:
    """Every task id in pheanq's table, in order."""
    with service.store.database.transaction() as conn:
        return [int(task_id) for task_id in conn.execute(sa.select(task_table.c.id).order_by(task_table.c.id))
                .scalars()]


def run_worker(start_worker: StartWorker, env: dict[str, str]) -> WorkerProcess:
    """A real worker that imports the Django project, runs what is queued, and stops once the tube is drained."""
    worker = start_worker(["--import", "djangoproject.worker", "--stop-when-drained"], env)
    assert worker.wait(60) == 0, worker.log
    return worker


def test_a_task_queued_inside_atomic_is_sent_at_commit_and_a_worker_sees_and_updates_the_invoice(
    django: Django, django_env: dict[str, str], db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
    start_worker: StartWorker,
) -> None:
    queued = django("queue-in-atomic")
    task_id, invoice = queued["task"], queued["invoice"]
    # Inside the block, pheanq's own connection saw no row and beanstalkd had no job; the commit sent it.
    assert (queued["status_before_commit"], queued["jobs_before_commit"]) == (None, 0)
    assert queued["jobs_after_commit"] == 1
    assert jobs_per_task(beanstalkd) == {task_id: 1}
    service = make_service(db_url)
    row = service.find_task(task_id)
    assert (row.status, row.command) == (Status.NEW, TASK)
    assert row.job_id is not None

    worker = run_worker(start_worker, django_env)
    assert f"BUSY {task_id}" in worker.lines
    result = service.result(task_id, wait=10)
    assert result["invoice"] == invoice and result["number"] == "INV-1"
    assert result["pid"] != worker.pid  # run in a forked child, on a Django connection of the child's own
    assert django("invoice", str(invoice)) == {"paid": True, "paid_by_task": task_id}
    assert jobs_per_task(beanstalkd) == {}


def test_a_rollback_leaves_no_row_and_no_job_and_a_rolled_back_savepoint_takes_only_its_own_task(
    django: Django, db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    answer = django("roll-back")
    service = make_service(db_url)
    # The abandoned block's invoice went with its task; of the second block, the savepoint's task went alone.
    assert answer["invoices"] == ["INV-3"]
    kept = answer["kept"]
    assert task_ids(service) == [kept]
    for dropped in answer["dropped"]:
        if dropped != kept:  # SQLite hands a rolled-back row's id out again
            assert service.status_of(dropped) is None
    assert jobs_per_task(beanstalkd) == {kept: 1}
    assert json.loads(service.find_task(kept).data)["args"] == [answer["kept_invoice"]]


def test_outside_atomic_the_row_commits_and_the_job_is_put_at_once(
    django: Django, django_env: dict[str, str], db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
    start_worker: StartWorker,
) -> None:
    queued = django("queue-in-autocommit")
    task_id = queued["task"]
    # Before the step returned, in Django's autocommit mode: the row was committed and its job was out.
    assert queued["in_atomic_block"] is False
    assert (queued["status"], queued["jobs"]) == ("new", 1)
    with greenstalk.Client(beanstalkd.address, encoding=None) as client:
        job_id = make_service(db_url).find_task(task_id).job_id
        assert job_id is not None
        assert client.stats_job(job_id)["pri"] == 5

    run_worker(start_worker, django_env)
    assert make_service(db_url).result(task_id, wait=10)["invoice"] == queued["invoice"]
    assert django("invoice", str(queued["invoice"])) == {"paid": True, "paid_by_task": task_id}


def test_django_on_another_database_than_pheanq_s_is_refused_with_one_line_and_nothing_is_written(
    django: Django, tmp_path: Path, db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    other = tmp_path / "application.db"
    answer = django("queue-on-another-database", DJANGO_DATABASE_URL=f"sqlite:///{other}")
    refused = answer["refused"]
    assert refused is not None and "\n" not in refused
    assert "same database" in refused and "application.db" in refused
    service = make_service(db_url)
    assert task_ids(service) == []
    assert jobs_per_task(beanstalkd) == {}
