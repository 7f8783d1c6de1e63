"""Failed tasks back to `restarted`, a page at a time: the table's side of regenerating a whole selection
(`pheanq tasks --regenerate`; one task at a time: TaskStatements.restart_task, whose rules a page keeps).

A page is one short transaction of a few statements whatever its size: the failed rows are read (locked, in id
order), the tasks that may not be restarted are left out — those of a finished batch, and those whose unique key
another task holds now — and the others are moved by compare-and-set UPDATEs, one per distinct (retry policy,
log entry), which is one for a page of alike tasks. Their batches are counted up last, as every writer takes a
batch row. The jobs are put afterwards (pheanq.dispatch); a task left `restarted` without a job is sent by the
reconciler.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pheanq import retry, tasklog
from pheanq.clock import utc_now
from pheanq.errors import StoreUnavailable
from pheanq.status import Status, sources_of
from pheanq.storage.engine import Database
from pheanq.storage.job_ids import note_job_ids
from pheanq.storage.tables import batch_table, task_table

_c, _b = task_table.c, batch_table.c
_FAILED = [status.value for status in sources_of(Status.RESTARTED)]
# What decides whether and how a failed task is restarted; read (and locked) before it is.
_FACTS = sa.select(_c.id, _c.status, _c.retry, _c.attempts, _c.batch_id, _c.unique_key)
_JOB_MADE_OF = sa.select(_c.status, _c.modified, _c.id, _c.data, _c.tube, _c.priority, _c.ttr, _c.nonce)
# A page whose write met a concurrent change (a batch finished, a unique key taken) is read and written again.
_TRIES = 5


@dataclasses.dataclass(frozen=True)
class RestartedTask:
    """A task now `restarted`, without a job: what its job is made of."""

    id: int
    data: str
    tube: str
    priority: int
    ttr: int
    nonce: str | None


@dataclasses.dataclass(frozen=True)
class RestartPage:
    """What one page's transaction did."""

    restarted: list[RestartedTask]
    not_failed: list[int]               # not failed (or gone) when the page was written: left as they are
    refused: dict[int, str]             # failed, but may not run again: why


class _ChangedMeanwhile(Exception):
    """A batch finished, or a unique key was taken, between the page's read and its write."""


class RestartStatements:
    """The page-wise moves of failed tasks to `restarted`, and the job ids of their new jobs."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def restart_tasks(self, task_ids: list[int]) -> RestartPage:
        """Move those of `task_ids` that are failed to `restarted` in one transaction (see the module's text)."""
        for _ in range(_TRIES):
            try:
                return self._restart_page(task_ids)
            except (_ChangedMeanwhile, IntegrityError):
                continue
        raise StoreUnavailable(f"{len(task_ids)} task(s) from {min(task_ids)} to {max(task_ids)}: their batches "
                               "or unique keys kept changing while they were regenerated; try again")

    def record_job_ids(self, pairs: list[tuple[int, int]]) -> None:
        """Note (task id, job id) pairs in one transaction, each on a row still `restarted` without a job (one that
        moved on, claimed or cancelled, keeps what it has)."""
        if pairs:
            with self.database.transaction() as conn:
                note_job_ids(conn, pairs, Status.RESTARTED)

    def _restart_page(self, task_ids: list[int]) -> RestartPage:
        now = utc_now()
        with self.database.transaction() as conn:
            # Locked by primary key in id order, as cancel_tasks does: no index range of other tasks is locked (and
            # no planner walks the failed tasks' index for a few ids).
            facts = [row for row in conn.execute(_FACTS.where(_c.id.in_(task_ids)).order_by(_c.id).with_for_update())
                     if row.status in _FAILED]
            batch_ids = sorted({row.batch_id for row in facts if row.batch_id is not None})
            open_batches: dict[int, int | None] = {batch_id: catch_id for batch_id, catch_id in conn.execute(
                sa.select(_b.id, _b.catch_id).where(_b.id.in_(batch_ids), _b.finished.is_(None)))} if batch_ids else {}
            keys = sorted({row.unique_key for row in facts if row.unique_key is not None})
            held = set(conn.execute(sa.select(_c.unique_live).where(_c.unique_live.in_(keys))).scalars()) \
                if keys else set()
            refused: dict[int, str] = {}
            moves: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
            # Newest first, as a selection is taken: of failed tasks that share a free unique key, the newest takes
            # it, and the others find it held, as they would on a later page.
            for row in reversed(facts):
                if row.batch_id is not None and row.batch_id not in open_batches:
                    refused[row.id] = f"its batch {row.batch_id} has finished"
                elif row.unique_key is not None and row.unique_key in held:
                    refused[row.id] = "another task holds its unique key now"
                else:
                    if row.unique_key is not None:
                        held.add(row.unique_key)
                    caught = row.batch_id if row.batch_id is not None and open_batches[row.batch_id] is not None \
                        else None
                    moves[_regenerated(row.retry, row.attempts, now, caught)].append(row.id)
            for (policy, entry), ids in moves.items():
                conn.execute(task_table.update().where(_c.id.in_(ids), _c.status.in_(_FAILED))
                             .values(status=Status.RESTARTED.value, job_id=None, worker=None, exit_code=None,
                                     started=None, finished=None, run_at=None, modified=now,
                                     unique_live=_c.unique_key, retry=policy,
                                     log=sa.func.coalesce(_c.log, "") + entry))
            # SQLite locks no row and reads before its first write outside the transaction: what the UPDATEs
            # changed is read back (by primary key; the status and time are checked here), not assumed.
            moved = [task_id for ids in moves.values() for task_id in ids]
            restarted = [RestartedTask(*found[2:]) for found in conn.execute(
                _JOB_MADE_OF.where(_c.id.in_(moved)).order_by(_c.id))
                if found.status == Status.RESTARTED.value and found.modified == now] if moved else []
            batch_of = {row.id: row.batch_id for row in facts}
            joining = collections.Counter(batch_of[task.id] for task in restarted if batch_of[task.id] is not None)
            for batch_id, count in sorted(joining.items()):
                if conn.execute(batch_table.update().where(_b.id == batch_id, _b.finished.is_(None))
                                .values(unfinished=_b.unfinished + count, failures=_b.failures - count)
                                ).rowcount == 0:
                    raise _ChangedMeanwhile  # rolls the page back; its next read leaves that batch's tasks out
        taken = {task.id for task in restarted} | set(refused)
        return RestartPage(restarted, [task_id for task_id in task_ids if task_id not in taken], refused)


@functools.lru_cache(maxsize=64)
def _regenerated(policy: str | None, attempts: int, now: dt.datetime, caught_by_batch: int | None) -> tuple[str, str]:
    """The retry policy and the log entry of a task regenerated after `attempts` attempts (the tasks of a page
    mostly share them: worked out once)."""
    regenerated = retry.regenerated(policy, attempts)
    return regenerated, tasklog.regenerated(*retry.allowed_attempts(regenerated), now, caught_by_batch)
