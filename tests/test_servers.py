"""Several beanstalkd servers (pheanq.beanstalkd): puts spread over them and fail over at once, workers serve every
one, the reconciler sends a dead or unlisted server's tasks to the others, and a server that comes back with its
binlog runs none of its old jobs. Real beanstalkd servers, real databases, real worker processes."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import pytest
from support import Beanstalkd, pheanq, wait_for, write_config
from web_support import READER_TOKEN, WebServer

from pheanq import TaskDescription, TaskPendingWarning, TaskQueueService, load_settings
from pheanq.beanstalkd import BeanstalkdServers, server_number
from pheanq.errors import ConfigError
from pheanq.ops.metrics import metrics_text
from pheanq.ops.reconcile import reconcile
from pheanq.status import Status
from pheanq.storage import Store

TUBE = "spread"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Beanstalkd]]:
    """Three beanstalkd servers, each with a binlog of its own."""
    started = []
    for n in range(3):
        (tmp_path / f"binlog{n}").mkdir()
        started.append(Beanstalkd(binlog_dir=tmp_path / f"binlog{n}").start())
    yield started
    for server in started:
        server.stop()


def listed(servers: list[Beanstalkd]) -> str:
    return ",".join(server.address_text for server in servers)


def service_on(db_url: str, servers: list[Beanstalkd]) -> TaskQueueService:
    return TaskQueueService(load_settings({"database_url": db_url, "beanstalkd": listed(servers),
                                           "commands": {"work": ["true"]}}, environ={}))


def runs_file(tmp_path: Path) -> Path:
    """Register `work`, which appends its task's id to runs.txt in one write; the file's path."""
    runs = tmp_path / "runs.txt"
    runs.touch()
    write_config(tmp_path, commands={"work": ["sh", "-c", f'echo "$PHEANQ_TASK_ID" >> {runs}']})
    return runs


def env_for(tmp_path: Path, db_url: str, servers: list[Beanstalkd]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHEANQ_")}
    env.update(PHEANQ_DATABASE_URL=db_url, PHEANQ_BEANSTALKD=listed(servers),
               PHEANQ_CONFIG=str(tmp_path / "pheanq.toml"))
    return env


def ready_on(server: Beanstalkd, tube: str = TUBE) -> int:
    with greenstalk.Client(server.address, encoding=None) as client:
        try:
            return int(client.stats_tube(tube)["current-jobs-ready"])
        except greenstalk.NotFoundError:
            return 0


def run_worker_until_empty(tmp_path: Path, env: dict[str, str]) -> None:
    done = pheanq(["task-worker", "--use-tube", TUBE, "--stop-when-empty"], env, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_setting_takes_one_server_or_several() -> None:
    one = load_settings({"beanstalkd": "10.0.0.1:11300"}, environ={})
    assert one.beanstalkd == ("10.0.0.1", 11300) and one.beanstalkd_servers == (("10.0.0.1", 11300),)
    several = load_settings({}, environ={"PHEANQ_BEANSTALKD": "10.0.0.1:11300, 10.0.0.2:11301"})
    assert several.beanstalkd_servers == (("10.0.0.1", 11300), ("10.0.0.2", 11301))
    assert several.beanstalkd_address == "10.0.0.1:11300,10.0.0.2:11301"
    assert load_settings({"beanstalkd": ["a:1", "b:2"]}, environ={}).beanstalkd_servers == (("a", 1), ("b", 2))
    for bad, says in (("a:1,a:1", "a:1 is given twice"), (",", "no server given"), ("a:1,b", "'b' is not host:port")):
        with pytest.raises(ConfigError, match=says):
            load_settings({"beanstalkd": bad}, environ={})


def test_puts_go_to_the_servers_in_turn_and_a_worker_serves_each(db_url: str, tmp_path: Path,
                                                                  servers: list[Beanstalkd]) -> None:
    runs = runs_file(tmp_path)
    service = service_on(db_url, servers)
    try:
        ids = [service.queue_task(TaskDescription("work"), tube=TUBE) for _ in range(12)]
        service.dispatch.job_ids.flush()  # ids are written in groups, a moment after the puts
        rows = [service.store.tasks.find_task(task_id) for task_id in ids]
        numbers = [server_number(row.job_id) for row in rows if row is not None and row.job_id is not None]
        assert sorted(numbers) == sorted([0, 1, 2] * 4)  # each task's job id names its server
        assert [ready_on(server) for server in servers] == [4, 4, 4]
        run_worker_until_empty(tmp_path, env_for(tmp_path, db_url, servers))
        assert sorted(int(line) for line in runs.read_text().split()) == sorted(ids)
        for task_id in ids:
            found = service.store.tasks.find_task(task_id)
            assert found is not None and found.status is Status.DONE
        assert [ready_on(server) for server in servers] == [0, 0, 0]
    finally:
        service.close()


def test_a_put_goes_to_the_next_server_at_once_when_one_is_down(sqlite_url: str, servers: list[Beanstalkd]) -> None:
    servers[1].stop()
    service = service_on(sqlite_url, servers)
    try:
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("error", TaskPendingWarning)  # not one task may be left pending
            ids = [service.queue_task(TaskDescription("work"), tube=TUBE) for _ in range(20)]
        service.dispatch.job_ids.flush()
        assert time.monotonic() - started < 5  # a refused server is passed over, not waited on for each put
        rows = [service.store.tasks.find_task(task_id) for task_id in ids]
        assert all(row is not None and row.job_id is not None and server_number(row.job_id) != 1 for row in rows)
        assert ready_on(servers[0]) + ready_on(servers[2]) == 20
    finally:
        service.close()


def test_a_dead_servers_tasks_go_to_the_others_and_its_old_jobs_run_nothing_when_it_returns(
        db_url: str, tmp_path: Path, servers: list[Beanstalkd]) -> None:
    runs = runs_file(tmp_path)
    service = service_on(db_url, servers)
    try:
        ids = [service.queue_task(TaskDescription("work"), tube=TUBE) for _ in range(9)]
        service.dispatch.job_ids.flush()
        servers[0].stop(9)  # killed -9, holding three jobs in its binlog
        report = reconcile(service.dispatch, TUBE, min_age=0)
        assert report.sent_again == 3, report.summary()
        assert ready_on(servers[1]) + ready_on(servers[2]) == 9
        env = env_for(tmp_path, db_url, servers)
        run_worker_until_empty(tmp_path, env)
        assert sorted(int(line) for line in runs.read_text().split()) == sorted(ids)
        servers[0].start()  # back with its binlog: its three old jobs are ready again
        assert ready_on(servers[0]) == 3
        run_worker_until_empty(tmp_path, env)
        assert ready_on(servers[0]) == 0  # deleted unrun: the claim found their tasks done
        assert sorted(int(line) for line in runs.read_text().split()) == sorted(ids)  # each ran once
    finally:
        service.close()


def test_a_server_taken_out_of_the_list_is_drained(db_url: str, tmp_path: Path, servers: list[Beanstalkd]) -> None:
    runs = runs_file(tmp_path)
    service = service_on(db_url, servers)
    ids = [service.queue_task(TaskDescription("work"), tube=TUBE) for _ in range(9)]
    service.close()  # writes the job ids
    remaining = service_on(db_url, servers[:2])  # servers[2] is still up, but no longer listed
    try:
        report = reconcile(remaining.dispatch, TUBE, min_age=0)
        assert report.sent_again == 3, report.summary()
        run_worker_until_empty(tmp_path, env_for(tmp_path, db_url, servers[:2]))
        assert sorted(int(line) for line in runs.read_text().split()) == sorted(ids)
        status = pheanq(["status"], env_for(tmp_path, db_url, servers[:2]), tmp_path)
        assert f"server {servers[2].address_text} (#2): not listed" in status.stdout, status.stdout
    finally:
        remaining.close()


def test_a_reserve_takes_from_every_server_in_turn(sqlite_url: str, servers: list[Beanstalkd]) -> None:
    store = Store(sqlite_url)
    producer = BeanstalkdServers.at([server.address for server in servers], store.servers.number_servers)
    reader = BeanstalkdServers.at([server.address for server in servers], store.servers.number_servers)
    try:
        for n in range(30):
            producer.put(TUBE, b"job %d" % n, priority=100, delay=0, ttr=60)
        taken = []
        for _ in range(6):
            job = reader.reserve([TUBE], timeout=0)
            assert job is not None
            taken.append(server_number(job.id))
            assert reader.delete(job.id)
        assert sorted(taken) == [0, 0, 1, 1, 2, 2]  # no server starved while the others have jobs
    finally:
        producer.close()
        reader.close()
        store.close()


def test_an_idle_reserve_waits_on_every_server_at_once(sqlite_url: str, servers: list[Beanstalkd]) -> None:
    store = Store(sqlite_url)
    reader = BeanstalkdServers.at([server.address for server in servers], store.servers.number_servers)
    got: list[tuple[float, int]] = []

    def reserve() -> None:
        started = time.monotonic()
        job = reader.reserve([TUBE], timeout=5)
        assert job is not None
        got.append((time.monotonic() - started, job.id))

    waiter = threading.Thread(target=reserve)
    try:
        waiter.start()
        wait_for(lambda: all(ready_on(server) == 0 for server in servers), 5, "the tube to exist")
        time.sleep(0.5)  # the reserve is waiting: the put below must reach it on the last server it asks
        with greenstalk.Client(servers[2].address, encoding=None, use=TUBE) as client:
            client.put(b"late", ttr=60)
        waiter.join(10)
        assert got, "the reserve returned nothing"
        seconds, reference = got[0]
        assert server_number(reference) == 2
        assert seconds < 4  # the put came at 0.5 s; a reserve waiting on one server at a time would miss it
    finally:
        reader.close()
        store.close()


def test_status_and_metrics_show_each_server(sqlite_url: str, tmp_path: Path, servers: list[Beanstalkd]) -> None:
    write_config(tmp_path, commands={"work": ["true"]})
    service = service_on(sqlite_url, servers)
    try:
        for _ in range(6):
            service.queue_task(TaskDescription("work"), tube=TUBE)
        servers[1].stop()
        env = env_for(tmp_path, sqlite_url, servers)
        text = pheanq(["status"], env, tmp_path)
        assert text.returncode == 0, text.stderr
        assert f"server {servers[0].address_text} (#0): up, ready 2" in text.stdout, text.stdout
        assert f"server {servers[1].address_text} (#1): DOWN" in text.stdout
        report = json.loads(pheanq(["status", "--json"], env, tmp_path).stdout)
        by_address = {server["address"]: server for server in report["servers"]}
        assert by_address[servers[1].address_text]["up"] is False
        assert by_address[servers[2].address_text]["jobs"]["ready"] == 2
        assert report["tubes"][TUBE]["beanstalkd"]["current-jobs-ready"] == 4  # the two that answered
        metrics = metrics_text(service.dispatch).decode()
        assert f'pheanq_beanstalkd_server_up{{server="{servers[1].address_text}"}} 0.0' in metrics
        assert f'pheanq_beanstalkd_server_jobs{{server="{servers[2].address_text}",state="ready"}} 2.0' in metrics
        assert "pheanq_beanstalkd_up 0.0" in metrics
        web = WebServer(env, tmp_path)
        try:
            with web.client(READER_TOKEN) as client:
                page = client.get("/").text
                assert f'data-server="{servers[1].address_text}"' in page and ">down<" in page
                assert [server["up"] for server in client.get("/api").json()["servers"]] == [True, False, True]
        finally:
            web.stop()
    finally:
        service.close()
