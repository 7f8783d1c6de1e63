"""Buried jobs' records stay bounded however many junk jobs a tube gets, the listing pages, and records of jobs
beanstalkd no longer holds are forgotten.

The junk goes into the tube with a plain greenstalk client and a real `pheanq task-worker` buries it, recording
each reason the way it does in production; `pheanq buried` runs as a real process. The flood runs on SQLite
(thousands of burials through a worker take half a minute on a shared database server); the statement that
keeps the cap, and the pruning, run on every database.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import greenstalk
import sqlalchemy as sa
from support import Beanstalkd, WorkerProcess, one_error_line, pheanq, wait_for

from pheanq.limits import BODY_PREVIEW_BYTES, LISTING_PAGE, MAX_BURIED_REASON, MAX_BURIED_RECORDS, body_preview
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tables import BuriedRow, buried_table

TUBE = "pheanq"  # the default tube
# More junk than the records kept, so that the cap drops some; each body 2 KB with bytes that are not UTF-8.
JUNK_JOBS = MAX_BURIED_RECORDS + 300
# The documented bound of the records' text: MAX_BURIED_RECORDS records of at most 500 + 500 characters.
MAX_RECORDED_CHARACTERS = MAX_BURIED_RECORDS * (BODY_PREVIEW_BYTES + MAX_BURIED_REASON)

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def junk(n: int) -> bytes:
    return b"junk %05d \xff\xfe " % n + bytes(range(32, 127)) * 21


def buried_count(server: Beanstalkd) -> int:
    with greenstalk.Client(server.address, encoding=None, use=TUBE, watch=TUBE) as client:
        try:
            return int(client.stats_tube(TUBE)["current-jobs-buried"])
        except greenstalk.NotFoundError:
            return 0


def records(service: TaskQueueService) -> list[Any]:
    with service.store.database.transaction() as conn:
        return list(conn.execute(sa.select(buried_table).order_by(buried_table.c.job_id)))


def sqlite_used_bytes(url: str) -> int:
    """The bytes an SQLite database's pages hold, free pages left out (the file never shrinks by itself)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
    finally:
        engine.dispose()
    return int((pages - free) * size)


def listing(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = pheanq(["buried", "--use-tube", TUBE, *args], env, cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_a_flood_of_junk_keeps_the_buried_records_within_their_caps_and_the_listing_pages_through_them_all(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    env = make_env(sqlite_url)
    used_before = sqlite_used_bytes(sqlite_url)
    worker = start_worker([], env)
    worker.wait_line("READY")
    with greenstalk.Client(beanstalkd.address, encoding=None, use=TUBE) as client:
        job_ids = [client.put(junk(n)) for n in range(JUNK_JOBS)]

    wait_for(lambda: buried_count(beanstalkd) == JUNK_JOBS or worker.process.poll() is not None, 120,
             "every junk job buried")
    assert worker.lines == ["READY"], worker.log[-3000:]
    # The last job's record is written just after its burial: wait for the records to settle.
    wait_for(lambda: records(service)[-1].job_id == job_ids[-1], 10, "the last junk job's record")

    kept = records(service)
    assert len(kept) == MAX_BURIED_RECORDS
    assert [row.job_id for row in kept] == job_ids[-MAX_BURIED_RECORDS:]  # the newest are kept
    assert all(len(row.body) <= BODY_PREVIEW_BYTES and len(row.reason) <= MAX_BURIED_REASON for row in kept)
    assert sum(len(row.body) + len(row.reason) for row in kept) <= MAX_RECORDED_CHARACTERS
    grown = sqlite_used_bytes(sqlite_url) - used_before
    print(f"\n{JUNK_JOBS} junk jobs of {len(junk(0))} bytes grew the SQLite database by {grown} bytes")
    assert grown < 2 * MAX_RECORDED_CHARACTERS

    # One page by default, with the way to the next; beanstalkd's next buried job (the first, whose record
    # was dropped) is shown without a reason, and the rest without a record are counted.
    text = listing(env, tmp_path)
    lines = text.splitlines()
    assert lines[0] == f"tube {TUBE}: {JUNK_JOBS} buried job(s)"
    assert len([line for line in lines if line.startswith("  job ")]) == LISTING_PAGE
    assert len(lines) == 1 + 2 * LISTING_PAGE + 2, text[-2000:]
    shown = [int(line.split()[1]) for line in lines if line.startswith("  job ")]
    assert shown == [job_ids[0], *job_ids[-MAX_BURIED_RECORDS:][:LISTING_PAGE - 1]]
    assert lines[-2] == f"  ... more on the next page: pheanq buried --use-tube {TUBE} --after {shown[-1]}"
    unlisted = JUNK_JOBS - MAX_BURIED_RECORDS - 1
    assert lines[-1].startswith(f"  ... and {unlisted} more without a recorded reason")

    # --json pages exactly, through every listable job once.
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page: dict[str, Any] = json.loads(listing(env, tmp_path, "--json", "--limit", "700", "--after", str(after)))
        assert len(page["jobs"]) <= 700
        assert (page["total"], page["unlisted"]) == (JUNK_JOBS, unlisted)
        seen += page["jobs"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
        assert after == page["jobs"][-1]["job_id"]
    assert [job["job_id"] for job in seen] == [job_ids[0], *job_ids[-MAX_BURIED_RECORDS:]]
    by_id = {job["job_id"]: job for job in seen}
    assert by_id[job_ids[0]]["reason"] is None
    assert by_id[job_ids[-1]]["body"] == body_preview(junk(JUNK_JOBS - 1))
    assert "not JSON" in by_id[job_ids[-1]]["reason"]


def test_records_of_jobs_that_beanstalkd_no_longer_holds_are_forgotten_when_the_list_is_read(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    beanstalkd: Beanstalkd,
) -> None:
    service = make_service(db_url)
    env = make_env(db_url)
    worker = start_worker([], env)
    worker.wait_line("READY")
    with greenstalk.Client(beanstalkd.address, encoding=None, use=TUBE, watch=TUBE) as client:
        job_ids = [client.put(junk(n)) for n in range(4)]
        wait_for(lambda: len(records(service)) == 4, 20, "four junk jobs buried and recorded")
        # Another client deletes one and kicks one (which the worker buries again, with a new record).
        client.delete(job_ids[0])
        worker.stop()
        client.kick_job(job_ids[1])
    assert [row.job_id for row in records(service)] == job_ids

    data = json.loads(listing(env, tmp_path, "--json"))
    assert [job["job_id"] for job in data["jobs"]] == job_ids[2:]
    assert [row.job_id for row in records(service)] == job_ids[2:]


def test_a_record_replaces_the_earlier_one_of_its_job_and_the_oldest_beyond_the_cap_are_dropped(
    db_url: str, make_service: MakeService,
) -> None:
    admin = make_service(db_url).store.admin
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    def record(job_id: int, reason: str, server: str = "127.0.0.1:1") -> None:
        admin.record_buried(BuriedRow(server, TUBE, job_id, reason, "body", now), keep=3)

    for job_id in (5, 6, 7):
        record(job_id, "first")
    record(6, "again")  # buried again after a kick: one record, the newest
    assert [(row.job_id, row.reason) for row in admin.list_buried("127.0.0.1:1", TUBE)] == \
        [(5, "first"), (6, "again"), (7, "first")]
    record(1, "on another server", server="127.0.0.1:2")  # the cap counts every server's records
    assert [row.job_id for row in admin.list_buried("127.0.0.1:1", TUBE)] == [6, 7]
    record(8, "newest")  # the oldest record goes: job 7's (job 6's was written after it)
    assert [row.job_id for row in admin.list_buried("127.0.0.1:1", TUBE)] == [6, 8]
    assert [row.job_id for row in admin.list_buried("127.0.0.1:2", TUBE)] == [1]


def test_a_page_size_out_of_its_bounds_or_a_negative_after_is_a_one_line_error(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv,
) -> None:
    env = make_env(sqlite_url)
    for args, named in ((["--limit", "0"], "--limit"), (["--limit", str(MAX_BURIED_RECORDS + 1)], "--limit"),
                        (["--after", "-1"], "--after")):
        result = pheanq(["buried", *args], env, tmp_path)
        assert result.returncode == 2, result
        line = one_error_line(result)
        assert named in line and "is not in the range" in line, line
