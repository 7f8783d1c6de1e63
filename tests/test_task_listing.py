"""`pheanq tasks` as a listing, on every database: each filter selects exactly its tasks, keyset pages list every
task once (newest first, whatever is queued meanwhile), `--json` carries the next cursor, what a task controls is
printed escaped, and bad input gets one line and exit code 2."""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from support import claims, one_error_line, pheanq

from pheanq import Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.ops.selection import list_selection
from pheanq.producer.service import TaskQueueService
from pheanq.python_call import PythonCall
from pheanq.storage.listings import TaskFilter
from pheanq.storage.tables import task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
NOON = dt.datetime(2026, 3, 1, 12, 0, 0)


def _set(service: TaskQueueService, task_id: int, **values: object) -> None:
    """Give a task values no command of the test can (a time in the past): straight in the table."""
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(**values))


def _fail(service: TaskQueueService, tube: str) -> int:
    package = claims(service).reserve_task(tube, timeout=0)
    assert package is not None
    assert claims(service).mark_failed(package, "it broke\n", 3)
    return package.task_id


def _selected(service: TaskQueueService, **conditions: object) -> set[int]:
    listing = list_selection(service.dispatch, TaskFilter(**conditions), None, 1000)  # type: ignore[arg-type]
    assert listing.next_after is None
    return {task.id for task in listing.tasks}


def test_each_filter_selects_exactly_its_tasks(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    first = service.queue_task(TaskDescription("work", [1, "alpha"]))
    failed = service.queue_task(TaskDescription("invoice", [2, "Beta Invoice"]), tube="billing")
    assert _fail(service, "billing") == failed
    keyed = service.queue_task(TaskDescription("invoice", [3]), tube="billing", unique_key="inv-7")
    python = service.queue_task(PythonCall("billing.send_invoice", [42]), tube="billing")
    batch = service.create_batch("nightly")
    in_batch = batch.add(TaskDescription("work", [5]))
    wildcards = service.queue_task(TaskDescription("work", ["100%_off"]), tube="other")
    _set(service, first, created=NOON - dt.timedelta(days=2))
    _set(service, failed, created=NOON - dt.timedelta(days=1), finished=NOON + dt.timedelta(hours=1))
    _set(service, keyed, status=Status.DONE.value, unique_live=None, finished=NOON + dt.timedelta(hours=2))
    everything = {first, failed, keyed, python, in_batch, wildcards}

    assert _selected(service) == everything
    assert _selected(service, statuses=(Status.FAILED,)) == {failed}
    assert _selected(service, statuses=(Status.FAILED, Status.DONE)) == {failed, keyed}
    assert _selected(service, statuses=(Status.NEW,)) == {first, python, in_batch, wildcards}
    assert _selected(service, tubes=("billing",)) == {failed, keyed, python}
    assert _selected(service, tubes=("billing", "other")) == {failed, keyed, python, wildcards}
    assert _selected(service, commands=("invoice",)) == {failed, keyed}
    assert _selected(service, commands=("billing.send_invoice",)) == {python}
    assert _selected(service, commands=("py:billing.send_invoice", "work")) == {python, first, in_batch, wildcards}
    assert _selected(service, batch_id=batch.id) == {in_batch}
    assert _selected(service, unique_key="inv-7") == {keyed}
    assert _selected(service, created_before=NOON - dt.timedelta(days=1)) == {first}
    assert _selected(service, created_after=NOON - dt.timedelta(days=1),
                     created_before=NOON) == {failed}  # `after` inclusive, `before` exclusive
    assert _selected(service, finished_after=NOON + dt.timedelta(minutes=90)) == {keyed}
    assert _selected(service, finished_before=NOON + dt.timedelta(minutes=90)) == {failed}
    assert _selected(service, match="beta invoice") == {failed}  # case ignored
    assert _selected(service, match="%_o") == {wildcards}
    assert _selected(service, match="1_0") == set()  # `_` and `%` are the text itself, not LIKE's wildcards
    assert _selected(service, tubes=("billing",), statuses=(Status.FAILED,), match="invoice") == {failed}
    assert _selected(service, tubes=("nowhere",)) == set()


def test_pages_list_every_task_once_newest_first_while_tasks_come_and_go(db_url: str,
                                                                           make_service: MakeService) -> None:
    service = make_service(db_url)
    ids = [service.queue_task(TaskDescription("work", [n]), tube="billing" if n % 3 else "other") for n in range(23)]
    where = TaskFilter(tubes=("billing",))
    expected = sorted((task_id for n, task_id in enumerate(ids) if n % 3), reverse=True)
    listed: list[int] = []
    after: int | None = None
    while True:
        page = list_selection(service.dispatch, where, after, 4)
        listed += [task.id for task in page.tasks]
        assert len(page.tasks) <= 4
        if page.next_after is None:
            break
        after = page.next_after
        # Queued between two pages: newer than every page, so not listed by the next ones.
        service.queue_task(TaskDescription("work", [99]), tube="billing")
    assert listed == expected
    assert all(task.tube == "billing" for task in list_selection(service.dispatch, where, None, 50).tasks)


def test_the_command_pages_through_a_listing_as_a_table_and_as_json(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    ids = [service.queue_task(TaskDescription("invoice", [n]), tube="billing") for n in range(5)]
    service.queue_task(TaskDescription("work", [0]))
    env = make_env(db_url)

    table = pheanq(["tasks", "--tube", "billing", "--limit", "2"], env, tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "status", "tube", "command", "attempts", "created", "finished"]
    assert [int(line.split()[0]) for line in lines[1:3]] == [ids[4], ids[3]]
    assert lines[1].split()[1:5] == ["new", "billing", "invoice", "0"]
    assert lines[3] == f"... more on the next page: pheanq tasks --tube billing --limit 2 --after {ids[3]}"
    follow = pheanq(shlex.split(lines[3].split(": ", 1)[1])[1:], env, tmp_path)
    assert [int(line.split()[0]) for line in follow.stdout.splitlines()[1:3]] == [ids[2], ids[1]]

    seen: list[int] = []
    after: list[str] = []
    while True:
        answer = pheanq(["tasks", "--tube", "billing", "--limit", "2", "--json", *after], env, tmp_path)
        listing = json.loads(answer.stdout)
        seen += [task["id"] for task in listing["tasks"]]
        if listing["next_after"] is None:
            break
        after = ["--after", str(listing["next_after"])]
    assert seen == ids[::-1]
    last = listing["tasks"][-1]
    assert last == {"id": ids[0], "status": "new", "tube": "billing", "command": "invoice", "attempts": 0,
                    "exit_code": None, "created": last["created"], "finished": None, "batch_id": None,
                    "unique_key": None}
    created = dt.datetime.fromisoformat(last["created"].rstrip("Z"))
    assert abs((created - utc_now()).total_seconds()) < 120

    empty = pheanq(["tasks", "--status", "failed"], env, tmp_path)
    assert (empty.returncode, empty.stdout) == (0, "no task selected\n")


def test_times_and_ages_select_by_utc(sqlite_url: str, tmp_path: Path, make_service: MakeService,
                                      make_env: MakeEnv) -> None:
    service = make_service(sqlite_url)
    old = service.queue_task(TaskDescription("work", [1]))
    recent = service.queue_task(TaskDescription("work", [2]))
    _set(service, old, created=NOON)
    env = make_env(sqlite_url)

    def ids(*args: str) -> list[int]:
        answer = pheanq(["tasks", "--json", *args], env, tmp_path)
        assert answer.returncode == 0, answer.stderr
        return [task["id"] for task in json.loads(answer.stdout)["tasks"]]

    assert ids("--created-after", "2h") == [recent]
    assert ids("--created-before", "120m") == [old]
    assert ids("--created-after", "2026-03-01", "--created-before", "2026-03-02") == [old]  # a date: its midnight
    assert ids("--created-after", "2026-03-01T12:00:00Z", "--created-before", "2026-03-01 12:00:01") == [old]
    # An offset is turned into UTC: 14:30 three hours east of Greenwich is 11:30 UTC, before NOON.
    assert ids("--created-after", "2026-03-01T14:30:00+03:00", "--created-before", "2026-03-02") == [old]
    assert ids("--created-after", "2026-03-01T15:30:00+03:00", "--created-before", "2026-03-02") == []


def test_what_a_task_controls_is_printed_escaped(sqlite_url: str, tmp_path: Path, make_service: MakeService,
                                                 make_env: MakeEnv) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("work", [1]))
    _set(service, task_id, command="work\x1b]0;owned\x07\r")
    env = make_env(sqlite_url)
    table = pheanq(["tasks"], env, tmp_path)
    assert "\x1b" not in table.stdout and "\r" not in table.stdout
    assert "work\\x1b]0;owned\\x07\\x0d" in table.stdout
    exact = pheanq(["tasks", "--json"], env, tmp_path)
    assert json.loads(exact.stdout)["tasks"][0]["command"] == "work\x1b]0;owned\x07\r"


BAD_INPUT = [
    (["--status", "failed,bogus"], "'bogus' is not a status"),
    (["--created-after", "yesterday"], "'--created-after'"),
    (["--finished-before", "2026-13-01"], "'--finished-before'"),
    (["--created-before", "999999999d"], "'--created-before'"),
    (["--limit", "0"], "'--limit'"),
    (["--limit", "1001"], "'--limit'"),
    (["--after", "0"], "'--after'"),
    (["--batch", "x"], "'--batch'"),
    (["--tube", "-bad"], "--tube: '-bad' is not a beanstalkd tube name"),
    (["--match", ""], "'--match'"),
    (["--unique-key", "k" * 192], "'--unique-key'"),
    (["--cancel", "--regenerate", "--yes"], "--cancel, --regenerate and --delete exclude each other"),
    (["--status", "failed", "--regenerate"], "--regenerate asks for confirmation on a terminal; stdin is not one: "
                                             "add --yes"),
    (["--cancel"], "--cancel asks for confirmation on a terminal"),
    (["--cancel", "--yes", "--limit", "5"], "--cancel acts on every selected task"),
    (["--cancel", "--yes", "--after", "5"], "--cancel acts on every selected task"),
    (["--yes"], "--yes goes with --cancel, --regenerate or --delete"),
    (["--regenerate", "--yes", "--by", "alice"], "--by goes with --cancel"),
    (["--cancel", "--yes", "--by", "a\nb"], "must be printable text"),
]


def test_bad_input_gets_one_line_naming_it_and_exit_code_2(sqlite_url: str, tmp_path: Path,
                                                             make_service: MakeService, make_env: MakeEnv) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("work", [1]))
    env = make_env(sqlite_url)
    with ThreadPoolExecutor(4) as pool:  # independent processes: at once
        answers = list(pool.map(lambda case: pheanq(["tasks", *case[0]], env, tmp_path), BAD_INPUT))
    for (args, named), answer in zip(BAD_INPUT, answers, strict=True):
        assert answer.returncode == 2, (args, answer.stdout, answer.stderr)
        assert named in one_error_line(answer), args
        assert answer.stdout == "", args
    assert service.status_of(task_id) is Status.NEW  # nothing was done
    with service.store.database.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(task_table)).scalar_one() == 1
