"""A worker outlives a database outage: the task it holds is not dropped, and its result is recorded
exactly once when the database returns.

The outage is real: the worker reaches the real PostgreSQL / MariaDB through a loopback proxy whose line
the test cuts (every connection dropped, new ones refused) and restores on the same port.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support import TcpProxy, WorkerProcess, server_database_urls, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq.producer.service import TaskQueueService
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
    proxy.cut()


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


def test_a_job_reserved_while_the_database_is_down_is_handed_back_and_runs_once_it_returns(
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
