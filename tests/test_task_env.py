"""A task's command runs without pheanq's secret or its database's credentials in its environment.

A real worker runs `env` as a task on every database, with the secret and a database URL with a password in its
own environment: the task's log (which keeps the output) holds neither, and a variable named in `pass_env` does
reach the task. Unit tests cover which variables are kept out and why.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support import SYSTEM_PYTHON, TenderProcess, WorkerProcess, need_second_local_user, wait_for, write_config

import pheanq
from pheanq import Status, TaskDescription
from pheanq.config import load_settings
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.storage.migrate import upgrade_database
from pheanq.worker.task_env import task_environment

SECRET = "a secret of more than sixteen characters"

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def test_a_task_that_prints_its_environment_shows_no_secret_nor_database_password_but_a_passed_variable(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    worker_url = db_url
    if make_url(db_url).get_backend_name() == "postgresql":
        # The test server trusts local connections, so a password in the URL is sent, and does no harm.
        worker_url = make_url(db_url).set(password=password).render_as_string(hide_password=False)
    write_config(tmp_path, commands={"printenv": ["/usr/bin/env"]}, log_worker_output_on_success=True)
    service = make_service(db_url, secret=SECRET)
    task_id = service.queue_task(TaskDescription("printenv"))

    env = make_env(worker_url, PHEANQ_SECRET=SECRET, PHEANQ_PASS_ENV="APP_TOKEN, PGPASSWORD",
                   APP_TOKEN="passed-through-token", PGPASSWORD=f"pg-{password}", MYSQL_PWD=f"my-{password}",
                   DATABASE_URL=worker_url, COPY_OF_SECRET=SECRET)
    worker = start_worker(["--stop-when-empty"], env)
    assert worker.wait() == 0, worker.log

    row = service.find_task(task_id)
    assert row.status is Status.DONE, row.log
    assert row.log is not None and f"PHEANQ_TASK_ID={task_id}" in row.log
    assert SECRET not in row.log
    assert "PHEANQ_" not in row.log.replace(f"PHEANQ_TASK_ID={task_id}", "")
    assert f"my-{password}" not in row.log
    if worker_url != db_url:  # a copy of the URL with its password (DATABASE_URL) is kept out too
        assert worker_url not in row.log
    assert password not in row.log.replace(f"PGPASSWORD=pg-{password}", "")
    # Named in pass_env, these reach the task although one of them is a driver's password variable.
    assert "APP_TOKEN=passed-through-token" in row.log
    assert f"PGPASSWORD=pg-{password}" in row.log


def test_the_database_url_a_tender_is_given_on_its_command_line_reaches_its_workers_but_not_their_tasks(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    tender_url = make_url(db_url)
    if tender_url.get_backend_name() == "postgresql":  # the test server trusts local connections
        tender_url = tender_url.set(password=password)
    elif tender_url.get_backend_name() == "sqlite":  # the driver ignores a query parameter it does not know
        tender_url = tender_url.update_query_dict({"password": password})
    url = tender_url.render_as_string(hide_password=False)
    write_config(tmp_path, commands={"printenv": ["/usr/bin/env"]}, log_worker_output_on_success=True)
    env = make_env(db_url, PHEANQ_RUN_DIR=str(tmp_path / "run"))
    del env["PHEANQ_DATABASE_URL"]
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("printenv"))

    tender = TenderProcess(["--min-workers", "1", "--spare-workers", "0", "--max-workers", "1"], env, tmp_path,
                           global_args=["--database-url", url])
    try:
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 30, f"task {task_id} done; log:\n{tender.log}")
    finally:
        tender.stop()
    log = service.find_task(task_id).log
    assert log is not None and f"PHEANQ_TASK_ID={task_id}" in log
    assert "PHEANQ_DATABASE_URL" not in log and url not in log
    assert password not in log


# Prints what the task can read of its parent's (its worker's) and grandparent's environment and command line.
PEEK = ("echo PEEKED; parent=$PPID; grandparent=$(cut -d' ' -f4 /proc/$parent/stat); "
        "for p in $parent $grandparent; do tr '\\0' '\\n' < /proc/$p/environ; tr '\\0' ' ' < /proc/$p/cmdline; "
        "echo; done; exit 1")


@dataclasses.dataclass
class LocalUser:
    """An ordinary local user (not root, whose tasks may read any process's memory) and a directory of its own."""

    uid: int
    gid: int
    home: Path

    def python(self) -> list[str]:
        """Start this checkout's pheanq as this user, with the system's Python and the virtualenv's packages."""
        packages = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "env",
                f"HOME={self.home}", f"PYTHONPATH={Path(pheanq.__file__).parent.parent}:{packages}", SYSTEM_PYTHON]


@pytest.fixture
def local_user() -> Iterator[LocalUser]:
    need_second_local_user("running a worker as an ordinary user", same_python=True)
    name = f"pheanq-app-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    home = Path(tempfile.mkdtemp(prefix="pheanq-app-", dir="/tmp"))
    os.chown(home, entry.pw_uid, entry.pw_gid)
    try:
        yield LocalUser(entry.pw_uid, entry.pw_gid, home)
    finally:
        shutil.rmtree(home)
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.mark.parametrize("started_by", ["cron", "a tender"])
def test_a_task_cannot_read_the_secret_from_its_workers_environment(
    local_user: LocalUser, make_service: MakeService, make_env: MakeEnv, started_by: str,
) -> None:
    """Issue 11, item 4 (review): the task's own environment was clean, but it runs as its worker's user, and
    `/proc/$PPID/environ` (its worker's) and its tender's held PHEANQ_SECRET and PHEANQ_DATABASE_URL: printed,
    they landed in the task's log."""
    home = local_user.home
    database = home / "pheanq.db"
    secret = "review-" + secrets.token_hex(16)
    password = f"pw-{secrets.token_hex(8)}"
    url = f"sqlite:///{database}?password={password}"  # the driver ignores a query parameter it does not know
    config = write_config(home, commands={"peek": ["sh", "-c", PEEK]}, log_worker_output_on_failure=True)
    store = Store(f"sqlite:///{database}")
    upgrade_database(store)
    store.close()
    service = make_service(f"sqlite:///{database}", secret=secret)
    task_id = service.queue_task(TaskDescription("peek"))
    for made in home.glob("pheanq.db*"):  # root's own later journal files take the owner of the database's
        os.chown(made, local_user.uid, local_user.gid)
    env = make_env(url, PHEANQ_SECRET=secret, PHEANQ_RUN_DIR=str(home / "run"), PHEANQ_CONFIG=str(config))
    if started_by == "cron":
        worker = WorkerProcess(["--stop-when-empty"], env, home, python=local_user.python())
        try:
            assert worker.wait() == 0, worker.log
        finally:
            worker.stop()
    else:
        # A memory limit makes the tender read its workers' /proc entries: they stay readable to it.
        tender = TenderProcess(["--min-workers", "1", "--spare-workers", "0", "--max-workers", "1",
                                "--max-worker-memory", "10000"], env, home, python=local_user.python())
        try:
            wait_for(lambda: service.status_of(task_id) is Status.FAILED, 30, f"the task; log:\n{tender.log}")
        finally:
            tender.stop()
        assert "Traceback" not in tender.log, tender.log
    log = service.find_task(task_id).log or ""
    assert "PEEKED" in log and "pheanq task-worker" in log, log
    assert secret not in log and password not in log and "PHEANQ_" not in log, log


def test_pheanqs_own_variables_and_driver_passwords_are_kept_out_and_the_task_id_is_set() -> None:
    settings = load_settings({}, environ={"PHEANQ_CONFIG": "/dev/null"})
    environ = {"PATH": "/usr/bin", "HOME": "/home/app", "PHEANQ_SECRET": SECRET, "PHEANQ_TUBE": "t",
               "PHEANQ_TASK_ID": "999", "PGPASSWORD": "x", "MYSQL_PWD": "y", "LANG": "C.UTF-8"}
    assert task_environment(environ, settings, 7) == {"PATH": "/usr/bin", "HOME": "/home/app", "LANG": "C.UTF-8",
                                                      "PHEANQ_TASK_ID": "7"}


def test_a_variable_holding_the_secret_or_the_urls_credentials_is_kept_out_but_a_common_word_is_not() -> None:
    url = "postgresql://app:postgres@db/app?sslpassword=k3y-phrase&application_name=w"
    settings = load_settings({"database_url": url, "secret": SECRET}, environ={"PHEANQ_CONFIG": "/dev/null"})
    environ = {"DATABASE_URL": url, "COPY": f"x{SECRET}y", "KEY_URL": "postgresql://db/app?sslpassword=k3y-phrase",
               "PATH": "/usr/lib/postgres/bin:/usr/bin", "NAME": "app"}
    assert task_environment(environ, settings, 1) == {"PATH": "/usr/lib/postgres/bin:/usr/bin", "NAME": "app",
                                                      "PHEANQ_TASK_ID": "1"}


def test_pass_env_lets_named_variables_through_from_the_toml_file_or_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, pass_env=["PHEANQ_DATABASE_URL", "PGPASSWORD"])
    environ = {"PHEANQ_CONFIG": str(path), "PHEANQ_DATABASE_URL": "sqlite:///x.db", "PGPASSWORD": "p",
               "PHEANQ_SECRET": SECRET}
    settings = load_settings({}, environ)
    assert settings.pass_env == ("PHEANQ_DATABASE_URL", "PGPASSWORD")
    assert task_environment(environ, settings, 3) == {"PHEANQ_DATABASE_URL": "sqlite:///x.db", "PGPASSWORD": "p",
                                                      "PHEANQ_TASK_ID": "3"}
    from_env = load_settings({}, {"PHEANQ_CONFIG": "/dev/null", "PHEANQ_PASS_ENV": " A_B, C ,"})
    assert from_env.pass_env == ("A_B", "C")
