"""Buried jobs: what a worker refused to run, why, and what an operator can do with it.

beanstalkd keeps a buried job but has nowhere to keep the reason, and it cannot list a tube's buried
jobs (only the next one, peek-buried). So the worker that buries a job records the reason and the
start of the body in `pheanq_buried` (bounded: see MAX_BURIED_RECORDS in limits); the list shows those
records that beanstalkd still holds as buried (checked with stats-job and peek, since job ids start again
from 1 after a restart without binlog), a page at a time in job id order, and counts the buried jobs that
have no record (buried by another client, or whose record was dropped). A record whose job beanstalkd no
longer holds as buried is forgotten whenever the list is read, and by the tender's reconciler.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput
from pheanq.limits import BODY_PREVIEW_BYTES, LISTING_PAGE, body_preview
from pheanq.storage.tables import BuriedRow

# `buried delete --all` goes job by job (peek-buried, delete); this bounds one call.
MAX_DELETE_ALL = 1_000_000


@dataclasses.dataclass(frozen=True)
class BuriedJob:
    job_id: int
    reason: str | None          # None: buried by something other than a pheanq worker
    buried: dt.datetime | None
    body: str


@dataclasses.dataclass(frozen=True)
class BuriedList:
    tube: str
    jobs: list[BuriedJob]       # one page, in job id order
    total: int                  # buried jobs beanstalkd counts in the tube, listed or not
    known: int                  # ... of which this listing can show (on this page or another)
    next_after: int | None      # the --after of the next page; None on the last

    @property
    def unlisted(self) -> int:
        """Buried jobs with no recorded reason beyond the one beanstalkd shows: they cannot be listed."""
        return max(0, self.total - self.known)

    def to_json(self) -> dict[str, object]:
        return {"tube": self.tube, "total": self.total, "unlisted": self.unlisted, "next_after": self.next_after,
                "jobs": [{"job_id": job.job_id, "reason": job.reason, "body": job.body,
                          "buried": job.buried.isoformat() if job.buried else None} for job in self.jobs]}


def list_buried(dispatch: Dispatcher, tube: str, after: int = 0, limit: int = LISTING_PAGE) -> BuriedList:
    """The buried jobs of the tube with job ids above `after`, at most `limit` of them; records of jobs
    beanstalkd no longer holds as buried are forgotten on the way."""
    jobs = [BuriedJob(record.job_id, record.reason, record.buried, record.body)
            for record in _current_records(dispatch, tube)]
    stats = dispatch.beanstalkd.tube_stats(tube) or {}
    total = int(stats.get("current-jobs-buried", 0))
    if total > len(jobs):
        # beanstalkd shows only the next buried job; list it when it is one without a record.
        listed = {job.job_id for job in jobs}
        first = dispatch.beanstalkd.peek_buried(tube)
        if first is not None and first.id not in listed:
            jobs.append(BuriedJob(first.id, None, None, body_preview(first.body)))
    jobs.sort(key=lambda job: job.job_id)
    page = [job for job in jobs if job.job_id > after][:limit + 1]
    next_after = page[limit - 1].job_id if len(page) > limit else None
    return BuriedList(tube, page[:limit], max(total, len(jobs)), len(jobs), next_after)


def tubes_with_buried(dispatch: Dispatcher) -> list[str]:
    """The tubes in which beanstalkd holds buried jobs, by name."""
    return [tube for tube in sorted(dispatch.beanstalkd.tubes())
            if int((dispatch.beanstalkd.tube_stats(tube) or {}).get("current-jobs-buried", 0))]


def prune_buried(dispatch: Dispatcher, tube: str) -> int:
    """Forget the records of the tube's jobs that beanstalkd no longer holds as buried; how many."""
    before = len(dispatch.store.admin.list_buried(dispatch.beanstalkd.server, tube))
    return before - len(_current_records(dispatch, tube))


def kick_buried(dispatch: Dispatcher, tube: str, job_ids: list[int] | None) -> int:
    """Make buried jobs of the tube ready again (all of them when `job_ids` is None); how many were kicked."""
    if job_ids is not None:
        kicked = [job_id for job_id in _checked(dispatch, tube, job_ids) if dispatch.beanstalkd.kick_job(job_id)]
        dispatch.store.admin.forget_buried(dispatch.beanstalkd.server, tube, kicked)
        return len(kicked)
    listed = [record.job_id for record in _current_records(dispatch, tube)]
    buried = int((dispatch.beanstalkd.tube_stats(tube) or {}).get("current-jobs-buried", 0))
    # `kick` takes delayed jobs when no job is buried: never call it with nothing buried.
    count = dispatch.beanstalkd.kick(tube, buried) if buried else 0
    dispatch.store.admin.forget_buried(dispatch.beanstalkd.server, tube, listed)
    return count


def delete_buried(dispatch: Dispatcher, tube: str, job_ids: list[int] | None) -> list[int]:
    """Delete buried jobs of the tube (all of them when `job_ids` is None); the ids deleted.

    A task whose job is deleted here stays in the table as it was: if it still has to run, the
    reconciler sends it again."""
    deleted: list[int] = []
    if job_ids is None:
        while len(deleted) < MAX_DELETE_ALL and (job := dispatch.beanstalkd.peek_buried(tube)) is not None:
            if dispatch.beanstalkd.delete(job.id):
                deleted.append(job.id)
    else:
        deleted = [job_id for job_id in _checked(dispatch, tube, job_ids) if dispatch.beanstalkd.delete(job_id)]
    dispatch.store.admin.forget_buried(dispatch.beanstalkd.server, tube, deleted)
    return deleted


def _checked(dispatch: Dispatcher, tube: str, job_ids: list[int]) -> list[int]:
    for job_id in job_ids:
        info = dispatch.beanstalkd.inspect(job_id)
        if info is None or info.tube != tube or info.state != "buried":
            where = "no such job" if info is None else f"it is {info.state} in tube {info.tube}"
            raise InvalidInput(f"job {job_id} is not a buried job of tube {tube} ({where})")
    return job_ids


def _current_records(dispatch: Dispatcher, tube: str) -> list[BuriedRow]:
    """The tube's records whose job beanstalkd still holds as buried, with the same body; the others are
    forgotten (the job was kicked or deleted by another client, or lost in a restart without binlog)."""
    current: list[BuriedRow] = []
    gone: list[int] = []
    for record in dispatch.store.admin.list_buried(dispatch.beanstalkd.server, tube):
        info = dispatch.beanstalkd.inspect(record.job_id)
        if info is None or info.state != "buried" or info.tube != tube or not _same_body(info.body, record.body):
            gone.append(record.job_id)
        else:
            current.append(record)
    if gone:
        dispatch.store.admin.forget_buried(dispatch.beanstalkd.server, tube, gone)
    return current


def _same_body(body: bytes, recorded: str) -> bool:
    # A record written before the preview was shortened holds more of the body: compare what both have.
    preview = body_preview(body)
    return recorded == preview or (len(body) > BODY_PREVIEW_BYTES and recorded.startswith(preview))
