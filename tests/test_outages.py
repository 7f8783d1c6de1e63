"""A worker outlives a database outage: the task it holds is not dropped, and its result is recorded
exactly once when the database returns.

The outage is real: the worker reaches the real PostgreSQL / MariaDB through a loopback proxy whose line
the test cuts (every connection dropped, new ones refused) and restores on the same port, or which drops the
server's answer to one COMMIT (the transaction is committed; the worker never learns it).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support import TcpProxy, WorkerProcess, claims, server_database_urls, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService
from pheanq.retry import Retry
from pheanq.storage import Store
from pheanq.storage.tables import task_table


@pytest.fixture(params=sorted(server_database_urls()))
def server_url(request: pytest.FixtureRequest, _upgraded_servers: dict[str, str]) -> str:
    url = _upgraded_servers[request.param]
    store = Store(url)
    with store.database.transaction() as conn:
        conn.execute(task_table.delete())
    store.close()
    return url


@pytest.fixture
def proxied(server_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """The database URL as seen through a proxy the test can cut."""
    url = make_url(server_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).restore()
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    proxy.close()


def _slow_command(tmp_path: Path, seconds: float) -> Path:
    """A command whose work is a sleep of `seconds`, long enough to cut the database while it runs."""
    marker = tmp_path / "ran.txt"
    work = f"import time; time.sleep({seconds}); open({str(marker)!r}, 'a').write('ran\\n')"  # the task's work
    write_config(tmp_path, commands={"slow": [sys.executable, "-c", work]})
    return marker


def test_a_result_is_kept_through_a_database_outage_and_recorded_once_it_returns(
    server_url: str, proxied: tuple[str, TcpProxy], tmp_path: Path,
    make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    proxied_url, proxy = proxied
    marker = _slow_command(tmp_path, 1.0)
    service = make_service(server_url)
    task_id = service.queue_task(TaskDescription("slow"), ttr=2)
    worker = start_worker([], make_env(proxied_url))
    worker.wait_line(f"BUSY {task_id}")

    proxy.cut()
    wait_for(lambda: marker.exists(), 10, "the command to finish during the outage")
    wait_for(lambda: "result kept, retrying" in worker.log, 10, "the worker to say it retries")
    assert service.find_task(task_id).status is Status.WORKING   # nothing recorded while the line is cut
    assert worker.process.poll() is None

    proxy.restore()
    wait_for(lambda: service.find_task(task_id).status is Status.DONE, 30, "the result to be recorded")
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (1, 0)
    assert marker.read_text() == "ran\n"
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


def test_a_job_reserved_while_the_database_is_down_is_claimed_and_runs_once_it_returns(
    server_url: str, proxied: tuple[str, TcpProxy], tmp_path: Path,
    make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    proxied_url, proxy = proxied
    marker = _slow_command(tmp_path, 0)
    service = make_service(server_url)
    worker = start_worker([], make_env(proxied_url))
    worker.wait_line("READY")

    proxy.cut()
    task_id = service.queue_task(TaskDescription("slow"))
    wait_for(lambda: "unreachable" in worker.log, 10, "the worker to report the database unreachable")
    assert service.find_task(task_id).status is Status.NEW
    assert not marker.exists()

    proxy.restore()
    wait_for(lambda: service.find_task(task_id).status is Status.DONE, 40, "the task to run after the outage")
    assert marker.read_text() == "ran\n"
    assert service.find_task(task_id).attempts == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


def test_a_command_outlives_a_database_outage_longer_than_its_lease_while_its_job_stays_reserved(
    server_url: str, proxied: tuple[str, TcpProxy], tmp_path: Path,
    make_service: Callable[..., TaskQueueService], make_env: Callable[..., dict[str, str]],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    proxied_url, proxy = proxied
    marker = _slow_command(tmp_path, 5.0)
    service = make_service(server_url)
    task_id = service.queue_task(TaskDescription("slow"), ttr=1)  # a lease that goes stale after 3 s
    worker = start_worker([], make_env(proxied_url))
    worker.wait_line(f"BUSY {task_id}")

    proxy.cut()
    wait_for(lambda: "its job is still reserved" in worker.log, 10, "the worker to lean on the reservation")
    wait_for(lambda: marker.exists(), 15, f"the command to finish during the outage; log:\n{worker.log}")
    proxy.restore()
    wait_for(lambda: service.find_task(task_id).status is Status.DONE, 30, f"the result recorded; log:\n{worker.log}")
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (1, 0)
    assert marker.read_text() == "ran\n"
    assert "interrupted" not in (row.log or "")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


class CommitAnswerCutter(TcpProxy):
    """A proxy that, once, forwards the COMMIT of a transaction that sent `marker`, drops the server's answer to
    it and closes that connection: the transaction is committed, and the client sees its connection die."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        super().__init__(target)
        self.marker = marker
        self.cut_at: float | None = None
        self._armed: set[socket.socket] = set()      # client sides that sent the marker
        self._dropping: set[socket.socket] = set()   # server sides whose next answer is dropped
        self._once = threading.Lock()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:  # type: ignore[override]
        from_server = source.getpeername() == self.target
        try:
            while data := source.recv(65536):
                if from_server and source in self._dropping:
                    self.cut_at = time.monotonic()  # the answer to the COMMIT: dropped
                    break
                if not from_server and self.cut_at is None:
                    if self.marker in data:
                        self._armed.add(source)
                    elif source in self._armed and b"COMMIT" in data and self._once.acquire(blocking=False):
                        self._dropping.add(sink)  # before the COMMIT goes on, so its answer is caught
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_claim_whose_answer_is_lost_is_found_by_its_worker_and_run_at_once_as_the_same_attempt(
    server_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    """The issue: the claim's COMMIT reached the server and its answer did not come back. The row was `working`
    under the worker, which dropped the job; every later delivery, to that worker too, was put off as held
    under a live lease until the lease went stale (~32 s), and the task ended with `attempts` 2, one run, and
    no log entry for attempt 1."""
    # Only the claim's UPDATE compares the row's nonce: the cut falls on a claim's COMMIT, and on no other.
    proxy = _cutter(server_url, b"coalesce(pheanq_task.nonce")
    try:
        marker = _slow_command(tmp_path, 0)
        service = make_service(server_url)
        worker = start_worker([], make_env(_through(proxy, server_url)))
        worker.wait_line("READY")
        task_id = service.queue_task(TaskDescription("slow"))

        wait_for(lambda: proxy.cut_at is not None, 20, "the claim's COMMIT to be answered, and the answer dropped")
        assert proxy.cut_at is not None
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 15, "the task to run (a lease goes stale in ~32 s)",
                 interval=0.05)
        took = time.monotonic() - proxy.cut_at
        print(f"the task was done {took:.2f} s after the claim's answer was lost")
        assert took < 10
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    finally:
        proxy.close()
    row = service.find_task(task_id)
    assert marker.read_text() == "ran\n"
    assert (row.status, row.attempts, row.exit_code) == (Status.DONE, 1, 0)
    assert row.log is not None
    assert row.log.count("--- attempt ") == 1 and "--- attempt 1 " in row.log, row.log
    assert f"task {task_id} was claimed by this worker already (attempt 1)" in worker.log
    assert "is still held by" not in worker.log


def _cutter(server_url: str, marker: bytes) -> CommitAnswerCutter:
    """A CommitAnswerCutter in front of the server of `server_url`, forwarding."""
    url = make_url(server_url)
    proxy = CommitAnswerCutter((url.host or "127.0.0.1", url.port or 5432), marker)
    proxy.restore()
    return proxy


def _through(proxy: TcpProxy, server_url: str) -> str:
    return make_url(server_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def test_a_retry_whose_write_answer_is_lost_runs_after_its_backoff(
    server_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    """Issue 11, item 9's sibling at an attempt's end: the first attempt fails with a retry left, and the COMMIT
    of `working -> retrying` reaches the server while its answer is dropped. The worker wrote again, found the
    row no longer `working`, said the attempt no longer owned the task and deleted the job: the task waited in
    `retrying`, with no job, for the reconciler, instead of running after its 1 s backoff."""
    marker = "CUT-THE-RETRYS-ANSWER"   # in the failed attempt's output, so in the write of `retrying` alone
    flag = tmp_path / "second"
    script = f"if [ -e {flag} ]; then exit 0; fi; touch {flag}; echo {marker}; exit 1"
    write_config(tmp_path, commands={"flaky": ["sh", "-c", script]}, log_worker_output_on_failure=True)
    proxy = _cutter(server_url, marker.encode())
    try:
        service = make_service(server_url)
        worker = start_worker([], make_env(_through(proxy, server_url)))
        worker.wait_line("READY")
        task_id = service.queue_task(TaskDescription("flaky"),
                                     retry=Retry(max_attempts=3, backoff="fixed", delay=1, jitter=False))
        wait_for(lambda: proxy.cut_at is not None, 20, "the retry's COMMIT to be answered, and the answer dropped")
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 15,
                 f"the retry to run after its 1 s backoff; log:\n{worker.log}", interval=0.1)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    finally:
        proxy.close()
    row = service.find_task(task_id)
    assert (row.attempts, row.exit_code) == (2, 0)
    log = row.log or ""
    assert log.count("--- attempt 1 ") == 1 and log.count("--- attempt 2 ") == 1, log
    assert log.count("--- retrying in 1s (attempt 2 of 3)") == 1, log
    assert "no longer" not in worker.log
    assert f"task {task_id}: attempt 1 was recorded retrying, though the database's answer was lost" in worker.log


def test_a_chain_step_whose_finish_answer_is_lost_sends_its_dependant(
    server_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    """The chain's first step is done; the COMMIT that records it (and releases the second step to `new`)
    reaches the server, its answer is dropped. The write again found the row settled and said the attempt no
    longer held the task, so the worker never put the second step's job: it waited, `new` with no job, for the
    reconciler."""
    marker = "CUT-THE-FIRST-STEPS-ANSWER"
    write_config(tmp_path, commands={"say": ["echo"]}, log_worker_output_on_success=True)
    proxy = _cutter(server_url, marker.encode())
    try:
        service = make_service(server_url)
        worker = start_worker([], make_env(_through(proxy, server_url)))
        worker.wait_line("READY")
        first, second = service.queue_chain(TaskDescription("say", [marker]).then(TaskDescription("say", ["two"])))
        wait_for(lambda: proxy.cut_at is not None, 20, "the finish's COMMIT to be answered, and the answer dropped")
        wait_for(lambda: service.status_of(second) is Status.DONE, 15,
                 f"the second step to run; log:\n{worker.log}", interval=0.1)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    finally:
        proxy.close()
    row = service.find_task(first)
    assert (row.status, row.attempts, row.exit_code) == (Status.DONE, 1, 0)
    assert (row.log or "").count("--- attempt 1 ") == 1, row.log   # recorded once, not again as a lost attempt
    assert service.find_task(second).attempts == 1
    assert "no longer" not in worker.log
    assert f"task {first}: attempt 1 was recorded done, though the database's answer was lost" in worker.log


def test_an_end_written_again_is_found_written_and_what_it_released_is_sent(
    db_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    """What a worker does when an end's answer is lost, without the proxy: the end is written twice. The second
    write finds the row as the first left it, deletes the job and sends the dependant the first one released;
    an end that is not the same write (another entry) is not taken for it."""
    service = make_service(db_url)
    first, second = service.queue_chain(TaskDescription("work", ["one"]).then(TaskDescription("work", ["two"])))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None and package.task_id == first
    entry = "--- attempt 1 on w: done after 0.01s\n"
    # The first write: committed, and its answer (with the dependant it released) never reached the worker.
    assert service.dispatch.store.tasks.finish_task(first, 1, Status.DONE, 0, entry) is not None
    assert service.find_task(second).job_id is None

    assert claims(service).mark_done(package, entry, 0)
    assert service.find_task(first).log == entry
    assert service.dispatch.beanstalkd.inspect(package.job_id) is None
    assert service.find_task(second).job_id is not None
    assert not claims(service).mark_done(package, "--- attempt 1 on w: done after 0.02s\n", 0)


def test_a_batch_task_whose_end_is_written_again_sends_the_batchs_callbacks(
    db_url: str, make_service: Callable[..., TaskQueueService],
) -> None:
    """The batch's only task ends done, and the answer to that write is lost: the write again queued no callback
    (the batch had finished) and sent none, so `then` and `finally` waited, `new` with no job, for the
    reconciler."""
    service = make_service(db_url)
    with service.create_batch("cut", then=TaskDescription("work", ["then"]),
                              finally_=TaskDescription("work", ["finally"])) as batch:
        task_id = batch.add(TaskDescription("work", ["only"]))
    package = claims(service).reserve_task("pheanq", timeout=5)
    assert package is not None and package.task_id == task_id
    entry = "--- attempt 1 on w: done after 0.01s\n"
    assert service.dispatch.store.tasks.finish_task(task_id, 1, Status.DONE, 0, entry) is not None  # answer lost

    assert claims(service).mark_done(package, entry, 0)
    sent = [claims(service).reserve_task("pheanq", timeout=1) for _ in range(2)]
    assert sorted(str(callback.description.arguments[0]) for callback in sent if callback is not None) == \
        ["finally", "then"]
