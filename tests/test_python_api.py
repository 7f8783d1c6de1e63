"""`@task`, as application code uses it: names, arguments checked against the signature and as JSON values at
queue time, the task's own options and a call's, the row and job a queued call makes (real beanstalkd and
every database), inline calls, `current_task()` outside a worker, results read back, and the `[python]`
settings. What a worker does with the tasks is in test_python_worker.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytasks
import pytest
from support import Beanstalkd, job_state

from pheanq import InvalidInput, PythonCall, Retry, Status, current_task, task
from pheanq.beanstalkd import BeanstalkdConnection
from pheanq.body import decode_body, decode_data, encode_body
from pheanq.config import load_settings
from pheanq.errors import ConfigError, NotFound, WrongStatus
from pheanq.producer.service import TaskQueueService
from pheanq.retry import after_failure
from pheanq.storage import Store

MakeService = Callable[..., TaskQueueService]


def test_a_task_is_named_by_its_module_and_qualified_name_unless_it_is_given_a_name() -> None:
    assert pytasks.add.name == "pytasks.add"
    assert pytasks.echo.name == "pytasks.renamed-echo"
    assert pytasks.add.__name__ == "add" and pytasks.add.__wrapped__ is pytasks.add.function


def test_a_plain_call_runs_the_function_here_and_now() -> None:
    assert pytasks.add(2, 3) == 5
    assert pytasks.echo(1, k="v")["kwargs"] == {"k": "v"}
    assert current_task().task_id is None  # outside a worker: no task


def test_progress_outside_a_worker_is_kept_in_the_context_only_and_bad_values_are_refused() -> None:
    context = current_task()
    context.progress(3, 10, "x" * 1000)
    assert (context.done, context.total) == (3, 10) and context.message is not None and len(context.message) == 200
    for done, total in ((-1, None), (1, -1), (True, None)):
        with pytest.raises(InvalidInput, match="progress"):
            context.progress(done, total)


@pytest.mark.parametrize("name", ["", "has space", "a..b", "1abc", "x" * 201, "ends.", "py:x y"])
def test_a_task_name_that_is_not_dotted_words_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="not a valid Python task name"):
        task(name=name)(lambda: None)


def test_a_task_a_worker_could_not_import_by_its_module_path_needs_an_explicit_name() -> None:
    def inner() -> None: ...

    with pytest.raises(InvalidInput, match=r"inside a function.*name="):
        task(inner)
    inner.__module__ = "__main__"
    inner.__qualname__ = "inner"
    with pytest.raises(InvalidInput, match="in __main__"):
        task(inner)
    assert task(name="tests.inner-explicit")(inner).name == "tests.inner-explicit"


def test_two_functions_under_one_name_are_refused_but_the_same_function_again_is_not() -> None:
    def first() -> int:
        return 1

    task(name="tests.twice")(first)
    task(name="tests.twice")(first)  # a module imported again (a reload) registers the same function
    with pytest.raises(InvalidInput, match=r"two Python tasks are named 'tests\.twice'"):
        task(name="tests.twice")(lambda: 2)


def test_arguments_that_do_not_bind_to_the_signature_are_refused_naming_the_task() -> None:
    with pytest.raises(InvalidInput, match=r"task pytasks\.add: missing a required argument: 'a'"):
        pytasks.add.describe()  # type: ignore[call-arg]
    with pytest.raises(InvalidInput, match=r"task pytasks\.add: got an unexpected keyword argument 'c'"):
        pytasks.add.describe(1, c=2)  # type: ignore[call-arg]
    with pytest.raises(InvalidInput, match="too many positional arguments"):
        pytasks.add.describe(1, 2, 3)  # type: ignore[call-arg]


@pytest.mark.parametrize(("value", "named"), [
    ({1, 2}, "argument 0 is set"),
    (b"bytes", "argument 0 is bytes"),
    (object(), "argument 0 is object"),
    (math.nan, "argument 0 is nan"),
    ({1: "int key"}, "argument 0 has the key 1"),
    ([1, [2, {"deep": Path("/")}]], r"argument 0\[1\]\[1\]\['deep'\] is PosixPath"),
    ("nul\x00", "NUL"),
    pytest.param(10**5000, "more than 4300 digits", id="huge-int"),
])
def test_an_argument_that_is_not_a_json_value_is_refused_naming_it(value: Any, named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        pytasks.echo.describe(value)


def test_a_keyword_argument_that_is_not_json_is_refused_by_its_name() -> None:
    with pytest.raises(InvalidInput, match="argument 'when' is datetime"):
        import datetime as dt
        pytasks.echo.describe(when=dt.datetime.now())


def test_arguments_nested_too_deep_are_refused() -> None:
    value: Any = []
    for _ in range(200):
        value = [value]
    with pytest.raises(InvalidInput, match="nests more than 100 levels"):
        pytasks.echo.describe(value)


def test_a_call_travels_as_json_in_the_row_and_the_job_body_and_reads_back_equal() -> None:
    call = pytasks.echo.describe(1, "ü", [None, True, 2.5], k={"x": [1]})
    again = decode_body(encode_body(7, call, "s" * 16, "ab"), "s" * 16).description
    assert isinstance(again, PythonCall) and again == call
    assert again.args == [1, "ü", [None, True, 2.5]]
    assert again.kwargs == {"k": {"x": [1]}} and again.command == "py:pytasks.renamed-echo"
    assert decode_data(json.dumps(call.to_data())) == call


def test_the_task_s_own_options_are_its_defaults_and_a_call_s_options_win(
    db_url: str, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    first = pytasks.routed.options(service=service).queue(3)
    second = pytasks.routed.options(service=service, tube="other", timeout=5, priority=7).queue(4)
    row, other = service.find_task(first), service.find_task(second)
    assert (row.tube, row.timeout, row.command, row.status) == ("pytube", 30, "py:pytasks.routed", Status.NEW)
    assert json.loads(row.data) == {"command": "py:pytasks.routed", "args": [3], "kwargs": {}, "type": "pheanq.python"}
    assert Retry.from_json(row.retry).max_attempts == 3 and Retry.from_json(other.retry).max_attempts == 3
    assert (other.tube, other.timeout, other.priority) == ("other", 5, 7)
    connection = BeanstalkdConnection(beanstalkd.address)
    try:
        assert row.job_id is not None and job_state(beanstalkd, row.job_id) == "ready"
        assert connection.tube_stats("pytube") is not None
    finally:
        connection.close()


def test_a_call_queues_everywhere_a_description_does(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    first = service.queue_task(pytasks.add.describe(1, 2), unique_key="add-1-2")
    assert service.queue_task(pytasks.add.describe(1, 2), unique_key="add-1-2") == first
    chain = service.queue_chain(pytasks.add.describe(1).then(pytasks.add.describe(2)), after=[first])
    assert [service.status_of(task_id) for task_id in chain] == [Status.WAITING, Status.WAITING]
    with service.create_batch("python", then=pytasks.add.describe(0)) as batch:
        batch.add_many(pytasks.add.describe(n) for n in range(3))
    assert service.batch(batch.id).progress().total == 3
    many = service.queue_many([pytasks.pid.describe(), pytasks.pid.describe()])
    assert all(service.find_task(task_id).command == "py:pytasks.pid" for task_id in many)


def test_options_are_checked_when_given_and_per_run_options_are_refused_on_the_decorator(
    sqlite_url: str, make_service: MakeService,
) -> None:
    with pytest.raises(InvalidInput, match="unknown option 'priorty'"):
        pytasks.add.options(priorty=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidInput, match="priority must be a whole number"):
        pytasks.add.options(priority=-1)
    with pytest.raises(InvalidInput, match="@task takes no unique_key="):
        task(name="tests.keyed", unique_key="k")(lambda: None)


def test_a_retry_policy_names_exception_classes_and_only_those_and_their_subclasses_end_the_task() -> None:
    policy = Retry(max_attempts=3, non_retryable_errors={pytasks.Permanent, "myapp.errors.Gone"}).to_json()
    assert policy is not None and Retry.from_json(policy).error_names == {"pytasks.Permanent", "myapp.errors.Gone"}
    assert after_failure(policy, 1, 1, errors=["pytasks.Permanent", "builtins.Exception"]).wait is None
    assert after_failure(policy, 1, 1, errors=["builtins.ValueError", "builtins.Exception"]).wait is not None
    assert "pytasks.Permanent is not retried" in after_failure(policy, 1, 1, errors=["pytasks.Permanent"]).note
    for bad in ({42}, {"no_dots"}, "pytasks.Permanent"):
        with pytest.raises(InvalidInput, match="non_retryable_errors"):
            Retry(non_retryable_errors=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="more than 450 characters"):
        Retry(non_retryable_errors={f"myapp.errors.E{n:040d}" for n in range(20)})


def test_a_result_is_read_once_the_task_is_done_and_not_before(sqlite_url: str, make_service: MakeService) -> None:
    service = make_service(sqlite_url)
    task_id = pytasks.add.options(service=service).queue(1, 2)
    with pytest.raises(WrongStatus, match=f"task {task_id} is new: it has no result"):
        service.result(task_id)
    with pytest.raises(WrongStatus, match="is new"):
        service.result(task_id, wait=0.2)
    with pytest.raises(NotFound):
        service.result(task_id + 100)
    store = Store(sqlite_url)
    try:
        claim = store.claims.claim_task(task_id, service.find_task(task_id).nonce, 1, "w:1", ["pheanq"],
                                        ["py:pytasks.add"])
        assert claim.row is not None
        store.tasks.finish_task(task_id, claim.row.attempts, Status.DONE, 0, None, json.dumps({"sum": 3}))
    finally:
        store.close()
    assert service.result(task_id) == {"sum": 3}


def test_the_python_settings_come_from_the_toml_table_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "pheanq.toml"
    config.write_text('[python]\nimports = ["myapp.tasks", "other"]\nmax_tasks_per_child = 5\nmax_child_memory = 300\n')
    config.chmod(0o600)
    settings = load_settings({"config_file": str(config)}, environ={})
    assert (settings.python_imports, settings.max_tasks_per_child, settings.max_child_memory) == \
        (("myapp.tasks", "other"), 5, 300)
    from_env = load_settings(environ={"PHEANQ_PYTHON_IMPORTS": "a.b, c", "PHEANQ_MAX_TASKS_PER_CHILD": "1"})
    assert from_env.python_imports == ("a.b", "c") and from_env.max_tasks_per_child == 1


@pytest.mark.parametrize(("toml", "message"), [
    ('[python]\nimports = ["not a module"]\n', "python_imports: 'not a module' is not an importable module name"),
    ('[python]\nimport = ["x"]\n', "python: unknown setting 'import'"),
    ('[python]\nmax_tasks_per_child = 0\n', "max_tasks_per_child: 0 is not a positive whole number"),
    ('python = 3\n', r"python: expected a table"),
    ('[commands]\n"py:x" = ["/bin/true"]\n', "would read as a Python task"),
])
def test_bad_python_settings_are_refused_naming_the_setting(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "pheanq.toml"
    config.write_text(toml)
    config.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        load_settings({"config_file": str(config)}, environ={})


def test_the_raised_state_line_names_a_class_and_nothing_else() -> None:
    from pheanq.worker.protocol import Line, StateLine, parse

    assert parse("RAISED pytasks.Permanent") == StateLine(Line.RAISED, name="pytasks.Permanent")
    assert str(StateLine(Line.RAISED, name="builtins.ValueError")) == "RAISED builtins.ValueError"
    for junk in ("RAISED", "RAISED Permanent", "RAISED a.b c", "RAISED a..b", "RAISED " + "a." * 300 + "b"):
        assert parse(junk) is None, junk
    assert parse("EXITED 1") == StateLine(Line.EXITED, 1)
