"""What the dispatcher writes and ends: a recorded task's job to put, a claimed task, one attempt at a task."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

from pheanq.body import decode_data
from pheanq.description import TaskDescription
from pheanq.storage.tables import TaskRow


@dataclasses.dataclass(frozen=True)
class PlannedJob:
    """A recorded task's job, as it is to be put into its tube."""

    task_id: int
    description: TaskDescription
    tube: str
    priority: int
    run_at: dt.datetime | None
    ttr: int
    nonce: str | None
    data: str | None = None     # the description as the row's `data` holds it, when known: not encoded again

    @classmethod
    def of(cls, row: TaskRow) -> PlannedJob:
        return cls(row.id, decode_data(row.data), row.tube, row.priority, row.run_at, row.ttr, row.nonce, row.data)


class Attempt(Protocol):
    """One attempt at a task, as whoever ends it knows it: the job it held and the row as it was claimed."""

    @property
    def job_id(self) -> int | None: ...

    @property
    def row(self) -> TaskRow: ...


@dataclasses.dataclass(frozen=True)
class WorkPackage:
    """A claimed task: the reserved job, the row as claimed and the description to run."""

    job_id: int
    row: TaskRow
    description: TaskDescription

    @property
    def task_id(self) -> int:
        return self.row.id

    @property
    def attempt(self) -> int:
        return self.row.attempts
