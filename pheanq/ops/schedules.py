"""What `pheanq schedules` and the dashboard show of the recurring schedules: each one's last decided slot (with
its task's status), its next slot, its policy, and whether the schedulers keep up with it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pheanq.schedules import Schedule, next_slot, slot_text
from pheanq.storage import Store

_UTC = dt.timezone.utc
# The status of a schedule, as the listing says it.
WAITING = "waiting"           # no scheduler has seen it yet (no worker-tender runs, or all run --no-scheduler)
OK = "ok"
LATE = "late"                 # a slot is due past its grace and no scheduler decided it: is any tender running?
# In the database (a scheduler ran it), but declared neither in pheanq.toml nor in the code this process imported:
# declared in code elsewhere, or no longer declared.
UNDECLARED = "unknown here"


def schedule_listing(store: Store, schedules: list[Schedule], now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One JSON-able entry a schedule, by name; the schedules the database knows and no declaration names too."""
    now = now or dt.datetime.now(_UTC)
    cursors = store.schedules.cursors()
    last_runs = store.schedules.last_runs()
    listing = []
    for schedule in sorted(schedules, key=lambda s: s.name):
        cursor = cursors.get(schedule.name)
        decided = None if cursor is None else cursor.replace(tzinfo=_UTC)
        upcoming = next_slot(schedule, max(now, decided) if decided else now)
        status = WAITING
        if decided is not None:
            owed = next_slot(schedule, decided)
            status = LATE if (now - owed).total_seconds() > schedule.grace else OK
        listing.append({
            "name": schedule.name, "cron": schedule.cron, "timezone": schedule.timezone,
            "command": schedule.description.command, "catch_up": schedule.catch_up,
            "no_overlap": schedule.no_overlap, "grace": schedule.grace, "source": schedule.source,
            "status": status, "decided_until": None if decided is None else slot_text(decided),
            "last": _last(last_runs.get(schedule.name)), "next": slot_text(upcoming),
        })
    known = {schedule.name for schedule in schedules}
    for name in sorted(set(cursors) - known):
        listing.append({"name": name, "cron": None, "timezone": None, "command": None, "catch_up": None,
                        "no_overlap": None, "grace": None, "source": None, "status": UNDECLARED,
                        "decided_until": slot_text(cursors[name]), "last": _last(last_runs.get(name)), "next": None})
    return listing


def _last(run: Any) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"slot": slot_text(run.slot), "outcome": run.outcome, "task_id": run.task_id,
            "task_status": None if run.task_status is None else run.task_status.value, "reason": run.reason}


def format_schedules(listing: list[dict[str, Any]]) -> str:
    """The listing as a table for a terminal."""
    if not listing:
        return "no schedules (declare them in pheanq.toml's [schedules] or in code: see docs/schedules.rst)"
    rows = [("SCHEDULE", "CRON", "TIMEZONE", "CATCH-UP", "LAST SLOT", "LAST RUN", "NEXT SLOT", "STATUS")]
    for entry in listing:
        last = entry["last"]
        if last is None:
            last_slot, last_run = "-", "-"
        elif last["outcome"] == "queued":
            last_slot = last["slot"]
            last_run = f"task {last['task_id']} {last['task_status'] or '(deleted)'}"
        else:
            last_slot, last_run = last["slot"], f"{last['outcome']}: {last['reason']}"
        overlap = ", no overlap" if entry["no_overlap"] else ""
        policy = "-" if entry["catch_up"] is None else entry["catch_up"] + overlap
        rows.append((entry["name"], entry["cron"] or "-", entry["timezone"] or "-", policy, last_slot, last_run,
                     entry["next"] or "-", entry["status"]))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
