"""The `pheanq` command as an operator runs it, as a real process: status beside beanstalkd's figures (and
without beanstalkd), show, db upgrade, regeneration, cleanup, the example task, --help everywhere, and a
one-line error (never a traceback) when the database was never upgraded or an argument is bad."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.script import ScriptDirectory
from support import Beanstalkd, claims, drop_pheanq_tables, one_error_line, pheanq, server_database_urls

from pheanq import Status, TaskDescription
from pheanq.cli import cli
from pheanq.producer.example import ANNOUNCEMENT
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.storage.migrate import _alembic_config, upgrade_database
from pheanq.storage.tables import task_table

DESCRIPTION = TaskDescription("invoice", [42, "a b"], {"send": True})
Run = subprocess.CompletedProcess[str]


def run_all(cases: Sequence[Sequence[str]], env: dict[str, str], cwd: Path, timeout: float = 30) -> list[Run]:
    """Run several pheanq commands at once (they are independent); results in the order given."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: pheanq(args, env, cwd, timeout=timeout), cases))


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=["sqlite", *server_database_urls()])
def never_upgraded_url(request: pytest.FixtureRequest, tmp_path: Path,
                       _upgraded_servers: dict[str, str]) -> Iterator[str]:
    """A database of each kind that pheanq never upgraded; server ones are upgraded again afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'never-upgraded.db'}"
        return
    url = _upgraded_servers[request.param]
    drop_pheanq_tables(url)
    try:
        yield url
    finally:
        store = Store(url)
        upgrade_database(store)
        store.close()


def _queue_and_finish(service: TaskQueueService, tube: str, *, done: bool, log: str | None = None,
                      exit_code: int | None = None) -> int:
    task_id = service.queue_task(DESCRIPTION, tube=tube)
    package = claims(service).reserve_task(tube, timeout=0)
    assert package is not None and package.task_id == task_id
    if done:
        assert claims(service).mark_done(package, log)
    else:
        assert claims(service).mark_failed(package, log, exit_code)
    return task_id


def _status_fixture(service: TaskQueueService) -> None:
    """Tube `pheanq`: one done, one working (reserved by `service`), one new; tube `other`: one failed."""
    _queue_and_finish(service, "pheanq", done=True)
    working = service.queue_task(DESCRIPTION)
    service.queue_task(DESCRIPTION)
    package = claims(service).reserve_task("pheanq", timeout=0)
    assert package is not None and package.task_id == working
    _queue_and_finish(service, "other", done=False)


def test_status_counts_tasks_per_tube_and_status_beside_beanstalkds_figures(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    service = make_service(db_url)
    _status_fixture(service)
    as_text, as_json = run_all([["status"], ["status", "--json"]], make_env(db_url), tmp_path)
    assert as_text.returncode == 0 and as_json.returncode == 0, as_text.stderr + as_json.stderr

    report = json.loads(as_json.stdout)
    assert report["database"] == service.store.safe_url
    assert report["beanstalkd"] == service.beanstalkd.server
    assert report["beanstalkd_error"] is None
    assert set(report["tubes"]) == {"pheanq", "other"}
    zero = {status.value: 0 for status in Status}
    assert report["tubes"]["pheanq"]["tasks"] == {**zero, "new": 1, "working": 1, "done": 1}
    assert report["tubes"]["other"]["tasks"] == {**zero, "failed": 1}
    pheanq_jobs = report["tubes"]["pheanq"]["beanstalkd"]
    assert (pheanq_jobs["current-jobs-ready"], pheanq_jobs["current-jobs-reserved"],
            pheanq_jobs["current-jobs-delayed"], pheanq_jobs["current-jobs-buried"]) == (1, 1, 0, 0)
    other_jobs = report["tubes"]["other"]["beanstalkd"]
    assert (other_jobs["current-jobs-ready"], other_jobs["current-jobs-reserved"]) == (0, 0)

    lines = as_text.stdout.splitlines()
    assert lines[0] == f"database {service.store.safe_url}   beanstalkd {service.beanstalkd.server}"
    header = lines[2].split()
    assert header == ["tube", *(s.value for s in Status), "|", "ready", "reserved", "delayed", "buried",
                      "watching"]
    table = lines[3:lines.index("", 3)]  # the pool of worker-tenders follows after a blank line
    rows = {line.split()[0]: dict(zip(header, line.split(), strict=True)) for line in table}
    assert set(rows) == {"pheanq", "other"}
    assert {k: rows["pheanq"][k] for k in ("new", "working", "done", "failed", "ready", "reserved")} == {
        "new": "1", "working": "1", "done": "1", "failed": "0", "ready": "1", "reserved": "1"}
    assert (rows["other"]["failed"], rows["other"]["ready"]) == ("1", "0")
    assert "unreachable" not in as_text.stdout


def test_status_without_beanstalkd_still_shows_the_tables_counts_and_says_it_is_unreachable(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    _status_fixture(service)
    service.close()
    beanstalkd.stop()
    as_text, as_json = run_all([["status"], ["status", "--json"]], make_env(sqlite_url), tmp_path)
    assert as_text.returncode == 0 and as_json.returncode == 0, as_text.stderr + as_json.stderr

    report = json.loads(as_json.stdout)
    assert f"beanstalkd at {beanstalkd.address_text} is unreachable" in report["beanstalkd_error"]
    assert report["tubes"]["pheanq"]["tasks"]["working"] == 1
    assert report["tubes"]["other"]["tasks"]["failed"] == 1
    assert report["tubes"]["pheanq"]["beanstalkd"] is None

    pheanq_row = next(line.split() for line in as_text.stdout.splitlines() if line.startswith("pheanq "))
    assert pheanq_row == ["pheanq", "1", "1", "1", *["0"] * (len(Status) - 3), "|", "-", "-", "-", "-", "-"]
    text_lines = as_text.stdout.splitlines()
    below_table = text_lines[text_lines.index("", 3) - 1]  # the line under the table, before the pool
    assert below_table.startswith(f"beanstalkd: beanstalkd at {beanstalkd.address_text} is unreachable")
    assert "worker-tenders: none reported" in text_lines


def test_show_prints_a_task_with_its_log_as_text_and_json(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    service = make_service(db_url)
    log = "--- attempt 1 on w: failed after 0.10s: exit code 3\nline one\nline ü two\n"
    task_id = _queue_and_finish(service, "pheanq", done=False, log=log, exit_code=3)
    env = make_env(db_url)
    as_text, as_json, missing, zero = run_all(
        [["show", str(task_id)], ["show", str(task_id), "--json"], ["show", "987654"], ["show", "0"]], env, tmp_path)
    assert as_text.returncode == 0 and as_json.returncode == 0, as_text.stderr + as_json.stderr

    report = json.loads(as_json.stdout)
    row = service.find_task(task_id)
    assert {k: report[k] for k in ("id", "command", "tube", "status", "exit_code", "attempts", "job_id", "log")} == {
        "id": task_id, "command": "invoice", "tube": "pheanq", "status": "failed", "exit_code": 3, "attempts": 1,
        "job_id": row.job_id, "log": log}
    assert report["command_line"] == "invoice 42 'a b' --send"
    assert report["worker"] == service.dispatch.worker_name
    assert report["created"].endswith("Z") and report["finished"].endswith("Z")

    text = as_text.stdout.splitlines()
    assert text[0] == f"task {task_id}"
    fields = dict(re.split(r"\s+", line.strip(), maxsplit=1) for line in text[1:text.index("log:")])
    assert (fields["status"], fields["exit_code"], fields["command_line"]) == ("failed", "3", "invoice 42 'a b' --send")
    assert text[text.index("log:") + 1:] == log.rstrip("\n").splitlines()

    assert missing.returncode == 1
    assert one_error_line(missing) == "pheanq: error: task 987654 does not exist"
    assert zero.returncode == 2 and "ID" in one_error_line(zero)


def test_a_database_left_at_an_older_revision_gets_run_db_upgrade_not_a_traceback(
    sqlite_url: str, tmp_path: Path, make_env: Callable[..., dict[str, str]],
) -> None:
    store = Store(sqlite_url)
    config = _alembic_config()
    with store.database.transaction() as conn:  # back to the first revision: the task table, not the pool table
        config.attributes["connection"] = conn
        alembic_command.downgrade(config, "0001")
    store.close()
    env = make_env(sqlite_url)
    status = pheanq(["status"], env, tmp_path)
    assert status.returncode == 1
    line = one_error_line(status)
    # Each later revision adds to what is missing: every table and column that came after 0001 is named.
    assert line.startswith(f"pheanq: error: the database {Store(sqlite_url).safe_url} lacks "), line
    assert line.endswith(": run `pheanq db upgrade`"), line
    for missing in ("the table pheanq_worker", "the table pheanq_lock", "the table pheanq_buried",
                    "the table pheanq_tube", "the column pheanq_task.heartbeat", "the column pheanq_task.timeout",
                    "the column pheanq_task.run_at"):
        assert missing in line, line
    assert pheanq(["db", "upgrade"], env, tmp_path).returncode == 0
    assert pheanq(["status"], env, tmp_path).returncode == 0

def test_db_upgrade_creates_the_table_on_an_empty_database_and_a_second_run_changes_nothing(
    never_upgraded_url: str, tmp_path: Path, make_env: Callable[..., dict[str, str]],
) -> None:
    env = make_env(never_upgraded_url)
    safe = Store(never_upgraded_url).safe_url
    before = pheanq(["status"], env, tmp_path)
    assert before.returncode == 1
    assert one_error_line(before) == f"pheanq: error: the database {safe} has no pheanq tables: run `pheanq db upgrade`"

    first = pheanq(["db", "upgrade"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"database {safe} upgraded from empty to revision {head_revision()}\n"
    second = pheanq(["db", "upgrade"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"database {safe} is already at revision {head_revision()}\n"

    store = Store(never_upgraded_url)
    try:
        assert store.tasks.count_tasks() == []
        assert sa.inspect(store.database.engine).has_table("pheanq_task")
    finally:
        store.close()


def test_every_command_on_a_never_upgraded_database_says_to_run_db_upgrade(
    tmp_path: Path, make_env: Callable[..., dict[str, str]],
) -> None:
    url = f"sqlite:///{tmp_path / 'never-upgraded.db'}"
    commands = [["status"], ["status", "--json"], ["show", "1"], ["task-cleanup"], ["add-example-task"],
                ["regenerate-failed-task", "--id", "1,2,3"], ["task-worker", "--stop-when-empty"],
                ["task-worker"]]
    results = run_all(commands, make_env(url), tmp_path, timeout=15)  # a worker that waits would hang
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert one_error_line(result).endswith("has no pheanq tables: run `pheanq db upgrade`"), args
        assert "READY" not in result.stdout


def test_regenerate_failed_task_restarts_failed_ones_and_names_each_it_cannot(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    service = make_service(db_url)
    failed = _queue_and_finish(service, "pheanq", done=False, exit_code=1)
    done = _queue_and_finish(service, "pheanq", done=True)
    alone = _queue_and_finish(service, "pheanq", done=False, exit_code=1)
    missing = alone + 1000
    mixed, single = run_all([["regenerate-failed-task", "--id", f"{failed}, {done},{missing}"],
                             ["regenerate-failed-task", "--id", str(alone)]], make_env(db_url), tmp_path)

    assert mixed.returncode == 1
    row = service.find_task(failed)
    assert row.status is Status.RESTARTED
    assert mixed.stdout == f"task {failed}: restarted as job {row.job_id}\n"
    assert mixed.stderr.splitlines() == [
        f"task {done}: not regenerated: task {done} is done; only failed tasks can be regenerated",
        f"task {missing}: not regenerated: task {missing} does not exist",
    ]
    assert service.status_of(done) is Status.DONE
    assert single.returncode == 0, single.stderr
    assert service.status_of(alone) is Status.RESTARTED
    assert single.stdout == f"task {alone}: restarted as job {service.find_task(alone).job_id}\n"


@pytest.mark.parametrize("ids", ["abc", "0", "1,,2", "-1", "1.5", "²", "", "1;2"])
def test_regenerate_failed_task_refuses_a_bad_id_with_exit_code_2(
    ids: str, tmp_path: Path, make_env: Callable[..., dict[str, str]],
) -> None:
    result = pheanq(["regenerate-failed-task", "--id", ids], make_env(f"sqlite:///{tmp_path / 'x.db'}"), tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "'--id'" in line and "is not a task id" in line
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_task_cleanup_deletes_done_tasks_older_than_the_period(
    db_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    service = make_service(db_url)
    old = _queue_and_finish(service, "pheanq", done=True)
    recent = _queue_and_finish(service, "pheanq", done=True)
    failed = _queue_and_finish(service, "pheanq", done=False)
    long_ago = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=3)
    with service.store.database.transaction() as conn:
        conn.execute(sa.update(task_table).where(task_table.c.id.in_([old, failed])).values(finished=long_ago))
    cleaned, negative = run_all([["task-cleanup", "--period", "3600"], ["task-cleanup", "--period", "-1"]],
                                make_env(db_url), tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout == "deleted 1 done task(s) that finished more than 3600s ago\n"
    assert [service.status_of(i) for i in (old, recent, failed)] == [None, Status.DONE, Status.FAILED]
    assert negative.returncode == 2 and "--period" in one_error_line(negative)


def test_add_example_task_queues_as_many_tasks_as_asked_and_prints_their_ids(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]],
) -> None:
    result = pheanq(["add-example-task", "--total-tasks", "150", "--wait", "0", "--message", "hi there"],
                    make_env(sqlite_url), tmp_path)
    assert result.returncode == 0, result.stderr
    found = re.fullmatch(r"queued 150 example task\(s\) into tube pheanq: id (\d+)\.\.(\d+)\n", result.stdout)
    assert found, result.stdout
    first, last = int(found[1]), int(found[2])
    assert last - first + 1 == 150
    service = make_service(sqlite_url)
    assert service.store.tasks.count_tasks() == [("pheanq", Status.NEW, 150)]
    for task_id in (first, first + 75, last):
        row = service.find_task(task_id)
        assert (row.command, row.status, row.tube) == ("example-task-worker", Status.NEW, "pheanq")
        assert row.job_id is not None
    assert service.beanstalkd.tube_stats("pheanq") is not None
    assert (service.beanstalkd.tube_stats("pheanq") or {})["current-jobs-ready"] == 150

    other = pheanq(["add-example-task", "--use-tube", "examples"], make_env(sqlite_url), tmp_path)
    assert other.returncode == 0, other.stderr
    assert re.fullmatch(r"queued 1 example task\(s\) into tube examples: id \d+\n", other.stdout)


def test_example_task_worker_prints_the_announcement_a_dot_a_second_and_the_message(
    tmp_path: Path,
) -> None:
    result = pheanq(["example-task-worker", "2", "--message", "hi"], {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ANNOUNCEMENT}\n..\nhi\n"


def _command_paths(command: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):  # the group's commands load on first use: asked by name
            sub = command.get_command(context, name)
            assert sub is not None, name
            yield from _command_paths(sub, [*path, name])


def test_every_command_has_help(tmp_path: Path) -> None:
    commands = list(_command_paths(cli, []))
    assert len(commands) >= 10
    results = run_all([[*path, "--help"] for path, _ in commands], {"PATH": "/usr/bin:/bin"}, tmp_path)
    for (path, command), result in zip(commands, results, strict=True):
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.startswith("Usage: ") and " ".join(path) in result.stdout.splitlines()[0]
        summary = (command.help or "").splitlines()[0]
        assert summary and summary in " ".join(result.stdout.split()), path
        assert result.stderr == ""


def test_a_group_called_without_a_command_shows_its_help_not_an_error(tmp_path: Path) -> None:
    for path in ([], ["db"]):
        result = pheanq(path, {"PATH": "/usr/bin:/bin"}, tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith("Usage: "), result.stderr
        assert "Commands:" in result.stderr and "error" not in result.stderr

