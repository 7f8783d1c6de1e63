"""What keeps the listings fast on a big table (issue 13): the reconciler's listing reads the unended tasks through
ix_pheanq_task_pending — on PostgreSQL and SQLite a partial index that holds none of the history — and the index's
condition is exactly pheanq's statuses of an unended task. Each test asks the real database for its plan of the
statement the store really runs; how fast that is, is scripts/bench-listings' business."""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import DATABASES

from pheanq.clock import utc_now
from pheanq.status import PENDING
from pheanq.storage import Store
from pheanq.storage.tables import PENDING_ROW, task_table
from pheanq.storage.tasks import NewTask

PENDING_INDEX = "ix_pheanq_task_pending"


def test_the_pending_index_condition_names_every_unended_status_and_the_migration_made_it_so() -> None:
    frozen = importlib.import_module("pheanq.migrations.versions.0010_pending_index")
    assert str(PENDING_ROW) == frozen.PENDING_ROW
    assert str(PENDING_ROW) == "status IN (" + ", ".join(f"'{status.value}'" for status in sorted(PENDING)) + ")"


def test_the_migration_made_the_pending_index_partial_where_the_database_can(db_url: str) -> None:
    store = Store(db_url)
    try:
        [index] = [index for index in sa.inspect(store.database.engine).get_indexes("pheanq_task")
                   if index["name"] == PENDING_INDEX]
        assert index["column_names"] == ["status", "id"]
        with store.database.transaction() as conn:
            if store.database.engine.dialect.name == "postgresql":
                definition = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                                          {"name": PENDING_INDEX}).scalar_one()
                assert "WHERE" in definition and "'new'" in definition and "'done'" not in definition
            elif store.database.engine.dialect.name == "sqlite":
                definition = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :name"),
                                          {"name": PENDING_INDEX}).scalar_one()
                assert definition.endswith(f"WHERE {PENDING_ROW}")
    finally:
        store.close()


# MariaDB/MySQL have no partial index: the listing there reads (status, id) of every row, so only the databases
# with one are asked (a parametrization, not a skip).
@pytest.mark.parametrize("db_url", [kind for kind in DATABASES if kind != "mysql"], indirect=True)
@pytest.mark.parametrize("tube", [None, "mail"])
def test_the_reconcile_listing_reads_the_unended_tasks_through_the_pending_index(db_url: str,
                                                                                 tube: str | None) -> None:
    store = Store(db_url)
    kind = store.database.engine.dialect.name
    try:
        for status_tube in ("pheanq", "mail"):
            store.tasks.insert_task(NewTask("cmd", "{}", status_tube, 1, 1))
        now = utc_now()
        with statements_run(store) as seen:
            store.tasks.tasks_to_reconcile(tube, 0, 500, now - dt.timedelta(seconds=20), now)
        [(statement, parameters)] = [(sql, params) for sql, params in seen if "pheanq_task" in sql]
        plan = explain(store, statement, parameters)
        # Every read of the table is an index search bounded by a status (never the history); with a tube, SQLite
        # may as well search (tube, status, rowid) in ix_pheanq_task_tube_status, which reads no history either.
        if kind == "sqlite":
            reads = [line for line in plan.splitlines() if "pheanq_task" in line]
            assert reads and all(line.startswith("SEARCH") and "status=?" in line for line in reads), plan
        else:
            assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
        if tube is None or kind == "postgresql":
            assert PENDING_INDEX in plan, plan
    finally:
        store.close()


@contextmanager
def statements_run(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SQL text and parameters of every statement the store runs meanwhile, as its driver got them."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(store.database.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(store.database.engine, "before_cursor_execute", record)


def explain(store: Store, statement: str, parameters: Any) -> str:
    """The database's plan of the statement, one line per step. PostgreSQL is told to shun sequential scans: on a
    test's near-empty table it would rightly prefer one, and the question is whether the index can serve."""
    with store.database.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        if store.database.engine.dialect.name == "postgresql":
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            lines = [row[0] for row in cursor.fetchall()]
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            lines = [row[-1] for row in cursor.fetchall()]
        cursor.close()
        conn.rollback()
    return "\n".join(lines)


@pytest.mark.parametrize("db_url", [kind for kind in DATABASES if kind != "mysql"], indirect=True)
def test_the_progress_of_running_tasks_is_read_through_the_pending_index(db_url: str) -> None:
    """`pheanq status` shows the progress of the first running tasks in id order: without the pending index's
    condition in the query, SQLite walked the whole table by id to find them (1.3 s on 10 M rows)."""
    store = Store(db_url)
    try:
        store.tasks.insert_task(NewTask("cmd", "{}", "pheanq", 1, 1))
        with statements_run(store) as seen:
            store.tasks.progress_of_working(20)
        [(statement, parameters)] = [(sql, params) for sql, params in seen if "pheanq_task" in sql]
        plan = explain(store, statement, parameters)
        assert PENDING_INDEX in plan and "SCAN pheanq_task" not in plan and "Seq Scan" not in plan, plan
    finally:
        store.close()


@pytest.mark.parametrize("db_url", [kind for kind in DATABASES if kind != "mysql"], indirect=True)
def test_the_last_minutes_ends_are_read_through_the_status_finished_index(db_url: str) -> None:
    """`pheanq status --watch` counts the tasks ended in the last minute: grouped by the tube column, SQLite walked
    the whole (tube, status) index for it (17 s on 10 M rows) instead of the last minute of (status, finished)."""
    store = Store(db_url)
    try:
        # A history of ended tasks, analysed: the planner's statistics are what led it astray on a big table.
        _analysed_history(store, days_ago=1)
        with statements_run(store) as seen:
            store.tasks.finished_since(utc_now() - dt.timedelta(minutes=1))
        [(statement, parameters)] = [(sql, params) for sql, params in seen if "pheanq_task" in sql]
        plan = explain(store, statement, parameters)
        assert "ix_pheanq_task_status_finished" in plan and "ix_pheanq_task_tube_status" not in plan, plan
    finally:
        store.close()


@pytest.mark.parametrize("db_url", [kind for kind in DATABASES if kind != "mysql"], indirect=True)
def test_one_batch_s_newest_tasks_are_read_through_the_batch_index(db_url: str) -> None:
    """The newest page of one batch's tasks: through the (batch_id, id) index, not the primary key walked from the
    newest task until the batch's turn (1.6 s on PostgreSQL, a batch in the middle of 10 M rows)."""
    from pheanq.storage.listings import TaskFilter

    store = Store(db_url)
    try:
        store.tasks.insert_task(NewTask("cmd", "{}", "pheanq", 1, 1))
        with statements_run(store) as seen:
            store.listings.list_tasks(TaskFilter(batch_id=7), None, 51)
        [(statement, parameters)] = [(sql, params) for sql, params in seen if "pheanq_task" in sql]
        plan = explain(store, statement, parameters)
        assert "ix_pheanq_task_batch_id" in plan and "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


@pytest.mark.parametrize("db_url", [kind for kind in DATABASES if kind != "mysql"], indirect=True)
@pytest.mark.parametrize("tube", [None, "tube-1"])
def test_the_charts_read_each_bucket_as_a_range_of_the_status_finished_index(db_url: str, tube: str | None) -> None:
    """The overview's charts count each bucket's ends and sample its waits in a range of (status, finished), with a
    tube too: through (tube, status), a bucket would cost the tube's whole history."""
    store = Store(db_url)
    try:
        _analysed_history(store, days_ago=3)
        now = utc_now()
        buckets = [(now - dt.timedelta(minutes=2), now - dt.timedelta(minutes=1)),
                   (now - dt.timedelta(minutes=1), now)]
        with statements_run(store) as seen:
            store.activity.ends_per_bucket(buckets, tube)
            store.activity.waits(buckets, 50, tube)
        for statement, parameters in [(sql, params) for sql, params in seen if "pheanq_task" in sql]:
            plan = explain(store, statement, parameters)
            assert "ix_pheanq_task_status_finished" in plan and "ix_pheanq_task_tube_status" not in plan, plan
            assert "Seq Scan" not in plan and "SCAN pheanq_task" not in plan, plan
    finally:
        store.close()


def _analysed_history(store: Store, days_ago: int) -> None:
    """3000 tasks that ended `days_ago` days ago in four tubes, and the planner's statistics of them."""
    long_ago = utc_now() - dt.timedelta(days=days_ago)
    with store.database.transaction() as conn:
        conn.execute(task_table.insert(), [
            {"command": "cmd", "data": "{}", "tube": f"tube-{n % 4}", "status": "done", "priority": 1, "ttr": 1,
             "attempts": 1, "created": long_ago, "modified": long_ago, "started": long_ago, "finished": long_ago}
            for n in range(3000)])
        conn.execute(sa.text("ANALYZE"))
