"""Batches, on every database: planned in chunks over time, counted by status, finished when all their
tasks have ended, with `then`, `catch` and `finally` callbacks queued as tasks of their own; cancelled as a
whole; and a batch of 10,000 tasks planned lazily and reported while real workers run it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATABASES
from support import WorkerProcess, claims, pheanq, wait_for, write_config

from pheanq import Batch, InvalidInput, NotFound, Status, TaskDescription, WrongStatus
from pheanq.limits import PAGE_SIZE
from pheanq.producer.batch import BatchProgress
from pheanq.producer.service import TaskQueueService
from pheanq.storage.workflows import Ends

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def run_all(service: TaskQueueService, fail: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Run every ready task in this process as a worker would; those whose first argument is in `fail` fail.
    Returns the first arguments in the order run."""
    ran = []
    while (package := claims(service).reserve_task("pheanq", timeout=1)) is not None:
        name = str(package.description.arguments[0]) if package.description.arguments else ""
        ran.append(name)
        if name in fail:
            claims(service).mark_failed(package, None, 1)
        else:
            claims(service).mark_done(package, None)
    return ran


def with_callbacks(service: TaskQueueService, name: str | None = None) -> Batch:
    return service.create_batch(name, then=TaskDescription("work", ["then"]), catch=TaskDescription("work", ["catch"]),
                                finally_=TaskDescription("work", ["finally"]))


def test_a_batch_whose_tasks_are_all_done_runs_then_and_finally_not_catch(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    with with_callbacks(service, "import") as batch:
        first = batch.add(TaskDescription("work", ["t0"]))
        assert batch.add_many(TaskDescription("work", [f"t{n}"]) for n in range(1, 5)) == 4
        assert batch.progress().state == "open"
    progress = batch.progress()
    assert (progress.state, progress.total, progress.pending, progress.done) == ("running", 5, 5, 0)
    assert service.find_task(first).batch_id == batch.id
    ran = run_all(service)
    assert sorted(ran[:5]) == [f"t{n}" for n in range(5)]
    assert sorted(ran[5:]) == ["finally", "then"]
    progress = batch.progress()
    assert (progress.state, progress.total, progress.done, progress.failed, progress.pending) == \
        ("finished", 5, 5, 0, 0)
    assert progress.callbacks["catch"] is None
    then_id = progress.callbacks["then"]
    assert then_id is not None
    then_row = service.find_task(then_id)
    assert (then_row.status, then_row.callback_of, then_row.batch_id) == (Status.DONE, batch.id, None)
    assert f"queued as the 'then' callback of batch {batch.id}" in (then_row.log or "")


def test_the_first_failure_runs_catch_and_the_end_runs_finally_but_not_then(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    batch = with_callbacks(service)
    batch.add_many(TaskDescription("work", [f"t{n}"]) for n in range(4))
    batch.close()
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    claims(service).mark_failed(package, None, 1)
    progress = batch.progress()
    assert (progress.state, progress.failed, progress.pending) == ("running", 1, 3)
    assert progress.callbacks["catch"] is not None and progress.callbacks["finally"] is None
    ran = run_all(service)
    assert "catch" in ran and "finally" in ran and "then" not in ran
    progress = batch.progress()
    assert (progress.state, progress.done, progress.failed) == ("finished", 3, 1)
    assert progress.callbacks["then"] is None


def test_a_batch_is_planned_in_chunks_over_time_until_it_is_closed(db_url: str, make_service: MakeService) -> None:
    planner = make_service(db_url)
    batch = planner.create_batch("nightly")
    batch.add_many(TaskDescription("work", [f"a{n}"]) for n in range(3))
    assert run_all(planner) == ["a0", "a1", "a2"]
    assert batch.progress().state == "open"      # all its tasks are done, but more may come
    later = make_service(db_url).batch(batch.id)  # another process plans the next chunk
    later.add(TaskDescription("work", ["b0"]))
    later.close()
    with pytest.raises(WrongStatus, match=f"batch {batch.id} is closed"):
        later.add(TaskDescription("work", ["b1"]))
    assert run_all(planner) == ["b0"]
    progress = batch.progress()
    assert (progress.state, progress.total, progress.done) == ("finished", 4, 4)
    with pytest.raises(NotFound, match="batch 999999 does not exist"):
        planner.batch(999999)
    with pytest.raises(NotFound, match="batch 999999 does not exist"):
        planner.queue_task(TaskDescription("work"), batch=999999)


def test_cancelling_a_batch_cancels_what_has_not_ended_and_runs_finally(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    batch = with_callbacks(service)
    batch.add_many(TaskDescription("work", [f"t{n}"]) for n in range(6))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    claims(service).mark_done(package, None)
    assert batch.cancel(by="ops") == 5
    progress = batch.progress()
    assert (progress.state, progress.done, progress.cancelled, progress.pending) == ("finished", 1, 5, 0)
    assert progress.cancelled_by == "ops"
    assert run_all(service) == ["finally"]       # the cancelled tasks' jobs left the tube
    assert progress.callbacks["then"] is None and progress.callbacks["catch"] is None


def test_pheanq_batch_show_cancel_and_close(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
) -> None:
    env = make_env(sqlite_url)
    service = make_service(sqlite_url)
    batch = service.create_batch("reports", finally_=TaskDescription("work", ["finally"]))
    queued = pheanq(["add-example-task", "--total-tasks", "3", "--batch", str(batch.id)], env, tmp_path)
    assert queued.returncode == 0, queued.stderr
    shown = pheanq(["batch", "show", str(batch.id)], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == \
        f"batch {batch.id} (reports): open, 0.0% ended: 0 done, 0 failed, 0 cancelled, 3 pending of 3"
    assert "  finally task not queued" in shown.stdout
    closed = pheanq(["batch", "close", str(batch.id)], env, tmp_path)
    assert closed.returncode == 0 and "running" in closed.stdout
    cancelled = pheanq(["batch", "cancel", str(batch.id), "--by", "ops"], env, tmp_path)
    assert cancelled.stdout.strip() == f"batch {batch.id}: closed; 3 task(s) cancelled"
    as_json = pheanq(["batch", "show", str(batch.id), "--json"], env, tmp_path)
    assert '"state": "finished"' in as_json.stdout and '"cancelled": 3' in as_json.stdout
    missing = pheanq(["batch", "show", "424242"], env, tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip() == "pheanq: error: batch 424242 does not exist"
    joined = pheanq(["add-example-task", "--batch", str(batch.id)], env, tmp_path)
    assert joined.returncode == 1 and f"batch {batch.id} is closed" in joined.stderr


def test_a_batch_of_10000_tasks_is_planned_lazily_and_reported_while_workers_run_it(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    write_config(tmp_path, commands={"work": ["/bin/true"]})
    service = make_service(db_url)
    batch = service.create_batch("big", finally_=TaskDescription("work", ["finally"]))
    taken = itertools.count()

    def descriptions() -> Iterator[TaskDescription]:
        for n in range(10_000):
            if n == PAGE_SIZE * 2:
                # Planned in chunks: the first ones are queued before the rest is even made.
                assert batch.progress().total == PAGE_SIZE * 2
            next(taken)
            yield TaskDescription("work", [n])

    assert batch.add_many(descriptions()) == 10_000
    assert next(taken) == 10_000
    batch.close()
    env = make_env(db_url)
    workers = [start_worker([], env), start_worker([], env)]
    seen: list[BatchProgress] = []

    def progressed() -> bool:
        seen.append(batch.progress())
        return seen[-1].done >= 200

    wait_for(progressed, 60, "workers to run some of the batch")
    running = seen[-1]
    assert running.state == "running" and running.total == 10_000
    assert running.done + running.failed + running.cancelled + running.pending == 10_000
    assert 0 < running.pending < 10_000
    assert [p.done for p in seen] == sorted(p.done for p in seen)   # progress only goes forward
    # Tasks running at the cancel are asked to stop and end cancelled, or done when their command completes first.
    done_before = batch.progress().done
    asked = batch.cancel()
    assert 10_000 - batch.progress().done <= asked <= 10_000 - done_before
    wait_for(lambda: batch.progress().callbacks["finally"] is not None, 20, "the batch to finish")
    finally_id = batch.progress().callbacks["finally"]
    assert finally_id is not None
    wait_for(lambda: service.status_of(finally_id) is Status.DONE, 30, "the finally callback to run")
    final = batch.progress()
    assert (final.state, final.done + final.cancelled, final.pending) == ("finished", 10_000, 0)
    for worker in workers:
        worker.stop()


def test_regenerating_a_failed_task_counts_it_pending_again_until_its_batch_has_finished(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    with service.create_batch() as batch:
        failing = batch.add(TaskDescription("work", ["bad"]))
        batch.add(TaskDescription("work", ["good"]))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None and package.task_id == failing
    claims(service).mark_failed(package, None, 1)
    assert batch.progress().failed == 1
    service.regenerate_task(failing)                # the batch is still running: it counts as pending again
    assert (batch.progress().failed, batch.progress().pending) == (0, 2)
    assert sorted(run_all(service, fail={"bad"})) == ["bad", "good"]
    assert batch.progress().state == "finished"
    with pytest.raises(WrongStatus, match=f"task {failing} belongs to batch {batch.id}, which has finished"):
        service.regenerate_task(failing)
    assert service.status_of(failing) is Status.FAILED


def test_a_batch_whose_catch_ran_never_runs_then_even_when_a_regenerate_makes_every_task_done(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    with with_callbacks(service) as batch:
        failing = batch.add(TaskDescription("work", ["bad"]))
        batch.add(TaskDescription("work", ["good"]))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None and package.task_id == failing
    claims(service).mark_failed(package, None, 1)
    assert batch.progress().callbacks["catch"] is not None
    service.regenerate_task(failing)                 # the batch still runs: allowed, and the work gets done
    assert f"batch {batch.id} already ran its 'catch' callback, so it will not run 'then'" in \
        (service.find_task(failing).log or "")
    assert sorted(run_all(service)) == ["bad", "catch", "finally", "good"]
    progress = batch.progress()
    assert (progress.state, progress.done, progress.failed) == ("finished", 2, 0)
    assert progress.callbacks["then"] is None        # `catch` ran: the batch failed, and gets no `then`
    assert progress.callbacks["finally"] is not None


def test_a_batch_without_catch_runs_then_once_a_regenerate_makes_every_task_done(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    with service.create_batch(then=TaskDescription("work", ["then"])) as batch:
        failing = batch.add(TaskDescription("work", ["bad"]))
        batch.add(TaskDescription("work", ["good"]))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None and package.task_id == failing
    claims(service).mark_failed(package, None, 1)
    service.regenerate_task(failing)
    assert sorted(run_all(service)) == ["bad", "good", "then"]
    assert batch.progress().callbacks["then"] is not None


def test_task_cleanup_during_a_batch_keeps_its_tasks_and_then_still_runs(
    db_url: str, make_service: MakeService,
) -> None:
    service = make_service(db_url)
    with with_callbacks(service) as batch:
        batch.add_many(TaskDescription("work", [f"t{n}"]) for n in range(3))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None
    claims(service).mark_done(package, None)
    assert service.clean_up_tasks(0) == 0          # the batch still runs: its done task is kept
    assert sorted(run_all(service)) == ["finally", "t1", "t2", "then"]
    progress = batch.progress()
    assert (progress.state, progress.total, progress.done) == ("finished", 3, 3)
    assert progress.callbacks["then"] is not None
    assert service.clean_up_tasks(0) >= 3          # finished: its rows may go, its counts stay
    assert (batch.progress().total, batch.progress().done) == (3, 3)


# SQLite has one writer at a time: there, the second end waits for the first, and they cannot interleave.
@pytest.mark.parametrize("db_url", [name for name in DATABASES if name != "sqlite"], indirect=True)
def test_the_last_two_tasks_of_a_batch_ending_together_queue_then_once(
    db_url: str, make_service: MakeService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers end the batch's last two tasks at once: the first end waits, just before it counts the batch
    down, until the second has committed (on MariaDB its snapshot is then older than the second end)."""
    first, second = make_service(db_url), make_service(db_url)
    with with_callbacks(first) as batch:
        batch.add_many(TaskDescription("work", [f"t{n}"]) for n in range(2))
    packages = [claims(first).reserve_task("pheanq", timeout=5), claims(second).reserve_task("pheanq", timeout=5)]
    assert None not in packages
    first_waits, second_done = threading.Event(), threading.Event()
    close = Ends.close

    def close_in_turn(self: Ends, conn: Any) -> Any:
        if threading.current_thread().name == "first":
            first_waits.set()
            assert second_done.wait(30)
        return close(self, conn)

    monkeypatch.setattr(Ends, "close", close_in_turn)

    def end_second() -> None:
        assert first_waits.wait(30)
        claims(second).mark_done(packages[1], None)  # type: ignore[arg-type]
        second_done.set()

    threads = [threading.Thread(target=lambda: claims(first).mark_done(packages[0], None), name="first"),  # type: ignore[arg-type]
               threading.Thread(target=end_second, name="second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    progress = batch.progress()
    assert (progress.state, progress.done) == ("finished", 2)
    assert progress.callbacks["then"] is not None and progress.callbacks["finally"] is not None


def test_a_batch_s_add_and_add_many_take_no_batch_of_their_own(sqlite_url: str, make_service: MakeService) -> None:
    service = make_service(sqlite_url)
    batch = service.create_batch("b")
    with pytest.raises(InvalidInput, match="take no batch="):
        batch.add(TaskDescription("work", ["1"]), batch=batch.id + 1)
    with pytest.raises(InvalidInput, match="take no batch="):
        batch.add_many([TaskDescription("work", ["1"])], batch=batch.id)
    assert batch.progress().total == 0
