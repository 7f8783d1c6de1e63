"""The dashboard's actions (admin role, POST, CSRF-checked by pheanq.web.guard): retry, cancel and delete of
chosen tasks or of everything a filter selects, a task's own retry and cancel, a batch's cancel, pause and resume
of a tube, and kick and delete of buried jobs. Each is recorded in the audit (who, what, on what, with what
outcome) once it has run, and answers with one line saying what it did."""

from __future__ import annotations

import dataclasses
import urllib.parse

from starlette.requests import Request

from pheanq.errors import InvalidInput, NotFound, WrongStatus
from pheanq.ops.buried import delete_buried, kick_buried
from pheanq.ops.filters import parse_tubes, task_id
from pheanq.ops.pause import pause_tube, resume_tube
from pheanq.ops.report import utc_text
from pheanq.ops.selection import (
    BulkOutcome,
    cancel_pages,
    cancel_selection,
    chosen_pages,
    delete_pages,
    delete_selection,
    regenerate_pages,
    regenerate_selection,
)
from pheanq.web.guard import Context, Done
from pheanq.web.pages import FILTER_PARAMETERS, filter_of

BULK_ACTIONS = ("retry", "cancel", "delete")
MAX_PAUSE_SECONDS = 10 * 365 * 86400


def tasks_action(request: Request, context: Context) -> Done:
    """retry / cancel / delete of the ticked tasks (`scope=chosen`, ids in `id`) or of every task the form's
    filter selects (`scope=filter`), a page per transaction (pheanq.ops.selection)."""
    action = _one_of(context.field("action"), BULK_ACTIONS, "action")
    scope = _one_of(context.field("scope", "chosen"), ("chosen", "filter"), "scope")
    dispatch = context.service.dispatch
    who = f"{context.visitor.name} (pheanq web)"
    if scope == "chosen":
        ids = [task_id(text, "id") for text in context.fields("id")]
        if not ids:
            raise InvalidInput("no task chosen: tick some, or act on everything the filter selects")
        target = "tasks " + ",".join(str(i) for i in sorted(ids))
        pages = chosen_pages(ids)
        outcome = cancel_pages(dispatch, pages, who) if action == "cancel" else \
            regenerate_pages(dispatch, pages) if action == "retry" else delete_pages(dispatch, pages)
    else:
        where = filter_of(context.fields, context.field)
        query = _filter_query(context)
        target = f"tasks matching {query or '(no filter: every task)'}"
        outcome = cancel_selection(dispatch, where, who) if action == "cancel" else \
            regenerate_selection(dispatch, where) if action == "retry" else delete_selection(dispatch, where)
    return _bulk_done(context, f"tasks-{action}", target, outcome, f"/tasks?{_filter_query(context, 'limit')}")


def task_retry(request: Request, context: Context) -> Done:
    found = task_id(request.path_params["task_id"], "task")
    try:
        job_id = context.service.regenerate_task(found)
    except (NotFound, WrongStatus, InvalidInput) as error:
        context.audit("task-retry", f"task {found}", f"refused: {error}")
        raise
    message = f"task {found}: restarted as job {job_id}"
    context.audit("task-retry", f"task {found}", message)
    return Done(message, f"/tasks/{found}", {"task_id": found, "job_id": job_id})


def task_cancel(request: Request, context: Context) -> Done:
    found = task_id(request.path_params["task_id"], "task")
    result = context.service.cancel_task(found, f"{context.visitor.name} (pheanq web)")
    context.audit("task-cancel", f"task {found}", result.message)
    if not result.cancelled:
        raise WrongStatus(result.message)
    return Done(result.message, f"/tasks/{found}", {"task_id": found, "was": result.was.value})


def batch_cancel(request: Request, context: Context) -> Done:
    found = task_id(request.path_params["batch_id"], "batch")
    cancelled = context.service.batch(found).cancel(f"{context.visitor.name} (pheanq web)")
    message = f"batch {found}: closed; {cancelled} task(s) cancelled"
    context.audit("batch-cancel", f"batch {found}", message)
    return Done(message, f"/batches/{found}", {"batch_id": found, "cancelled": cancelled})


def tube_pause(request: Request, context: Context) -> Done:
    tube = _tube(context)
    seconds_text = (context.field("seconds") or "").strip()
    seconds = None
    if seconds_text:
        try:
            seconds = int(seconds_text)
        except ValueError:
            raise InvalidInput(f"seconds: {seconds_text!r} is not a whole number") from None
        if not 1 <= seconds <= MAX_PAUSE_SECONDS:
            raise InvalidInput(f"seconds: give 1 to {MAX_PAUSE_SECONDS}, or nothing to pause until resumed")
    until = pause_tube(context.service.dispatch, tube, seconds)
    message = f"tube {tube}: paused until {utc_text(until)}"
    context.audit("tube-pause", f"tube {tube}", message)
    return Done(message, "/tubes", {"tube": tube, "paused_until": utc_text(until)})


def tube_resume(request: Request, context: Context) -> Done:
    tube = _tube(context)
    was_paused = resume_tube(context.service.dispatch, tube)
    message = f"tube {tube}: resumed" if was_paused else f"tube {tube} was not paused"
    context.audit("tube-resume", f"tube {tube}", message)
    return Done(message, "/tubes", {"tube": tube, "was_paused": was_paused})


def buried_action(request: Request, context: Context) -> Done:
    """kick / delete of the ticked buried jobs of a tube (`scope=chosen`) or of all of them (`scope=all`)."""
    action = _one_of(context.field("action"), ("kick", "delete"), "action")
    scope = _one_of(context.field("scope", "chosen"), ("chosen", "all"), "scope")
    tube = _tube(context)
    job_ids: list[int] | None = None
    if scope == "chosen":
        job_ids = [task_id(text, "job") for text in context.fields("job")]
        if not job_ids:
            raise InvalidInput("no job chosen: tick some, or act on all of the tube's buried jobs")
    dispatch = context.service.dispatch
    count = kick_buried(dispatch, tube, job_ids) if action == "kick" else len(delete_buried(dispatch, tube, job_ids))
    verb = "kicked" if action == "kick" else "deleted"
    message = f"tube {tube}: {verb} {count} buried job(s)"
    target = f"tube {tube}: " + ("all buried jobs" if job_ids is None else "jobs " + ",".join(map(str, job_ids)))
    context.audit(f"buried-{action}", target, message)
    return Done(message, f"/buried?tube={urllib.parse.quote(tube)}", {"tube": tube, verb: count})


def _bulk_done(context: Context, action: str, target: str, outcome: BulkOutcome, next_page: str) -> Done:
    lines = outcome.report()
    context.audit(action, target, " / ".join(lines))
    return Done("; ".join(lines), next_page, dataclasses.asdict(outcome))


def _filter_query(context: Context, *also: str) -> str:
    """The form's filter (and the fields named in `also`) as the task list's query string: what the action took,
    and the page to show the same selection after it."""
    pairs = [(name, value) for name in (*FILTER_PARAMETERS, *also) for value in context.fields(name) if value.strip()]
    return urllib.parse.urlencode(pairs)


def _tube(context: Context) -> str:
    name = context.field("tube")
    if not name:
        raise InvalidInput("tube: missing")
    return parse_tubes([name], "tube")[0]


def _one_of(value: str | None, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise InvalidInput(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value
