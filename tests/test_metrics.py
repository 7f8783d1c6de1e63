"""The Prometheus metrics (pheanq.ops.metrics) scraped and parsed with prometheus_client's own parsers while real
workers run real tasks, on every database: the totals by outcome, the histograms of run time and queue wait
against the tasks' own times, the gauges against the counts and beanstalkd's stats, tenders on two hosts, totals
that deleting tasks never lowers and concurrent folds never count twice, and a scrape that still answers when
beanstalkd or the database does not."""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Beanstalkd,
    TenderProcess,
    WorkerProcess,
    finish_next,
    folds_beside,
    pheanq,
    skip_here_fail_in_ci,
    wait_for,
    write_config,
)

from pheanq import Retry, Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.config import load_settings
from pheanq.dispatch import Dispatcher
from pheanq.ops.metrics import metrics_registry, metrics_text
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store, counts, totals
from pheanq.storage.migrate import _alembic_config
from pheanq.storage.tables import TaskRow, WorkerRow, task_row, task_table

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"  # the task's work
OUTCOMES = ("done", "failed", "cancelled", "upstream_failed")


def scrape(dispatch: Dispatcher) -> Samples:
    """Every sample of a scrape, by its name and labels, from the text parsed by prometheus_client's parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(metrics_text(dispatch).decode()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample_name, labels), value in samples.items() if sample_name == name}


def rows(service: TaskQueueService) -> list[TaskRow]:
    """Every task of the table, in id order."""
    with service.store.database.transaction() as conn:
        return [task_row(found) for found in conn.execute(task_table.select().order_by(task_table.c.id)).mappings()]


def seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float:
    assert later is not None and earlier is not None
    return (later - earlier).total_seconds()


def assert_histogram(samples: Samples, name: str, tube: str, task: str, observed: list[float]) -> None:
    """The histogram of `tube` and `task` holds exactly `observed`: its count, its sum, and every bucket."""
    labels = {"tube": tube, "task": task}
    assert sample(samples, f"{name}_count", **labels) == len(observed)
    assert sample(samples, f"{name}_sum", **labels) == pytest.approx(sum(observed), abs=1e-5)
    buckets = sorted((float(dict(key)["le"]), value) for key, value in named(samples, f"{name}_bucket").items()
                     if {k: v for k, v in key if k != "le"} == labels)
    assert [bound for bound, _ in buckets] == [*totals.BUCKETS, math.inf]
    for bound, count in buckets:
        assert count == sum(1 for value in observed if value <= bound), (name, bound)


@pytest.fixture
def commands(tmp_path: Path) -> None:
    write_config(tmp_path, commands={"ok": [sys.executable, "-c", SLEEPER, "0.05"], "fail": ["/bin/false"],
                                     "sleep": [sys.executable, "-c", SLEEPER]})


def test_a_scrape_while_a_worker_runs_has_every_end_and_duration_of_the_table(
    db_url: str, commands: None, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    ok = [service.queue_task(TaskDescription("ok"), tube="billing") for _ in range(4)]
    ok += [service.queue_task(TaskDescription("ok"), tube="mail") for _ in range(3)]
    failing = [service.queue_task(TaskDescription("fail"), tube="billing") for _ in range(2)]
    flaky = service.queue_task(TaskDescription("fail"), tube="flaky",
                               retry=Retry(max_attempts=2, backoff="fixed", delay=0, jitter=False))
    worker = start_worker(["--use-tube", "billing,mail,flaky"], make_env(db_url))
    wait_for(lambda: all(service.status_of(task_id) in (Status.DONE, Status.FAILED)
                         for task_id in [*ok, *failing, flaky]), 30, "the tasks to end")
    children = _children(worker)
    running = service.queue_task(TaskDescription("sleep", ["60"]), tube="billing")
    # Its own command running, not an earlier task's: the cancel must find it working.
    wait_for(lambda: _children(worker) > children and service.status_of(running) is Status.WORKING, 20,
             "the sleeper to start")
    assert service.cancel_task(running, by="carol").cancelled
    wait_for(lambda: service.status_of(running) is Status.CANCELLED, 20, "the worker to stop the sleeper")
    waiting = service.queue_task(TaskDescription("ok"), tube="later")   # no worker watches it: it waits
    service.queue_task(TaskDescription("ok"), tube="scheduled", delay=3600)  # not ready: it has no age
    before = utc_now()

    samples = scrape(service.dispatch)

    after = utc_now()
    assert sample(samples, "pheanq_database_up") == sample(samples, "pheanq_beanstalkd_up") == 1
    # Every tube and task that had a task queued has all its outcomes, 0 until one comes.
    ends = {(tube, task, outcome): 0.0 for tube, task in [("billing", "ok"), ("mail", "ok"), ("billing", "fail"),
                                                          ("flaky", "fail"), ("billing", "sleep"), ("later", "ok"),
                                                          ("scheduled", "ok")]
            for outcome in OUTCOMES}
    ends.update({("billing", "ok", "done"): 4, ("mail", "ok", "done"): 3, ("billing", "fail", "failed"): 2,
                 ("flaky", "fail", "failed"): 1, ("billing", "sleep", "cancelled"): 1})
    assert {(dict(labels)["tube"], dict(labels)["task"], dict(labels)["outcome"]): value
            for labels, value in named(samples, "pheanq_tasks_total").items()} == ends
    assert sample(samples, "pheanq_task_retries_total", tube="flaky", task="fail") == 1
    assert sample(samples, "pheanq_task_retries_total", tube="billing", task="fail") == 0
    assert sample(samples, "pheanq_task_stalls_total", tube="billing", task="ok") == 0

    every = {row.id: row for row in rows(service)}
    for tube, task, ids in [("billing", "ok", ok[:4]), ("mail", "ok", ok[4:]), ("billing", "fail", failing),
                            ("billing", "sleep", [running])]:
        assert_histogram(samples, "pheanq_task_run_seconds", tube, task,
                         [seconds(every[i].finished, every[i].started) for i in ids])
        assert_histogram(samples, "pheanq_task_queue_wait_seconds", tube, task,
                         [seconds(every[i].started, every[i].created) for i in ids])
    # Two attempts, each with its run and its wait; the last one's are among them.
    flaky_row = every[flaky]
    assert sample(samples, "pheanq_task_run_seconds_count", tube="flaky", task="fail") == 2
    assert sample(samples, "pheanq_task_queue_wait_seconds_count", tube="flaky", task="fail") == 2
    assert sample(samples, "pheanq_task_run_seconds_sum", tube="flaky", task="fail") >= \
        seconds(flaky_row.finished, flaky_row.started)
    assert ("pheanq_task_run_seconds_count", frozenset({"tube": "later", "task": "ok"}.items())) not in samples

    stored = {(dict(labels)["tube"], dict(labels)["status"]): value
              for labels, value in named(samples, "pheanq_tasks_stored").items()}
    counted = counts.count_tasks(service.store.database)
    assert {key: value for key, value in stored.items() if value} == \
        {(tube, status.value): n for tube, status, n in counted}
    assert set(stored) == {(tube, status.value) for tube in ("billing", "flaky", "later", "mail", "pheanq",
                                                             "scheduled") for status in Status}
    for tube in ("billing", "flaky", "later", "mail", "pheanq", "scheduled"):
        stats = service.dispatch.beanstalkd.tube_stats(tube) or {}
        for state in ("ready", "reserved", "delayed", "buried"):
            assert sample(samples, "pheanq_beanstalkd_jobs", tube=tube, state=state) == \
                stats.get(f"current-jobs-{state}", 0)
    assert sample(samples, "pheanq_beanstalkd_jobs", tube="later", state="ready") == 1
    assert sample(samples, "pheanq_beanstalkd_jobs", tube="scheduled", state="delayed") == 1

    created = every[waiting].created
    assert seconds(before, created) <= sample(samples, "pheanq_oldest_ready_age_seconds", tube="later") <= \
        seconds(after, created)
    assert sample(samples, "pheanq_oldest_ready_age_seconds", tube="scheduled") == 0
    assert sample(samples, "pheanq_oldest_ready_age_seconds", tube="billing") == 0
    assert worker.process.poll() is None

    # The same metrics in OpenMetrics (what Prometheus asks for first) parse too: no two families share a name.
    exposed = openmetrics_text(metrics_registry(service.dispatch)).decode()  # type: ignore[no-untyped-call]
    families = {family.name for family in parse_openmetrics(exposed)}  # type: ignore[no-untyped-call]
    assert {"pheanq_tasks", "pheanq_tasks_stored", "pheanq_task_run_seconds"} <= families


def test_totals_are_summed_over_tenders_on_two_hosts(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    if os.geteuid() != 0:
        skip_here_fail_in_ci("two hosts are two UTS namespaces (unshare), which need root")
    write_config(tmp_path, commands={"ok": [sys.executable, "-c", SLEEPER, "0.2"]})
    service = make_service(db_url)
    ids = [service.queue_task(TaskDescription("ok"), tube="billing") for _ in range(12)]
    tenders = [_tender_on(host, tmp_path, make_env(db_url, PHEANQ_RUN_DIR=str(tmp_path / host)))
               for host in ("host-a", "host-b")]
    try:
        wait_for(lambda: all(service.status_of(task_id) is Status.DONE for task_id in ids), 60, "the tasks to end")
        ran_on = {row.worker.split(":")[0] for row in rows(service) if row.worker}
        assert ran_on == {"host-a", "host-b"}, "each host's worker ran some of the tasks"

        def both_reported() -> Samples | None:
            samples = scrape(service.dispatch)
            tenders_up = named(samples, "pheanq_tenders")
            return samples if {dict(labels)["host"] for labels in tenders_up} == {"host-a", "host-b"} else None

        samples = wait_for(both_reported, 20, "both tenders' reports")
        assert sample(samples, "pheanq_tasks_total", tube="billing", task="ok", outcome="done") == 12
        assert sample(samples, "pheanq_task_run_seconds_count", tube="billing", task="ok") == 12
        assert sample(samples, "pheanq_task_queue_wait_seconds_count", tube="billing", task="ok") == 12
        for host in ("host-a", "host-b"):
            assert sample(samples, "pheanq_tenders", host=host, state="running") == 1
            workers = {dict(labels)["state"]: value for labels, value in named(samples, "pheanq_workers").items()
                       if dict(labels)["host"] == host}
            assert sum(workers.values()) == 1 and set(workers) <= {"starting", "idle", "busy"}, workers
    finally:
        for tender in tenders:
            tender.stop()


def _children(worker: WorkerProcess) -> int:
    """How many commands the worker has started (its CHILD lines)."""
    return sum(1 for line in list(worker.stdout_lines) if line.startswith("CHILD "))


def _tender_on(host: str, cwd: Path, env: dict[str, str]) -> TenderProcess:
    """A worker-tender with one worker in a UTS namespace of its own whose host name is `host`: another host, as
    the table sees it (each process names its host with socket.gethostname())."""
    on_host = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', sys.executable]
    return TenderProcess(["--use-tube", "billing", "--min-workers", "1", "--max-workers", "1", "--spare-workers",
                          "0"], env, cwd, python=on_host)


def test_a_tender_that_stopped_reporting_is_stale(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    now = utc_now()
    long_ago = now - dt.timedelta(minutes=5)
    report = [WorkerRow("gone", 7, 7, "tender", "pheanq", "running", None, long_ago, long_ago),
              *(WorkerRow("gone", 7, pid, "worker", "pheanq", "busy", None, long_ago, long_ago) for pid in (8, 9))]
    service.store.admin.replace_pool("gone", 7, report)
    service.store.admin.replace_pool("here", 5, [
        WorkerRow("here", 5, 5, "tender", "pheanq", "running", None, now, now),
        WorkerRow("here", 5, 6, "worker", "pheanq", "idle", None, now, now),
        WorkerRow("here", 5, 4, "worker", "pheanq", "busy", 1, now, now)])
    samples = scrape(service.dispatch)
    assert named(samples, "pheanq_workers") == {
        frozenset({"host": "gone", "state": "stale"}.items()): 2,
        frozenset({"host": "here", "state": "idle"}.items()): 1,
        frozenset({"host": "here", "state": "busy"}.items()): 1}
    assert named(samples, "pheanq_tenders") == {
        frozenset({"host": "gone", "state": "stale"}.items()): 1,
        frozenset({"host": "here", "state": "running"}.items()): 1}


def test_each_limit_shows_its_places_use_and_waiting_tasks(sqlite_url: str, make_service: MakeService) -> None:
    service = make_service(sqlite_url, commands={"slow": ["true"]},
                           limits={"commands": {"slow": {"concurrency": 2, "rate": "5/m"}}})
    for _ in range(3):
        service.queue_task(TaskDescription("slow"))
    assert finish_next(service, "pheanq", Status.WORKING)
    samples = scrape(service.dispatch)
    concurrency, rate = (frozenset({"scope": "command:slow", "kind": kind}.items()) for kind in ("concurrency", "rate"))

    def of_slow(name: str) -> dict[frozenset[tuple[str, str]], float]:
        # only command:slow's: a test process that imported tests/pytasks.py knows the limits it declares too
        return {labels: value for labels, value in named(samples, name).items() if labels in (concurrency, rate)}

    assert of_slow("pheanq_limit_places") == {concurrency: 2, rate: 5}
    assert of_slow("pheanq_limit_in_use") == {concurrency: 1, rate: 1}
    assert of_slow("pheanq_limit_waiting") == {concurrency: 2, rate: 2}


def test_a_run_ending_in_the_last_half_millisecond_of_a_second_is_not_a_second_longer(
        db_url: str, make_service: MakeService) -> None:
    """SQLite keeps times in milliseconds: strftime('%s') rounded '...51.999700' up to :52, and revision 0014's
    trigger counted that run a second too long (revision 0016)."""
    service = make_service(db_url)
    service.queue_task(TaskDescription("work"))
    task_id = finish_next(service, "pheanq", Status.WORKING)
    started = dt.datetime(2026, 12, 1, 8, 52, 51, 200000)
    with service.store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(
            status=Status.DONE.value, started=started, finished=started.replace(microsecond=999700)))
    samples = scrape(service.dispatch)
    assert sum(named(samples, "pheanq_task_run_seconds_sum").values()) == pytest.approx(0.7997, abs=1e-6)


def test_deleting_tasks_lowers_what_the_table_holds_never_the_totals(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv,
) -> None:
    service = make_service(db_url)
    for _ in range(5):
        service.queue_task(TaskDescription("work"), tube="billing")
    for status in (Status.DONE, Status.DONE, Status.DONE, Status.FAILED):
        finish_next(service, "billing", status)
    before = scrape(service.dispatch)
    assert sample(before, "pheanq_tasks_stored", tube="billing", status="done") == 3

    cleaned = pheanq(["task-cleanup", "--period", "0"], make_env(db_url), tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    with service.store.database.transaction() as conn:   # and SQL of someone else's
        conn.execute(task_table.delete().where(task_table.c.status == Status.FAILED.value))
    after = scrape(service.dispatch)

    assert sample(after, "pheanq_tasks_stored", tube="billing", status="done") == 0
    assert sample(after, "pheanq_tasks_stored", tube="billing", status="failed") == 0
    assert sample(after, "pheanq_tasks_stored", tube="billing", status="new") == 1
    for name in ("pheanq_tasks_total", "pheanq_task_run_seconds_count", "pheanq_task_run_seconds_sum",
                 "pheanq_task_run_seconds_bucket", "pheanq_task_queue_wait_seconds_count"):
        assert named(after, name) == named(before, name) != {}
    assert sample(after, "pheanq_tasks_total", tube="billing", task="work", outcome="done") == 3


def test_folds_at_once_beside_writers_add_each_end_once(db_url: str, make_service: MakeService) -> None:
    service = make_service(db_url)
    with folds_beside(db_url) as errors:
        for n in range(30):
            service.queue_many([TaskDescription("work") for _ in range(2)], tube=f"t{n % 3}")
            finish_next(service, f"t{n % 3}", Status.DONE if n % 4 else Status.FAILED)
    assert errors == []
    samples = scrape(service.dispatch)
    ended = {row.id: row for row in rows(service) if row.status in (Status.DONE, Status.FAILED)}
    assert sum(named(samples, "pheanq_tasks_total").values()) == len(ended) == 30
    assert sum(named(samples, "pheanq_task_run_seconds_count").values()) == 30
    assert sum(named(samples, "pheanq_task_queue_wait_seconds_count").values()) == 30
    assert sum(named(samples, "pheanq_task_run_seconds_sum").values()) == pytest.approx(
        sum(seconds(row.finished, row.started) for row in ended.values()), abs=1e-4)
    for tube in ("t0", "t1", "t2"):
        assert sample(samples, "pheanq_tasks_total", tube=tube, task="work", outcome="failed") == \
            sum(1 for row in ended.values() if row.tube == tube and row.status is Status.FAILED)


def test_a_scrape_answers_with_beanstalkd_stopped_and_with_the_database_gone(
    db_url: str, tmp_path: Path, make_service: MakeService, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    service.queue_task(TaskDescription("work"), tube="billing")
    finish_next(service, "billing", Status.DONE)
    beanstalkd.stop()
    samples = scrape(service.dispatch)
    assert sample(samples, "pheanq_beanstalkd_up") == 0
    assert sample(samples, "pheanq_database_up") == 1
    assert named(samples, "pheanq_beanstalkd_jobs") == {}
    assert sample(samples, "pheanq_tasks_total", tube="billing", task="work", outcome="done") == 1

    gone = Dispatcher(load_settings({"database_url": f"sqlite:///{tmp_path / 'missing' / 'pheanq.db'}",
                                     "beanstalkd": beanstalkd.address_text}, environ={}))
    try:
        samples = scrape(gone)
    finally:
        gone.close()
    # Each server is named, down, among the families; nothing else is said.
    assert samples == {("pheanq_database_up", frozenset()): 0, ("pheanq_beanstalkd_up", frozenset()): 0,
                       ("pheanq_beanstalkd_server_up", frozenset({("server", beanstalkd.address_text)})): 0}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    yield opened
    opened.close()


def test_a_move_that_is_not_an_attempt_s_end_observes_no_run_time(
    store: Store, db_url: str, make_service: MakeService,
) -> None:
    """A task cancelled before it ran, one that waited on a failed parent, a change of tube: ends and moves, but
    no attempt ran, so the histograms observe nothing; the ends are counted."""
    service = make_service(db_url)
    parent = service.queue_task(TaskDescription("work"), tube="billing")
    child = service.queue_task(TaskDescription("work"), tube="billing", after=[parent])
    idle = service.queue_task(TaskDescription("work"), tube="mail")
    finish_next(service, "billing", Status.FAILED)
    assert service.status_of(child) is Status.UPSTREAM_FAILED
    assert service.cancel_task(idle).cancelled
    with store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == parent).values(tube="elsewhere"))
    samples = scrape(service.dispatch)
    assert sample(samples, "pheanq_tasks_total", tube="billing", task="work", outcome="failed") == 1
    assert sample(samples, "pheanq_tasks_total", tube="billing", task="work", outcome="upstream_failed") == 1
    assert sample(samples, "pheanq_tasks_total", tube="mail", task="work", outcome="cancelled") == 1
    assert not any(dict(labels)["tube"] == "elsewhere" for labels in named(samples, "pheanq_tasks_total"))
    assert named(samples, "pheanq_task_run_seconds_count") == {frozenset({"tube": "billing", "task": "work"}
                                                                         .items()): 1}


def test_changes_noted_before_the_upgrade_are_counted_not_totalled(store: Store, db_url: str,
                                                                  make_service: MakeService) -> None:
    """Revision 0014 on a table with changes not folded yet: they keep counting; the totals start at the upgrade."""
    config = _alembic_config()
    with store.database.transaction() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0013")
    with store.database.transaction() as conn:  # written through revision 0011's triggers
        for status in ("new", "done"):
            conn.execute(sa.text("INSERT INTO pheanq_task (command, data, tube, status, priority, ttr, attempts, "
                                 "waiting_for, created, modified) VALUES ('work', '{}', 'billing', :status, 1024, "
                                 "60, 0, 0, :now, :now)"), {"status": status, "now": utc_now()})
    with store.database.transaction() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    service = make_service(db_url)
    service.queue_task(TaskDescription("work"), tube="billing")
    finish_next(service, "billing", Status.DONE)
    samples = scrape(service.dispatch)
    assert sample(samples, "pheanq_tasks_stored", tube="billing", status="done") == 2
    assert sample(samples, "pheanq_tasks_total", tube="billing", task="work", outcome="done") == 1
