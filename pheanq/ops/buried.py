"""Buried jobs: what a worker refused to run, why, and what an operator can do with it.

beanstalkd keeps a buried job but has nowhere to keep the reason, and it cannot list a tube's buried
jobs (only the next one, peek-buried). So the worker that buries a job records the reason and the
start of the body in `pheanq_buried`; the list shows those records that beanstalkd still holds as
buried (checked with stats-job and peek, since job ids start again from 1 after a restart without
binlog), and counts the buried jobs that have no record (buried by another client).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput
from pheanq.limits import BODY_PREVIEW_BYTES

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
    jobs: list[BuriedJob]
    total: int                  # buried jobs beanstalkd counts in the tube, listed or not

    @property
    def unlisted(self) -> int:
        """Buried jobs with no recorded reason beyond the one beanstalkd shows: they cannot be listed."""
        return max(0, self.total - len(self.jobs))

    def to_json(self) -> dict[str, object]:
        return {"tube": self.tube, "total": self.total, "unlisted": self.unlisted,
                "jobs": [{"job_id": job.job_id, "reason": job.reason, "body": job.body,
                          "buried": job.buried.isoformat() if job.buried else None} for job in self.jobs]}


def list_buried(dispatch: Dispatcher, tube: str) -> BuriedList:
    jobs: list[BuriedJob] = []
    for record in dispatch.store.admin.list_buried(dispatch.beanstalkd.server, tube):
        info = dispatch.beanstalkd.inspect(record.job_id)
        if info is None or info.state != "buried" or info.tube != tube or not _same_body(info.body, record.body):
            continue
        jobs.append(BuriedJob(record.job_id, record.reason, record.buried, record.body))
    stats = dispatch.beanstalkd.tube_stats(tube) or {}
    total = int(stats.get("current-jobs-buried", 0))
    if total > len(jobs):
        # beanstalkd shows only the next buried job; list it when it is one without a record.
        listed = {job.job_id for job in jobs}
        first = dispatch.beanstalkd.peek_buried(tube)
        if first is not None and first.id not in listed:
            jobs.append(BuriedJob(first.id, None, None, first.body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace")))
    return BuriedList(tube, jobs, max(total, len(jobs)))


def kick_buried(dispatch: Dispatcher, tube: str, job_ids: list[int] | None) -> int:
    """Make buried jobs of the tube ready again (all of them when `job_ids` is None); how many were kicked."""
    if job_ids is not None:
        kicked = [job_id for job_id in _checked(dispatch, tube, job_ids) if dispatch.beanstalkd.kick_job(job_id)]
        dispatch.store.admin.forget_buried(dispatch.beanstalkd.server, tube, kicked)
        return len(kicked)
    listed = [job.job_id for job in list_buried(dispatch, tube).jobs]
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


def _same_body(body: bytes, recorded: str) -> bool:
    return body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd") == recorded
