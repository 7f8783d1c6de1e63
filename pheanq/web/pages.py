"""The dashboard's pages: each reads what it shows through the ops and producer rooms and returns it as a `Page`,
whose data is also the JSON of its `/api/...` twin."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from starlette.requests import Request

from pheanq.errors import InvalidInput, NotFound, TubeUnavailable
from pheanq.limits import LISTING_PAGE, MAX_LISTING_PAGE
from pheanq.ops.activity import WINDOWS, activity, oldest_waiting, window_named
from pheanq.ops.buried import list_buried, tubes_with_buried
from pheanq.ops.filters import parse_tubes, task_filter, task_id
from pheanq.ops.report import (
    STALE_REPORT_SECONDS,
    pool_report,
    progress_text,
    status_report,
    task_report,
    utc_text,
)
from pheanq.ops.schedules import schedule_listing
from pheanq.ops.selection import list_selection
from pheanq.python_call import PREFIX as PYTHON_PREFIX
from pheanq.schedules import all_schedules
from pheanq.status import PENDING, Status
from pheanq.storage.listings import TaskFilter
from pheanq.web.guard import Context, Page

# The query parameters of the task list that make its filter (the words of pheanq tasks' options).
FILTER_PARAMETERS = ("status", "tube", "command", "batch", "unique_key", "created_after", "created_before",
                     "finished_after", "finished_before", "match")
ENDED = {Status.DONE, Status.FAILED, Status.CANCELLED, Status.UPSTREAM_FAILED}
AUDIT_PAGE = 100


def overview(request: Request, context: Context) -> Page:
    """Counts per tube and status, beanstalkd's figures, paused tubes and each tube's oldest waiting task."""
    report = status_report(context.service.dispatch)
    oldest = oldest_waiting(context.service.dispatch, {tube: entry["tasks"] for tube, entry in report["tubes"].items()})
    return Page("overview.html", {**report, "statuses": [status.value for status in Status],
                                  "oldest_waiting_seconds": oldest, "windows": list(WINDOWS)})


def activity_series(request: Request, context: Context) -> Page:
    """The charts' series: ends per bucket and queue wait percentiles over the hour or the day (JSON only)."""
    window = window_named(request.query_params.get("window", "hour"))
    tube = request.query_params.get("tube") or None
    if tube is not None:
        parse_tubes([tube], "tube")
    return Page("", activity(context.service.dispatch, window, tube))


def tasks(request: Request, context: Context) -> Page:
    """The filtered task list, newest first, a keyset page at a time."""
    query = request.query_params
    where = filter_of(query.getlist, query.get)
    limit = _number(query.get("limit"), "limit", 1, MAX_LISTING_PAGE) or LISTING_PAGE
    after = task_id(query["after"], "after") if query.get("after") else None
    listing = list_selection(context.service.dispatch, where, after, limit)
    chosen = {name: query.getlist(name) if name in ("status", "tube", "command") else query.get(name, "")
              for name in FILTER_PARAMETERS}
    return Page("tasks.html", {**listing.to_json(), "filter": chosen, "limit": limit, "after": after,
                               "statuses": [status.value for status in Status]})


def task(request: Request, context: Context) -> Page:
    """One task: its description, log (as entries), result, progress and links."""
    found = task_id(request.path_params["task_id"], "task")
    row = context.service.dispatch.store.tasks.find_task(found)
    if row is None:
        raise NotFound(f"task {found} does not exist")
    report = task_report(row)
    links = context.service.dispatch.store.workflow_listings.links_of(found)
    return Page("task.html", {
        "task": report, "entries": log_entries(row.log), "progress_text": progress_text(report["progress"]),
        "python_task": row.command.startswith(PYTHON_PREFIX),
        "may_retry": row.status is Status.FAILED, "may_cancel": row.status in PENDING or row.status is Status.WORKING,
        "may_delete": row.status in ENDED,
        "waits_for": [{"id": parent, "done": done} for parent, done in links.parents],
        "awaited_by": links.children})


def batches(request: Request, context: Context) -> Page:
    after = task_id(request.query_params["after"], "after") if request.query_params.get("after") else None
    rows = context.service.dispatch.store.workflow_listings.list_batches(after, LISTING_PAGE + 1)
    listed = [{"id": row.id, "name": row.name, "total": row.total, "ended": row.total - row.unfinished,
               "state": "finished" if row.finished else "running" if row.closed else "open",
               "cancelled_by": row.cancelled_by, "created": utc_text(row.created),
               "finished": utc_text(row.finished)} for row in rows[:LISTING_PAGE]]
    return Page("batches.html", {"batches": listed,
                                 "next_after": rows[LISTING_PAGE - 1].id if len(rows) > LISTING_PAGE else None})


def batch(request: Request, context: Context) -> Page:
    found = task_id(request.path_params["batch_id"], "batch")
    progress = context.service.batch(found).progress()
    return Page("batch.html", {"batch": progress.as_dict(), "summary": progress.summary(),
                               "running": [{"id": task_id, "text": progress_text(value)}
                                           for task_id, value in progress.running.items()]})


def workers(request: Request, context: Context) -> Page:
    """Each worker-tender as it last reported, with its workers; those silent too long marked stale."""
    pool = pool_report(context.service.dispatch.store.admin.list_pool())
    for tender in pool:
        tender["stale"] = tender["reported_seconds_ago"] > STALE_REPORT_SECONDS
    return Page("workers.html", {"tenders": pool, "stale_after": STALE_REPORT_SECONDS})


def tubes(request: Request, context: Context) -> Page:
    report = status_report(context.service.dispatch)
    listed = [{"name": name, "tasks": entry["tasks"], "beanstalkd": entry["beanstalkd"],
               "paused_until": report["paused"].get(name)} for name, entry in report["tubes"].items()]
    return Page("tubes.html", {"tubes": listed, "beanstalkd_error": report["beanstalkd_error"]})


def buried(request: Request, context: Context) -> Page:
    """The buried jobs of a tube (the first tube that has some, unless one is asked for)."""
    dispatch = context.service.dispatch
    try:
        with_buried = tubes_with_buried(dispatch)
    except TubeUnavailable:
        with_buried = []
    asked = request.query_params.get("tube")
    tube = parse_tubes([asked], "tube")[0] if asked else (with_buried[0] if with_buried else None)
    after = _number(request.query_params.get("after"), "after", 0, None) or 0
    listing = list_buried(dispatch, tube, after) if tube is not None else None
    return Page("buried.html", {"tube": tube, "tubes": with_buried,
                                "listing": listing.to_json() if listing is not None else None})


def schedules(request: Request, context: Context) -> Page:
    """The recurring schedules: those of pheanq.toml and of the code this process imported, and every other one
    the database knows (declared in code this process did not import), with their last and next slots."""
    listing = schedule_listing(context.backend.store, all_schedules(context.backend.settings.schedules))
    return Page("schedules.html", {"schedules": listing})


def audit(request: Request, context: Context) -> Page:
    before = task_id(request.query_params["before"], "before") if request.query_params.get("before") else None
    entries = context.backend.store.audit.recent(AUDIT_PAGE + 1, before)
    shown = [{**dataclasses.asdict(entry), "at": utc_text(entry.at)} for entry in entries[:AUDIT_PAGE]]
    return Page("audit.html", {"entries": shown,
                               "next_before": entries[AUDIT_PAGE - 1].id if len(entries) > AUDIT_PAGE else None})


def filter_of(lists: Callable[[str], list[str]], single: Callable[[str], str | None]) -> TaskFilter:
    """The task filter of a query string or a form: lists of statuses, tubes and commands, one value of the rest."""
    return task_filter(statuses=lists("status"), tubes=lists("tube"), commands=lists("command"),
                       batch=single("batch"), unique_key=single("unique_key"), created_after=single("created_after"),
                       created_before=single("created_before"), finished_after=single("finished_after"),
                       finished_before=single("finished_before"), match=single("match"))


def log_entries(log: str | None) -> list[dict[str, str]]:
    """A task's log as its entries: each `--- ...` line pheanq wrote, with the output that follows it."""
    entries: list[dict[str, str]] = []
    for line in (log or "").splitlines(keepends=True):
        if line.startswith("---"):
            entries.append({"entry": line[3:].strip(), "output": ""})
        elif entries:
            entries[-1]["output"] += line
        else:
            entries.append({"entry": "", "output": line})
    return entries


def _number(text: str | None, name: str, lowest: int, highest: int | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text!r} is not a whole number") from None
    if number < lowest or (highest is not None and number > highest):
        raise InvalidInput(f"{name}: {number} is out of range ({lowest} to {highest if highest else 'any'})")
    return number
