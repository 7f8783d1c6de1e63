"""TaskQueueService against a real beanstalkd and every database: queueing records the row before the job and
loses nothing when beanstalkd is gone, a claim is a compare-and-set that exactly one duplicate delivery wins,
leftover and foreign jobs never run, regeneration only revives failed tasks, and cleanup only removes old done
ones."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import greenstalk
import pytest
import sqlalchemy as sa
from support import Beanstalkd, claims, settings_for

from pheanq import Status, TaskDescription
from pheanq.beanstalkd import BeanstalkdConnection
from pheanq.body import decode_body, decode_data, encode_body
from pheanq.errors import ConfigError, InvalidInput, NotFound, TaskNotSent, TaskPendingWarning, WrongStatus
from pheanq.limits import MAX_PRIORITY
from pheanq.producer.options import DEFAULT_PRIORITY, DEFAULT_TTR
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.storage.claims import ClaimOutcome
from pheanq.storage.tables import task_table

DESCRIPTION = TaskDescription("invoice", [42, "a b"], {"send": True, "to": "ü"})


@contextmanager
def beanstalk_client(server: Beanstalkd, tube: str = "default") -> Iterator[greenstalk.Client[bytes]]:
    """A plain connection to the test's beanstalkd, to look at jobs the way an operator would."""
    with greenstalk.Client(server.address, encoding=None, use=tube, watch=tube) as client:
        yield client


def job_state(client: greenstalk.Client[bytes], job_id: int) -> str | None:
    """beanstalkd's state of the job (ready, reserved, delayed, buried), or None when it no longer exists."""
    try:
        return str(client.stats_job(job_id)["state"])
    except greenstalk.NotFoundError:
        return None


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def test_queue_task_records_a_new_row_and_puts_a_job_pointing_at_it(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    before = utc_now() - dt.timedelta(seconds=5)
    task_id = service.queue_task(DESCRIPTION, tube="billing", priority=5, ttr=30)

    row = service.find_task(task_id)
    assert (row.id, row.command, row.tube, row.status, row.priority, row.ttr) == (
        task_id, "invoice", "billing", Status.NEW, 5, 30)
    assert (row.attempts, row.exit_code, row.log, row.worker, row.started, row.finished) == (
        0, None, None, None, None, None)
    assert before <= row.created <= utc_now() + dt.timedelta(seconds=5)
    assert row.modified == row.created
    assert decode_data(row.data) == DESCRIPTION
    assert row.job_id is not None

    with beanstalk_client(beanstalkd) as client:
        stats = client.stats_job(row.job_id)
        assert (stats["tube"], stats["state"], stats["pri"], stats["ttr"]) == ("billing", "ready", 5, 30)
        body = decode_body(client.peek(row.job_id).body)
    assert body.task_id == task_id
    assert body.description == DESCRIPTION


def test_queue_task_uses_the_default_tube_priority_and_ttr_and_honours_a_delay(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url, default_tube="configured")
    plain = service.find_task(service.queue_task(DESCRIPTION))
    delayed = service.find_task(service.queue_task(DESCRIPTION, delay=60))
    assert (plain.tube, plain.priority, plain.ttr) == ("configured", DEFAULT_PRIORITY, DEFAULT_TTR)
    assert plain.id != delayed.id and plain.job_id != delayed.job_id
    assert plain.job_id is not None and delayed.job_id is not None
    with beanstalk_client(beanstalkd) as client:
        assert job_state(client, plain.job_id) == "ready"
        assert job_state(client, delayed.job_id) == "delayed"
        assert client.stats_job(plain.job_id)["tube"] == "configured"


def test_queue_task_refuses_bad_values_before_writing_anything(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"priority": -1}, InvalidInput, "priority"), ({"priority": MAX_PRIORITY + 1}, InvalidInput, "priority"),
        ({"priority": True}, InvalidInput, "priority"), ({"priority": 1.5}, InvalidInput, "priority"),
        ({"priority": "1"}, InvalidInput, "priority"),
        ({"delay": -1}, InvalidInput, "delay"), ({"delay": MAX_PRIORITY + 1}, InvalidInput, "delay"),
        ({"delay": 0.5}, InvalidInput, "delay"),
        ({"ttr": 0}, InvalidInput, "ttr"), ({"ttr": -5}, InvalidInput, "ttr"), ({"ttr": None}, InvalidInput, "ttr"),
        ({"tube": "two words"}, ConfigError, "tube"), ({"tube": "-x"}, ConfigError, "tube"),
    ]
    for kwargs, error, named in bad:
        with pytest.raises(error, match=named):
            service.queue_task(DESCRIPTION, **kwargs)
    with pytest.raises(InvalidInput, match="TaskDescription"):
        service.queue_task("invoice")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="at most 65535"):
        service.queue_task(TaskDescription("big", ["x" * 70000]))
    assert service.store.tasks.count_tasks() == []
    with beanstalk_client(beanstalkd) as client:
        assert client.stats()["total-jobs"] == 0

    # The limits themselves are accepted.
    low = service.queue_task(DESCRIPTION, priority=0, delay=0, ttr=1)
    high = service.queue_task(DESCRIPTION, priority=MAX_PRIORITY)
    assert service.find_task(low).ttr == 1
    assert service.find_task(high).priority == MAX_PRIORITY


def test_two_services_given_duplicate_jobs_of_one_task_exactly_one_claims_it(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    first, second = make_service(db_url), make_service(db_url)
    second.dispatch.worker_name = "second-worker"
    task_id = first.queue_task(DESCRIPTION, tube="race")
    with beanstalk_client(beanstalkd, "race") as client:
        duplicate = client.put(encode_body(task_id, DESCRIPTION, nonce=first.find_task(task_id).nonce))
    original = first.find_task(task_id).job_id
    barrier = threading.Barrier(2)

    def claim(service: TaskQueueService) -> Any:
        barrier.wait(5)
        return claims(service).reserve_task("race", timeout=1)

    with ThreadPoolExecutor(2) as pool:
        packages = list(pool.map(claim, [first, second]))
    winners = [package for package in packages if package is not None]
    assert len(winners) == 1, packages
    won = winners[0]
    assert won.task_id == task_id and won.job_id in (original, duplicate)

    row = first.find_task(task_id)
    assert (row.status, row.attempts, row.job_id) == (Status.WORKING, 1, won.job_id)
    assert row.worker == (first.dispatch.worker_name if packages[0] is not None else "second-worker")
    with beanstalk_client(beanstalkd, "race") as client:
        lost = duplicate if won.job_id == original else original
        assert lost is not None
        assert job_state(client, lost) is None  # deleted unrun by the loser
        assert job_state(client, won.job_id) == "reserved"


def test_concurrent_claims_of_one_row_under_different_jobs_have_one_winner(
    db_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    task_id = make_service(db_url).queue_task(DESCRIPTION)
    nonce = make_service(db_url).find_task(task_id).nonce
    stores = [Store(db_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def claim(index: int) -> ClaimOutcome:
        barrier.wait(5)
        return stores[index].claims.claim_task(task_id, nonce, 10_000 + index, f"worker-{index}", ["pheanq"],
                                              [DESCRIPTION.command]).outcome

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            outcomes = list(pool.map(claim, range(len(stores))))
    finally:
        for store in stores:
            store.close()
    assert outcomes.count(ClaimOutcome.CLAIMED) == 1, outcomes
    assert outcomes.count(ClaimOutcome.HELD_ELSEWHERE) == len(stores) - 1, outcomes
    row = make_service(db_url).find_task(task_id)
    winner = outcomes.index(ClaimOutcome.CLAIMED)
    assert (row.status, row.attempts, row.job_id, row.worker) == (
        Status.WORKING, 1, 10_000 + winner, f"worker-{winner}")


def test_a_job_for_a_done_or_failed_task_is_deleted_and_never_returned(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    done_id = service.queue_task(DESCRIPTION, tube="t")
    failed_id = service.queue_task(DESCRIPTION, tube="t")
    for expected, mark in ((done_id, claims(service).mark_done), (failed_id, claims(service).mark_failed)):
        package = claims(service).reserve_task("t", timeout=0)
        assert package is not None and package.task_id == expected
        assert mark(package, "ran\n")
    assert service.status_of(done_id) is Status.DONE
    assert service.status_of(failed_id) is Status.FAILED

    with beanstalk_client(beanstalkd, "t") as client:
        leftovers = [client.put(encode_body(task_id, DESCRIPTION, nonce=service.find_task(task_id).nonce))
                     for task_id in (done_id, failed_id)]
        assert claims(service).reserve_task("t", timeout=0) is None
        assert [job_state(client, job) for job in leftovers] == [None, None]
    for task_id, status in ((done_id, Status.DONE), (failed_id, Status.FAILED)):
        row = service.find_task(task_id)
        assert (row.status, row.attempts, row.log) == (status, 1, "ran\n")


def test_a_job_whose_row_is_missing_or_whose_body_is_not_ours_is_buried(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    with beanstalk_client(beanstalkd, "t") as client:
        orphan = client.put(encode_body(987_654, DESCRIPTION))
        foreign = client.put(b"a job body from some other program")
        deep = client.put(b"[" * 60_000)
        assert claims(service).reserve_task("t", timeout=0) is None
        assert [job_state(client, job) for job in (orphan, foreign, deep)] == ["buried"] * 3
    assert service.store.tasks.count_tasks() == []


def test_regenerate_revives_only_a_failed_task_in_the_same_row_with_a_new_job(
    db_url: str, make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    with pytest.raises(NotFound, match="task 999999 does not exist"):
        service.regenerate_task(999_999)

    task_id = service.queue_task(DESCRIPTION, tube="t", priority=7, ttr=20)
    with pytest.raises(WrongStatus, match=f"task {task_id} is new"):
        service.regenerate_task(task_id)
    package = claims(service).reserve_task("t", timeout=0)
    assert package is not None
    with pytest.raises(WrongStatus, match=f"task {task_id} is working"):
        service.regenerate_task(task_id)
    assert claims(service).mark_failed(package, "boom\n", 3)
    old_job = package.job_id

    new_job = service.regenerate_task(task_id)
    assert new_job != old_job
    row = service.find_task(task_id)
    assert (row.id, row.status, row.job_id, row.attempts) == (task_id, Status.RESTARTED, new_job, 1)
    assert (row.exit_code, row.worker, row.started, row.finished) == (None, None, None, None)
    assert row.log is not None  # the failed attempt's log is kept, and the regenerate says what may run
    assert row.log.startswith("boom\n--- regenerated: attempt 2 may run")
    assert [task[2] for task in service.store.tasks.count_tasks()] == [1]  # still one row
    with pytest.raises(WrongStatus, match=f"task {task_id} is restarted"):
        service.regenerate_task(task_id)
    with beanstalk_client(beanstalkd, "t") as client:
        stats = client.stats_job(new_job)
        assert (stats["state"], stats["tube"], stats["pri"], stats["ttr"]) == ("ready", "t", 7, 20)
        assert decode_body(client.peek(new_job).body).task_id == task_id

    again = claims(service).reserve_task("t", timeout=0)
    assert again is not None
    assert (again.task_id, again.job_id, again.attempt, again.row.status) == (task_id, new_job, 2, Status.WORKING)
    assert again.description == DESCRIPTION
    assert claims(service).mark_done(again, None)
    with pytest.raises(WrongStatus, match=f"task {task_id} is done"):
        service.regenerate_task(task_id)


def _finish(service: TaskQueueService, tube: str, done: bool) -> int:
    task_id = service.queue_task(DESCRIPTION, tube=tube)
    package = claims(service).reserve_task(tube, timeout=0)
    assert package is not None and package.task_id == task_id
    assert (claims(service).mark_done if done else claims(service).mark_failed)(package, None)
    return task_id


def test_clean_up_deletes_only_done_tasks_that_finished_before_the_period(
    db_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    service = make_service(db_url)
    old_done = _finish(service, "a", done=True)
    recent_done = _finish(service, "b", done=True)
    old_failed = _finish(service, "c", done=False)
    waiting = service.queue_task(DESCRIPTION, tube="d")
    long_ago = utc_now() - dt.timedelta(hours=2)
    with service.store.database.transaction() as conn:
        conn.execute(sa.update(task_table).where(task_table.c.id.in_([old_done, old_failed]))
                     .values(finished=long_ago, created=long_ago))

    assert service.clean_up_tasks(3600) == 1
    assert service.status_of(old_done) is None
    assert [service.status_of(i) for i in (recent_done, old_failed, waiting)] == [
        Status.DONE, Status.FAILED, Status.NEW]
    assert service.clean_up_tasks(3600) == 0

    # A period of 0 takes every done task, and still no other.
    assert service.clean_up_tasks(0) == 1
    assert service.status_of(recent_done) is None
    assert [service.status_of(i) for i in (old_failed, waiting)] == [Status.FAILED, Status.NEW]
    with pytest.raises(InvalidInput, match="period"):
        service.clean_up_tasks(-1)


def test_status_of_an_unknown_task_is_none_and_find_task_says_not_found(
    db_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    service = make_service(db_url)
    assert service.status_of(424_242) is None
    with pytest.raises(NotFound, match="task 424242 does not exist"):
        service.find_task(424_242)


def test_queue_task_without_beanstalkd_keeps_the_row_new_and_warns_that_it_is_pending(
    db_url: str, beanstalkd: Beanstalkd,
) -> None:
    settings = settings_for(db_url, beanstalkd)
    # Frozen (SIGSTOP): the kernel still accepts the connection, but nothing ever answers.
    service = TaskQueueService(settings, beanstalkd=BeanstalkdConnection(beanstalkd.address, connect_timeout=0.5,
                                                                         io_timeout=0.5))
    assert beanstalkd.process is not None
    beanstalkd.process.send_signal(signal.SIGSTOP)
    try:
        with closing(service):
            started = time.monotonic()
            with pytest.warns(TaskPendingWarning) as frozen:
                frozen_id = service.queue_task(DESCRIPTION)
            assert time.monotonic() - started < 5
    finally:
        beanstalkd.process.send_signal(signal.SIGCONT)

    # Stopped: the connection is refused.
    beanstalkd.stop()
    with closing(TaskQueueService(settings)) as service:
        started = time.monotonic()
        with pytest.warns(TaskPendingWarning) as stopped:
            stopped_id = service.queue_task(DESCRIPTION)
        assert time.monotonic() - started < 5
        for caught, task_id in ((frozen, frozen_id), (stopped, stopped_id)):
            warning = caught[0].message
            assert isinstance(warning, TaskPendingWarning) and warning.task_id == task_id
            assert f"task {task_id} is recorded but pending" in str(warning)
            row = service.find_task(task_id)
            assert (row.status, row.job_id) == (Status.NEW, None)
            assert decode_data(row.data) == DESCRIPTION
        assert frozen_id != stopped_id


def test_module_level_queue_task_takes_its_settings_from_the_environment(
    db_url: str, tmp_path: Path, make_env: Callable[..., dict[str, str]],
    make_service: Callable[..., TaskQueueService], beanstalkd: Beanstalkd,
) -> None:
    env = make_env(db_url, PHEANQ_TUBE="from-env")
    code = ("import pheanq\n"
            "print(pheanq.queue_task(pheanq.TaskDescription('invoice', [7], {'send': True}), priority=3))\n")
    result = pheanq_python(code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    task_id = int(result.stdout.strip())
    row = make_service(db_url).find_task(task_id)
    assert (row.status, row.tube, row.priority, row.command) == (Status.NEW, "from-env", 3, "invoice")
    assert row.job_id is not None
    with beanstalk_client(beanstalkd) as client:
        assert client.stats_job(row.job_id)["tube"] == "from-env"
        assert decode_body(client.peek(row.job_id).body).task_id == task_id


def pheanq_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run application code (`python -c`) in a fresh interpreter with `env`."""
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)



def test_a_regeneration_beanstalkd_did_not_take_is_sent_again_by_the_next_regenerate(
    db_url: str, beanstalkd: Beanstalkd,
) -> None:
    settings = settings_for(db_url, beanstalkd, commands={"invoice": ["/bin/true"]})
    with closing(TaskQueueService(settings, beanstalkd=BeanstalkdConnection(beanstalkd.address, connect_timeout=0.5,
                                                      io_timeout=0.5))) as service:
        task_id = _finish(service, "t", done=False)
        assert beanstalkd.process is not None
        beanstalkd.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(TaskNotSent) as caught:
                service.regenerate_task(task_id)
        finally:
            beanstalkd.process.send_signal(signal.SIGCONT)
        assert caught.value.task_id == task_id
        assert f"task {task_id} is recorded as restarted but not sent to beanstalkd yet" in str(caught.value)
        row = service.find_task(task_id)
        assert (row.status, row.job_id) == (Status.RESTARTED, None)

        job_id = service.regenerate_task(task_id)
        assert service.find_task(task_id).job_id == job_id
        with pytest.raises(WrongStatus, match="is restarted"):  # sent now: no second job
            service.regenerate_task(task_id)
        # The put that timed out may still have reached beanstalkd once it woke up: the task then has two
        # jobs, and the claim lets only one of them run it.
        package = claims(service).reserve_task("t", timeout=0)
        assert package is not None
        assert (package.task_id, package.attempt) == (task_id, 2)
        assert claims(service).reserve_task("t", timeout=0) is None
        assert service.find_task(task_id).job_id == package.job_id
