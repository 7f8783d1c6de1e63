"""`pheanq tasks`: the tasks a filter selects, listed a page at a time, and cancelled or regenerated all
together.

An action on a selection goes through every selected task, not one listing's page: the ids are read newest first
in keyset pages, and each PAGE_SIZE of them is acted on in a transaction of its own (Dispatcher.cancel_page,
Dispatcher.regenerate_page). No lock is held longer than one page takes, and a task queued after the action
started (a higher id than its first page) is not selected. Each page's action checks its tasks again
(compare-and-set): one that ended since its id was read is left as it is and counted as skipped, and regenerate
takes only those still failed.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterable, Iterator
from typing import Any

from pheanq.dispatch import Dispatcher
from pheanq.limits import PAGE_SIZE, pages
from pheanq.ops.report import utc_text
from pheanq.ops.terminal import one_line
from pheanq.status import Status
from pheanq.storage.listings import ListedTask, TaskFilter

# How many ids of a selection are read at once, to be acted on PAGE_SIZE at a time: a selection's ids are found
# (and, without an index in id order, sorted) once per read, not once per page.
READ_AHEAD = 20 * PAGE_SIZE
# How many refused tasks an action's report names one by one; the others are counted.
REFUSALS_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class TaskListing:
    """One page of a listing, and the id to list the next one after (None: this was the last)."""

    tasks: list[ListedTask]
    next_after: int | None

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [{**dataclasses.asdict(task), "status": task.status.value, "created": utc_text(task.created),
                           "finished": utc_text(task.finished)} for task in self.tasks],
                "next_after": self.next_after}


@dataclasses.dataclass
class BulkOutcome:
    """What an action on a selection did, counted over its pages."""

    action: str                 # "cancel", "regenerate" or "delete"
    selected: int = 0           # tasks the filter selected when their page was read
    acted: int = 0              # cancelled, regenerated or deleted
    requested: int = 0          # running tasks whose cancel was requested (their workers end them)
    skipped: int = 0            # had ended (cancel), were not failed (regenerate), had not ended (delete), or were gone
    refused: list[str] = dataclasses.field(default_factory=list)  # failed tasks that may not run again: why
    unsent: int = 0             # regenerated without a job: the reconciler sends them
    unsent_reason: str = ""

    def report(self) -> list[str]:
        """What it did, as lines for the operator."""
        if self.action == "delete":
            return [f"deleted {self.acted} of {self.selected} selected task(s)"
                    + (f"; skipped {self.skipped} that had not ended (or that a running batch or a waiting task "
                       "still counts)" if self.skipped else "")]
        if self.action == "cancel":
            lines = [f"cancelled {self.acted} of {self.selected} selected task(s)"
                     + (f"; cancel requested for {self.requested} running task(s): their workers stop them"
                        if self.requested else "")
                     + (f"; skipped {self.skipped} that had ended" if self.skipped else "")]
        else:
            lines = [f"regenerated {self.acted} of {self.selected} selected task(s) (now restarted, back in their "
                     "tubes)" + (f"; skipped {self.skipped} that were not failed" if self.skipped else "")]
        if self.refused:
            lines.append(f"not regenerated: {len(self.refused)} failed task(s) that may not run again")
            lines += [f"  {one_line(why)}" for why in self.refused[:REFUSALS_SHOWN]]
            if len(self.refused) > REFUSALS_SHOWN:
                lines.append(f"  ... and {len(self.refused) - REFUSALS_SHOWN} more")
        if self.unsent:
            lines.append(f"{self.unsent} regenerated task(s) have no job yet ({one_line(self.unsent_reason)}): the "
                         "reconciler sends them (`pheanq reconcile`, or a worker-tender's next pass)")
        return lines


def list_selection(dispatch: Dispatcher, where: TaskFilter, after: int | None, limit: int) -> TaskListing:
    """The newest `limit` selected tasks with an id below `after` (all, when None)."""
    tasks = dispatch.store.listings.list_tasks(where, after, limit + 1)  # one more tells whether a next page exists
    return TaskListing(tasks[:limit], tasks[limit - 1].id if len(tasks) > limit else None)


def count_selection(dispatch: Dispatcher, where: TaskFilter) -> int:
    return dispatch.store.listings.count_tasks(where)


def cancel_selection(dispatch: Dispatcher, where: TaskFilter, by: str) -> BulkOutcome:
    """Cancel every selected task that has not ended, a page per transaction (see Dispatcher.cancel_page); `by`:
    who cancels, already checked (pheanq.producer.cancel.canceller)."""
    return cancel_pages(dispatch, selected_pages(dispatch, where), by)


def regenerate_selection(dispatch: Dispatcher, where: TaskFilter) -> BulkOutcome:
    """Put every selected failed task back into its tube as `restarted`, a page per transaction (see
    Dispatcher.regenerate_page)."""
    return regenerate_pages(dispatch, selected_pages(dispatch, where))


def delete_selection(dispatch: Dispatcher, where: TaskFilter) -> BulkOutcome:
    """Delete every selected task that has ended (pheanq.storage.removals), a page per transaction."""
    return delete_pages(dispatch, selected_pages(dispatch, where))


def chosen_pages(task_ids: list[int]) -> Iterator[list[int]]:
    """Tasks chosen one by one (the dashboard's ticked rows), PAGE_SIZE at a time, newest first."""
    yield from pages(sorted(set(task_ids), reverse=True))


def cancel_pages(dispatch: Dispatcher, id_pages: Iterable[list[int]], by: str) -> BulkOutcome:
    """Cancel the tasks of each page of ids in a transaction of its own."""
    outcome = BulkOutcome("cancel")
    for ids in id_pages:
        outcome.selected += len(ids)
        results = dispatch.cancel_page(ids, by)
        outcome.acted += sum(result.took and result.row.status is not Status.WORKING for result in results)
        outcome.requested += sum(result.took and result.row.status is Status.WORKING for result in results)
        outcome.skipped += sum(not result.took for result in results) + len(ids) - len(results)
    return outcome


def regenerate_pages(dispatch: Dispatcher, id_pages: Iterable[list[int]]) -> BulkOutcome:
    """Regenerate the failed tasks of each page of ids in a transaction of its own."""
    outcome = BulkOutcome("regenerate")
    for ids in id_pages:
        outcome.selected += len(ids)
        done = dispatch.regenerate_page(ids)
        outcome.acted += len(done.page.restarted)
        outcome.skipped += len(done.page.not_failed)
        outcome.refused += [f"task {task_id}: {why}" for task_id, why in sorted(done.page.refused.items())]
        outcome.unsent += done.unsent
        outcome.unsent_reason = done.reason or outcome.unsent_reason
    return outcome


def delete_pages(dispatch: Dispatcher, id_pages: Iterable[list[int]]) -> BulkOutcome:
    """Delete the ended tasks of each page of ids in a transaction of its own."""
    outcome = BulkOutcome("delete")
    for ids in id_pages:
        outcome.selected += len(ids)
        deleted = dispatch.store.removals.delete_ended(ids)
        outcome.acted += deleted
        outcome.skipped += len(ids) - deleted
    return outcome


def selected_pages(dispatch: Dispatcher, where: TaskFilter) -> Iterator[list[int]]:
    """The ids of the selected tasks, PAGE_SIZE at a time, newest first. They are read READ_AHEAD at a time (a read
    that locks nothing, and finds and sorts the selection once for many pages), then handed out a page at a time."""
    before: int | None = None
    while ids := dispatch.store.listings.task_ids(where, before, READ_AHEAD):
        yield from pages(ids)
        before = ids[-1]


def format_listing(listing: TaskListing, next_command: list[str]) -> str:
    """A page of `pheanq tasks` as a table, and the command that lists the next page (`next_command` and
    `--after ID`) when there may be one."""
    if not listing.tasks:
        return "no task selected"
    header = ["id", "status", "tube", "command", "attempts", "created", "finished"]
    rows = [header] + [[str(task.id), task.status.value, one_line(task.tube), one_line(task.command),
                        str(task.attempts), utc_text(task.created) or "-", utc_text(task.finished) or "-"]
                       for task in listing.tasks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if i in (0, 4) else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    if listing.next_after is not None:
        lines.append(f"... more on the next page: {shlex.join([*next_command, '--after', str(listing.next_after)])}")
    return "\n".join(lines)
