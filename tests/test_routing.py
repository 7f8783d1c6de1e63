"""Priorities and routing with real workers and a real beanstalkd: the most urgent task runs first, a task
type goes to its own tube unless queue_task names one, and one worker serves several tubes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import WorkerProcess, write_config

from pheanq import InvalidInput, Status, TaskDescription
from pheanq.producer.service import TaskQueueService

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


class SendMail(TaskDescription):
    command = "mail"
    tube = "mail"

    def __init__(self, to: str) -> None:
        super().__init__(arguments=[to])


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    """Commands `record` and `mail` append their argument to runs.txt."""
    runs = tmp_path / "runs.txt"
    command = [sys.executable, "-c", f"import sys; open({str(runs)!r}, 'a').write(sys.argv[1] + '\\n')"]
    write_config(tmp_path, commands={"record": command, "mail": command})
    return runs


def test_the_most_urgent_task_runs_first(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, recorder: Path,
) -> None:
    service = make_service(sqlite_url)
    for name, priority in (("later", 2000), ("first", 0), ("soon", 10), ("default", 1024)):
        service.queue_task(TaskDescription("record", [name]), priority=priority)
    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait(30) == 0, worker.log
    assert recorder.read_text().split() == ["first", "soon", "default", "later"]


def test_a_task_type_goes_to_its_own_tube_unless_queue_task_names_one_and_a_worker_serves_several(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker, recorder: Path,
) -> None:
    service = make_service(db_url)
    routed = service.queue_task(SendMail("ann@example.com"))
    named = service.queue_task(SendMail("bob@example.com"), tube="urgent-mail")
    plain = service.queue_task(TaskDescription("record", ["plain"]))
    assert [service.find_task(task_id).tube for task_id in (routed, named, plain)] == ["mail", "urgent-mail",
                                                                                         "pheanq"]
    only_mail = start_worker(["--stop-when-empty", "--use-tube", "mail"], make_env(db_url))
    assert only_mail.wait(30) == 0, only_mail.log
    assert [service.status_of(task_id) for task_id in (routed, named, plain)] == [Status.DONE, Status.NEW,
                                                                                   Status.NEW]
    both = start_worker(["--stop-when-empty", "--use-tube", "urgent-mail,pheanq"], make_env(db_url))
    assert both.wait(30) == 0, both.log
    assert all(service.status_of(task_id) is Status.DONE for task_id in (routed, named, plain))
    assert sorted(recorder.read_text().split()) == ["ann@example.com", "bob@example.com", "plain"]


def test_a_task_type_with_a_bad_tube_is_refused_when_queued(sqlite_url: str, make_service: MakeService) -> None:
    class Broken(TaskDescription):
        command = "record"
        tube = "-not a tube-"

    with pytest.raises(InvalidInput, match="is not a beanstalkd tube name"):
        make_service(sqlite_url).queue_task(Broken())
