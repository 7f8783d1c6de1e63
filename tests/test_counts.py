"""The task counts the database keeps (revision 0011, pheanq.storage.counts) are the table's own counts after
anything that writes tasks: pheanq's statements, SQL of someone else's, bulk inserts and deletes, folds in pages,
folds running at once beside writers, and an upgrade of a table that already held tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from support import folds_beside

from pheanq.description import TaskDescription
from pheanq.ops.reconcile import reconcile
from pheanq.producer.service import TaskQueueService
from pheanq.status import Status
from pheanq.storage import Store, counts
from pheanq.storage.migrate import _alembic_config
from pheanq.storage.tables import count_change_table, count_table, task_table


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    yield opened
    opened.close()


def test_the_counts_follow_every_write_of_the_task_table(db_url: str, store: Store,
                                                          make_service: Callable[..., TaskQueueService]) -> None:
    service = make_service(db_url)
    ids = service.queue_many([TaskDescription("work", [str(n)]) for n in range(30)])
    service.queue_task(TaskDescription("invoice"), tube="billing")
    assert counts.count_tasks(store.database) == _counted(store) == [("billing", Status.NEW, 1),
                                                                      ("pheanq", Status.NEW, 30)]
    c = task_table.c
    with store.database.transaction() as conn:  # writes that are not pheanq's own: the triggers see them all
        conn.execute(task_table.update().where(c.id.in_(ids[:10])).values(status=Status.DONE.value))
        conn.execute(task_table.update().where(c.id.in_(ids[10:15])).values(status=Status.FAILED.value))
        conn.execute(task_table.update().where(c.id.in_(ids[15:17])).values(tube="billing"))
        conn.execute(task_table.update().where(c.id.in_(ids[17:20])).values(priority=5))  # neither status nor tube
        conn.execute(task_table.delete().where(c.id.in_(ids[:4])))
    assert counts.count_tasks(store.database) == _counted(store) == [
        ("billing", Status.NEW, 3), ("pheanq", Status.DONE, 6), ("pheanq", Status.FAILED, 5),
        ("pheanq", Status.NEW, 13)]
    with store.database.transaction() as conn:
        conn.execute(task_table.delete())
    assert counts.count_tasks(store.database) == _counted(store) == []


def test_a_fold_empties_the_changes_and_keeps_the_counts(store: Store,
                                                        make_service: Callable[..., TaskQueueService],
                                                        db_url: str) -> None:
    service = make_service(db_url)
    service.queue_many([TaskDescription("work") for _ in range(20)])
    for n in range(7):
        service.queue_task(TaskDescription("work"), tube=f"tube-{n % 3}")
    assert _changes(store) > 0
    counts.fold(store.database, page=2)   # pages of two ids: many transactions
    assert _changes(store) == 0
    assert counts.count_tasks(store.database) == _counted(store)
    assert sum(n for _, _, n in counts.count_tasks(store.database)) == 27
    with store.database.transaction() as conn:
        assert conn.execute(sa.select(sa.func.sum(count_table.c.n))).scalar_one() == 27


def test_folds_at_once_beside_writers_count_each_change_once(store: Store, db_url: str,
                                                            make_service: Callable[..., TaskQueueService]) -> None:
    service = make_service(db_url)
    with folds_beside(db_url) as errors:
        for n in range(40):
            service.queue_many([TaskDescription("work") for _ in range(5)], tube=f"t{n % 4}")
            service.queue_task(TaskDescription("work"), tube=f"t{n % 4}")
    assert errors == []
    assert counts.count_tasks(store.database) == _counted(store)
    assert sum(n for _, _, n in counts.count_tasks(store.database)) == 240


def test_only_a_move_notes_a_change(store: Store, db_url: str, make_service: Callable[..., TaskQueueService]) -> None:
    [task_id] = make_service(db_url).queue_many([TaskDescription("work")])
    counts.fold(store.database)
    with store.database.transaction() as conn:   # a job id and a priority: neither the status nor the tube
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(job_id=7, priority=3))
    assert _changes(store) == 0
    with store.database.transaction() as conn:
        conn.execute(task_table.update().where(task_table.c.id == task_id).values(status=Status.WORKING.value))
    assert _changes(store) == 2


def test_the_upgrade_counts_the_tasks_a_table_already_holds(store: Store) -> None:
    config = _alembic_config()
    with store.database.transaction() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0010")
    assert not sa.inspect(store.database.engine).has_table("pheanq_count")
    table = sa.Table("pheanq_task", sa.MetaData(), autoload_with=store.database.engine)
    now = sa.func.current_timestamp()
    rows = [{"command": "work", "data": "{}", "tube": tube, "status": status, "priority": 1024, "ttr": 60,
             "attempts": 0, "created": now, "modified": now}
            for tube, status, n in [("a", "done", 5), ("a", "new", 2), ("b", "failed", 3)] for _ in range(n)]
    with store.database.transaction() as conn:
        for row in rows:
            conn.execute(table.insert().values(**row))
    with store.database.transaction() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert counts.count_tasks(store.database) == [("a", Status.DONE, 5), ("a", Status.NEW, 2),
                                                  ("b", Status.FAILED, 3)]
    assert _changes(store) == 0


def _counted(store: Store) -> list[tuple[str, Status, int]]:
    """The counts of the table itself."""
    c = task_table.c
    with store.database.transaction() as conn:
        return [(tube, Status(status), int(n)) for tube, status, n in conn.execute(
            sa.select(c.tube, c.status, sa.func.count()).group_by(c.tube, c.status).order_by(c.tube, c.status))]


def _changes(store: Store) -> int:
    with store.database.transaction() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(count_change_table)).scalar_one())



def test_a_reconcile_pass_folds_the_changes(store: Store, db_url: str,
                                            make_service: Callable[..., TaskQueueService]) -> None:
    service = make_service(db_url)
    service.queue_many([TaskDescription("work") for _ in range(12)])
    assert _changes(store) > 0
    reconcile(service.dispatch, "pheanq")
    assert _changes(store) == 0
    assert counts.count_tasks(store.database) == [("pheanq", Status.NEW, 12)]
