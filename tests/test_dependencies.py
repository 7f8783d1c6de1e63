"""Dependencies and chains, on every database: a task that waits is stored `waiting` and put into its tube
only when every task it waits for is done; when one of them fails or is cancelled, the waiting tasks end
`upstream_failed` with a log line naming it; a chain of three runs in order across two real workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import WorkerProcess, claims, pheanq, register_work_script, wait_for

from pheanq import InvalidInput, NotFound, Retry, Status, TaskDescription
from pheanq.body import encode_data
from pheanq.dispatch import WorkPackage
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tasks import NewTask

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# The task's work: append "<name> start" and "<name> end" to runs.txt around a short pause, so overlapping
# runs would show as interleaved lines.
ORDERED = """
import sys, time
from pathlib import Path
runs, name = Path(sys.argv[1]), sys.argv[2]
with runs.open("a") as out:
    out.write(f"{name} start\\n")
time.sleep(0.3)  # the task's work
with runs.open("a") as out:
    out.write(f"{name} end\\n")
"""


def run_one(service: TaskQueueService, done: bool = True) -> WorkPackage:
    """Reserve the next task in this process and record it done (or failed), as a worker would."""
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    if done:
        claims(service).mark_done(package, "--- ran in the test\n")
    else:
        claims(service).mark_failed(package, "--- failed in the test\n", 1)
    return package


def done_parent_and_unsettled_child(service: TaskQueueService) -> tuple[int, int]:
    """A done task and a task waiting for it that has not counted it off: as when the child's row was written
    while the parent's end was, so that neither saw the other (the race the reconciler covers). The child is
    inserted without the settling that follows a normal queue_task."""
    parent = service.queue_task(TaskDescription("work", [1]))
    run_one(service)
    child = service.store.tasks.insert_task(NewTask("work", encode_data(TaskDescription("work", [2])), "pheanq",
                                                    1024, 60, after=(parent,))).task_id
    assert (service.status_of(parent), service.status_of(child)) == (Status.DONE, Status.WAITING)
    return parent, child


def job_state(service: TaskQueueService, task_id: int) -> str | None:
    row = service.find_task(task_id)
    info = None if row.job_id is None else service.beanstalkd.inspect(row.job_id)
    return None if info is None else info.state


def test_a_task_waits_without_a_job_until_all_it_waits_for_are_done(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    first = service.queue_task(TaskDescription("work", [1]))
    second = service.queue_task(TaskDescription("work", [2]))
    child = service.queue_task(TaskDescription("work", [3]), after=[first, second])
    row = service.find_task(child)
    assert (row.status, row.job_id, row.waiting_for) == (Status.WAITING, None, 2)
    assert run_one(service).task_id == first
    assert (service.status_of(child), service.find_task(child).waiting_for) == (Status.WAITING, 1)
    assert run_one(service).task_id == second
    assert service.status_of(child) is Status.NEW
    assert job_state(service, child) == "ready"
    assert run_one(service).task_id == child


def test_a_failed_parent_ends_every_waiting_dependant_upstream_failed_naming_it(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    parent = service.queue_task(TaskDescription("work", [1]))
    other = service.queue_task(TaskDescription("work", [2]))
    child = service.queue_task(TaskDescription("work", [3]), after=[parent, other])
    grandchild = service.queue_task(TaskDescription("work", [4]), after=[child])
    assert run_one(service, done=False).task_id == parent
    for task_id in (child, grandchild):
        row = service.find_task(task_id)
        assert (row.status, row.job_id) == (Status.UPSTREAM_FAILED, None)
        assert row.finished is not None and row.log is not None
    assert f"not run: task {parent}, which it waits for, ended failed" in (service.find_task(child).log or "")
    assert f"not run: task {child}, which it waits for, ended upstream_failed" in \
        (service.find_task(grandchild).log or "")
    assert service.status_of(other) is Status.NEW     # the other parent is not touched


def test_a_cancelled_parent_ends_its_dependants_upstream_failed(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    parent = service.queue_task(TaskDescription("work", [1]))
    child = service.queue_task(TaskDescription("work", [2]), after=[parent])
    assert service.cancel_task(parent, by="tester").cancelled
    row = service.find_task(child)
    assert row.status is Status.UPSTREAM_FAILED
    assert f"not run: task {parent}, which it waits for, was cancelled" in (row.log or "")


def test_waiting_for_tasks_that_already_ended_settles_at_once(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    done = service.queue_task(TaskDescription("work", [1]))
    run_one(service)
    assert service.status_of(done) is Status.DONE
    after_done = service.queue_task(TaskDescription("work", [2]), after=[done])
    assert service.status_of(after_done) is Status.NEW and job_state(service, after_done) == "ready"
    run_one(service)
    failed = service.queue_task(TaskDescription("work", [3]))
    run_one(service, done=False)
    after_failed = service.queue_task(TaskDescription("work", [4]), after=[done, failed])
    assert service.status_of(after_failed) is Status.UPSTREAM_FAILED


def test_waiting_for_a_task_that_does_not_exist_is_refused_before_anything_is_written(
    sqlite_url: str, make_service: MakeService,
) -> None:
    service = make_service(sqlite_url)
    with pytest.raises(NotFound, match="task\\(s\\) 404 to wait for do not exist"):
        service.queue_task(TaskDescription("work", [1]), after=[404])
    with pytest.raises(InvalidInput, match="a task id to wait for must be a whole number"):
        service.queue_task(TaskDescription("work", [1]), after=["1"])  # type: ignore[list-item]
    assert service.store.tasks.count_tasks() == []


def test_a_chain_reads_as_then_and_is_queued_in_order(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    chain = TaskDescription("work", ["a"]).then(TaskDescription("work", ["b"])).then(TaskDescription("work", ["c"]))
    assert repr(chain) == "work -> work -> work"
    a, b, c = service.queue_chain(chain, priority=10)
    assert [service.status_of(task_id) for task_id in (a, b, c)] == [Status.NEW, Status.WAITING, Status.WAITING]
    assert service.find_task(c).priority == 10
    assert [run_one(service).task_id for _ in range(3)] == [a, b, c]
    with pytest.raises(InvalidInput, match="queue_chain takes a chain"):
        service.queue_chain(TaskDescription("work"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="queue_chain takes no unique_key"):
        service.queue_chain(chain, unique_key="k")


def test_a_chain_of_three_runs_in_order_across_two_workers(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    runs = register_work_script(tmp_path, ORDERED)
    service = make_service(db_url)
    env = make_env(db_url)
    workers = [start_worker([], env), start_worker([], env)]
    for worker in workers:  # both wait for jobs before the chain comes (on a loaded machine, one starts late)
        worker.wait_line("READY", timeout=30)
    ids = service.queue_chain(TaskDescription("work", ["a"]).then(TaskDescription("work", ["b"]))
                              .then(TaskDescription("work", ["c"])))
    wait_for(lambda: service.status_of(ids[-1]) is Status.DONE, 30, "the chain to finish")
    assert runs.read_text().splitlines() == ["a start", "a end", "b start", "b end", "c start", "c end"]
    ran_on = {service.find_task(task_id).worker for task_id in ids}
    # The idle worker has waited longest, so beanstalkd hands it each next step: both workers took part.
    assert len(ran_on) == 2 and all(ran_on), ran_on
    for worker in workers:
        worker.stop()


def test_add_example_task_waits_after_the_given_tasks(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
) -> None:
    env = make_env(sqlite_url)
    first = pheanq(["add-example-task", "--wait", "0"], env, tmp_path)
    parent = int(first.stdout.split("id ")[1])
    second = pheanq(["add-example-task", "--wait", "0", "--after", str(parent)], env, tmp_path)
    assert second.returncode == 0, second.stderr
    child = int(second.stdout.split("id ")[1])
    assert make_service(sqlite_url).status_of(child) is Status.WAITING
    shown = pheanq(["show", str(child)], env, tmp_path)
    assert "waiting_for  1" in shown.stdout
    bad = pheanq(["add-example-task", "--after", "x"], env, tmp_path)
    assert bad.returncode == 2 and "'x' is not a task id" in bad.stderr


def test_a_parent_that_is_retrying_keeps_its_dependants_waiting_until_it_is_done(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    parent = service.queue_task(TaskDescription("work", [1]), retry=Retry(max_attempts=2, delay=0))
    child = service.queue_task(TaskDescription("work", [2]), after=[parent])
    assert run_one(service, done=False).task_id == parent
    assert (service.status_of(parent), service.status_of(child)) == (Status.RETRYING, Status.WAITING)
    assert run_one(service).task_id == parent
    assert service.status_of(child) is Status.NEW


def test_the_reconciler_releases_a_task_that_began_waiting_while_its_parent_ended(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    _, child = done_parent_and_unsettled_child(service)
    report = reconcile(service.dispatch, min_age=0)
    assert report.workflows == 1 and "settled 1 waiting task(s) and batch(es)" in report.summary()
    assert service.status_of(child) is Status.NEW and job_state(service, child) == "ready"


def test_a_chain_of_a_thousand_steps_whose_first_step_fails_ends_every_step_upstream_failed(
    sqlite_url: str, make_service: MakeService,
) -> None:
    service = make_service(sqlite_url)
    chain = TaskDescription("work", [0])
    for n in range(1, 1000):
        chain = chain.then(TaskDescription("work", [n]))  # type: ignore[assignment]
    ids = service.queue_chain(chain)  # type: ignore[arg-type]
    assert run_one(service, done=False).task_id == ids[0]
    counts = {status: n for _, status, n in service.store.tasks.count_tasks()}
    assert counts == {Status.FAILED: 1, Status.UPSTREAM_FAILED: 999}


def test_task_cleanup_keeps_a_done_parent_until_its_dependant_has_counted_it_off(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    parent, child = done_parent_and_unsettled_child(service)
    assert service.clean_up_tasks(0) == 0
    assert service.status_of(parent) is Status.DONE
    reconcile(service.dispatch, min_age=0)
    assert service.status_of(child) is Status.NEW
    assert service.clean_up_tasks(0) == 1
    assert service.status_of(parent) is None
