"""What `pheanq status`, `show`, `buried` and `batch show` print: the table's view beside beanstalkd's, as text or
JSON. Every text formatter passes what a task or a job body controls through `visible` / `one_line`."""
from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Mapping
from typing import Any

from pheanq.body import decode_data
from pheanq.clock import utc_now
from pheanq.dispatch import Dispatcher
from pheanq.errors import InvalidInput
from pheanq.limits import LISTING_PAGE
from pheanq.ops.buried import BuriedList
from pheanq.ops.servers import beanstalkd_figures
from pheanq.ops.terminal import one_line, visible
from pheanq.python_call import PREFIX as PYTHON_PREFIX
from pheanq.python_call import PythonCall, to_json
from pheanq.retry import describe_retry
from pheanq.status import Status
from pheanq.storage.tables import TaskRow, WorkerRow
from pheanq.task_limits import CONCURRENCY, Rate

# A tender reports every 2 s; one silent for longer than this is shown as possibly gone.
STALE_REPORT_SECONDS = 15
# How many running tasks' progress `pheanq status` shows.
PROGRESS_SHOWN = 20
# beanstalkd's per-tube figures shown beside the table's counts.
TUBE_FIGURES = ("current-jobs-ready", "current-jobs-reserved", "current-jobs-delayed", "current-jobs-buried",
                "current-watching")


def status_report(dispatch: Dispatcher) -> dict[str, Any]:
    """Counts per tube and status from SQL, and beanstalkd's own stats of the same tubes."""
    counts = dispatch.store.tasks.count_tasks()
    tubes = sorted({tube for tube, _, _ in counts} | {dispatch.settings.default_tube})
    report: dict[str, Any] = {
        "database": dispatch.store.safe_url,
        "beanstalkd": dispatch.beanstalkd.server,
        "beanstalkd_error": None,
        "tubes": {tube: {"tasks": {status.value: 0 for status in Status}, "beanstalkd": None} for tube in tubes},
    }
    for tube, status, count in counts:
        report["tubes"][tube]["tasks"][status.value] = count
    report["paused"] = {tube: utc_text(until) for tube, until in sorted(dispatch.store.admin.paused_tubes(
        utc_now()).items())}
    report["limits"] = limits_report(dispatch)
    report["pool"] = pool_report(dispatch.store.admin.list_pool())
    report["progress"] = [{"id": task_id, "command": command, "tube": tube, "progress": _json_or_text(progress)}
                          for task_id, command, tube, progress in dispatch.store.tasks.progress_of_working(
                              PROGRESS_SHOWN)]
    figures = beanstalkd_figures(dispatch, tubes)
    for tube in tubes:
        stats = figures.tubes[tube]
        answered = stats is not None or any(server.up for server in figures.servers)
        report["tubes"][tube]["beanstalkd"] = {key: (stats or {}).get(key, 0) for key in TUBE_FIGURES} \
            if answered else None
    report["beanstalkd_error"] = figures.error
    report["servers"] = [server.as_json() for server in figures.servers]
    return report


def _server_line(server: dict[str, Any]) -> str:
    number = "" if server["number"] is None else f" (#{server['number']})"
    if not server["listed"]:
        return f"server {one_line(server['address'])}{number}: not listed; its tasks are sent to the others"
    if not server["up"]:
        return f"server {one_line(server['address'])}{number}: DOWN ({one_line(server['reason'])})"
    jobs = ", ".join(f"{state} {count}" for state, count in server["jobs"].items())
    return f"server {one_line(server['address'])}{number}: up, {jobs}"


def limits_report(dispatch: Dispatcher) -> list[dict[str, Any]]:
    """Each cluster-wide limit this process knows (pheanq.toml's, and those the code it imported declared), with
    its use now: running tasks (concurrency) or starts within the period (rate), and the tasks yet to start."""
    return [{"scope": use.scope, "kind": use.kind, "limit": use.size if use.kind == CONCURRENCY
             else str(Rate(use.size, use.period)), "in_use": use.in_use, "waiting": use.waiting}
            for use in dispatch.store.limit_places.usage(dispatch.limits, utc_now())]


def pool_report(rows: list[WorkerRow]) -> list[dict[str, Any]]:
    """Each worker-tender as it last reported itself, with its workers."""
    now = utc_now()
    tenders: list[dict[str, Any]] = []
    for row in rows:
        entry = {"pid": row.pid, "state": row.state, "task_id": row.task_id,
                 "age_seconds": round((now - row.started).total_seconds(), 1),
                 "memory_mb": None if row.memory_mb is None else round(row.memory_mb, 1)}
        if row.kind == "tender":
            tenders.append({"host": row.host, **entry, "tubes": row.tubes.split(","),
                            "reported_seconds_ago": round((now - row.heartbeat).total_seconds(), 1), "workers": []})
        elif tenders and tenders[-1]["pid"] == row.tender_pid and tenders[-1]["host"] == row.host:
            tenders[-1]["workers"].append(entry)
    return tenders


def format_status(report: dict[str, Any]) -> str:
    statuses = [status.value for status in Status]
    figures = ["ready", "reserved", "delayed", "buried", "watching"]
    header = ["tube", *statuses, "|", *figures]
    rows = [header]
    for tube, entry in report["tubes"].items():
        stats = entry["beanstalkd"]
        beanstalkd = [str(stats[key]) for key in TUBE_FIGURES] if stats else ["-"] * len(figures)
        rows.append([one_line(tube), *(str(entry["tasks"][s]) for s in statuses), "|", *beanstalkd])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"database {one_line(report['database'])}   beanstalkd {one_line(report['beanstalkd'])}", ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=False))).rstrip())
    if report["beanstalkd_error"]:
        lines.append(f"beanstalkd: {one_line(report['beanstalkd_error'])}")
    if len(report["servers"]) > 1:
        lines.extend(_server_line(server) for server in report["servers"])
    for tube, until in report["paused"].items():
        lines.append(f"tube {one_line(tube)} is paused until {until} (`pheanq resume --use-tube {one_line(tube)}`)")
    for limit in report["limits"]:
        use = "running" if limit["kind"] == CONCURRENCY else "started in the period"
        lines.append(f"limit {one_line(limit['scope'])} {limit['kind']} {limit['limit']}: {limit['in_use']} {use}, "
                     f"{limit['waiting']} waiting")
    for entry in report["progress"]:
        progress = progress_text(entry["progress"])
        if progress is not None:
            name = entry["command"].removeprefix(PYTHON_PREFIX)
            lines.append(f"task {entry['id']} {one_line(name)} ({one_line(entry['tube'])}): {one_line(progress)}")
    lines.append("")
    if not report["pool"]:
        lines.append("worker-tenders: none reported")
    for tender in report["pool"]:
        silent = tender["reported_seconds_ago"]
        note = f"  (no report for {silent:.0f}s: gone?)" if silent > STALE_REPORT_SECONDS else ""
        lines.append(f"worker-tender {one_line(tender['host'])}:{tender['pid']}  "
                     f"tubes {one_line(','.join(tender['tubes']))}  {one_line(tender['state'])}  "
                     f"up {duration_text(tender['age_seconds'])}  "
                     f"{len(tender['workers'])} worker(s){note}")
        for worker in tender["workers"]:
            task = f"task {worker['task_id']}" if worker["task_id"] is not None else "-"
            lines.append(f"  worker {worker['pid']:<8} {one_line(worker['state']):<9} {task:<12} "
                         f"age {duration_text(worker['age_seconds'])}")
    return "\n".join(lines)


def duration_text(seconds: float) -> str:
    """`42s`, `3m05s`, `2h10m`: a duration as `pheanq status` and the dashboard show it."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def task_report(row: TaskRow) -> dict[str, Any]:
    try:
        description = decode_data(row.data)
        line = python_call_text(description) if isinstance(description, PythonCall) else \
            shlex.join([description.command, *description.command_line()])
    except InvalidInput:
        line = row.command
    return {
        "id": row.id, "command": row.command, "command_line": line, "tube": row.tube, "status": row.status.value,
        "priority": row.priority, "ttr": row.ttr, "timeout": row.timeout, "job_id": row.job_id,
        "attempts": row.attempts, "exit_code": row.exit_code, "worker": row.worker, "created": utc_text(row.created),
        "started": utc_text(row.started), "finished": utc_text(row.finished), "modified": utc_text(row.modified),
        "heartbeat": utc_text(row.heartbeat), "run_at": utc_text(row.run_at), "data": row.data, "log": row.log,
        "retry": describe_retry(row.retry), "unique_key": row.unique_key, "batch": row.batch_id,
        "callback_of": row.callback_of, "waiting_for": row.waiting_for if row.status is Status.WAITING else None,
        "result": _json_or_text(row.result), "progress": _json_or_text(row.progress),
    }


def python_call_text(call: PythonCall) -> str:
    """A Python task's call as a person reads it: `billing.send_invoice(42, email=false)` (values in JSON)."""
    arguments = [to_json(value) for value in call.args]
    arguments += [f"{name}={to_json(value)}" for name, value in call.kwargs.items()]
    return f"{call.name}({', '.join(arguments)})"


def progress_text(progress: Any) -> str | None:
    """`3 of 5 (60%): step 3`, from a task's progress JSON."""
    if not isinstance(progress, dict) or progress.get("done") is None:
        return None
    done, total, message = progress["done"], progress.get("total"), progress.get("message")
    text = f"{done} of {total}" + (f" ({100 * done / total:.0f}%)" if total else "") if total is not None \
        else f"{done} done"
    return text + (f": {message}" if message else "")


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_task(report: dict[str, Any]) -> str:
    fields = ["status", "command_line", "tube", "priority", "ttr", "timeout", "retry", "job_id", "attempts",
              "exit_code", "worker", "run_at", "unique_key", "batch", "callback_of", "waiting_for", "created",
              "started", "finished", "modified", "heartbeat"]
    lines = [f"task {report['id']}"]
    lines += [f"  {name:<13}{'-' if report[name] is None else one_line(report[name])}" for name in fields]
    progress = progress_text(report["progress"])
    if progress is not None:
        lines.append(f"  {'progress':<13}{one_line(progress)}")
    if report["status"] == Status.DONE.value and report["command"].startswith(PYTHON_PREFIX):
        result = to_json(report["result"])
        lines.append(f"  {'result':<13}{one_line(result if len(result) <= 500 else result[:497] + '...')}")
    lines.append("log:")
    lines.append(visible(report["log"].rstrip("\n")) if report["log"] else "  (empty)")
    return "\n".join(lines)


def format_buried(listing: BuriedList, limit: int = LISTING_PAGE) -> str:
    """`pheanq buried`: one page of the listing (`limit` jobs), and the command that shows the next."""
    if not listing.total:
        return f"tube {listing.tube}: no buried job"
    lines = [f"tube {listing.tube}: {listing.total} buried job(s)"]
    for job in listing.jobs:
        when = utc_text(job.buried) or "-"
        reason = one_line(job.reason) if job.reason else "(no reason recorded: buried by another client)"
        lines.append(f"  job {job.job_id}  {when}  {reason}")
        body = job.body if len(job.body) <= 120 else job.body[:117] + "..."
        lines.append(f"      body: {one_line(body)}")
    if listing.next_after is not None:
        more = "" if limit == LISTING_PAGE else f" --limit {limit}"
        lines.append(f"  ... more on the next page: pheanq buried --use-tube {shlex.quote(listing.tube)}{more} "
                     f"--after {listing.next_after}")
    if listing.unlisted:
        lines.append(f"  ... and {listing.unlisted} more without a recorded reason (beanstalkd shows only the next "
                     "one; `pheanq buried kick --all` or `delete --all` take them too)")
    return "\n".join(lines)


def format_batch(summary: str, fields: Mapping[str, Any], callbacks: Mapping[str, int | None]) -> str:
    """`pheanq batch show`: a batch's `summary` line (which holds its name), its times and who cancelled it
    (from `fields`), each callback's task, and the progress its running tasks report."""
    lines = [one_line(summary)]
    for name in ("created", "closed", "finished", "cancelled_by"):
        value = fields[name]
        lines.append(f"  {name:<13}{'-' if value is None else one_line(value)}")
    for which, task_id in callbacks.items():
        lines.append(f"  {which + ' task':<13}{'not queued' if task_id is None else task_id}")
    for task_id, progress in fields.get("running", {}).items():
        text = progress_text(progress)
        if text is not None:
            lines.append(f"  task {task_id}: {one_line(text)}")
    return "\n".join(lines)


def utc_text(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ", timespec="seconds") + "Z"
