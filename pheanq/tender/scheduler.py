"""The tender's scheduler: queues the task of each slot of the recurring schedules (pheanq.schedules).

Every worker-tender runs one, on a thread of its own with connections of its own; none of them is "the" scheduler.
Each sleeps until the next slot of any schedule (at most MAX_SLEEP_SECONDS, so that a clock set forward is
noticed), then, for each schedule that is due: reads its cursor, works out the slots due since (by its catch-up
policy), queues each in one transaction with its slot's row (pheanq.storage.schedules: the row's key lets one
scheduler win a slot, however many race for it), puts the jobs, and moves the cursor. An error of the database or
of beanstalkd is logged and the schedule tried again RETRY_SECONDS later; it never stops the tender. A job that
was not put leaves its task `new` without a job, which the reconciler sends.
"""

from __future__ import annotations

import copy
import datetime as dt
import inspect
import logging
import threading
from collections.abc import Sequence

from pheanq import task_registry
from pheanq.config import Settings
from pheanq.dispatch import PlannedJob
from pheanq.errors import ConfigError, InvalidInput, PheanqError
from pheanq.producer.service import TaskQueueService
from pheanq.python_call import PythonCall
from pheanq.schedules import SLOT_PARAMETER, Schedule, all_schedules, due_slots, first_cursor, next_slot, slot_text
from pheanq.storage.schedules import QUEUED, SKIPPED
from pheanq.storage.tasks import NewTask
from pheanq.worker.python_imports import import_tasks

log = logging.getLogger("pheanq.scheduler")

MAX_SLEEP_SECONDS = 30.0
RETRY_SECONDS = 2.0
_UTC = dt.timezone.utc


class Scheduler:
    """Queues the slots of every schedule of `settings` and of the modules in `modules` (and `[python] imports`)."""

    def __init__(self, settings: Settings, modules: Sequence[str] = ()) -> None:
        self.settings = settings
        self.modules = [*settings.python_imports, *modules]
        self.schedules: list[Schedule] = []
        self._service: TaskQueueService | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pheanq-scheduler", daemon=True)

    def start(self) -> None:
        """Import the application's modules (their `@task(schedule=...)` and `periodic(...)`), check that each
        schedule's task can be planned, and start the thread; ConfigError, in one line, when something is wrong."""
        import_tasks(self.modules)  # the tender starts its workers with subprocess, not fork: importing is safe
        self.schedules = all_schedules(self.settings.schedules)
        if not self.schedules:
            return
        self._service = TaskQueueService(self.settings)
        now = dt.datetime.now(_UTC)
        for schedule in self.schedules:
            try:
                self._plan(schedule, now)
            except InvalidInput as error:
                raise ConfigError(f"schedules.{schedule.name}: {error}") from None
            call = schedule.description
            if isinstance(call, PythonCall) and task_registry.lookup(call.name) is None:
                log.warning("schedule %s: the Python task %s is not registered by the modules this tender imports "
                            "([python] imports, --import); its jobs are buried unless its workers know it",
                            schedule.name, call.name)
        log.info("scheduler: %d schedule(s): %s", len(self.schedules),
                 ", ".join(f"{s.name} ({s.cron}, {s.timezone})" for s in self.schedules))
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._service is not None:
            self._service.close()

    def _run(self) -> None:
        due_at = {schedule.name: dt.datetime.min.replace(tzinfo=_UTC) for schedule in self.schedules}
        while not self._stop.is_set():
            now = dt.datetime.now(_UTC)
            for schedule in self.schedules:
                if now < due_at[schedule.name]:
                    continue
                try:
                    self._decide(schedule, now)
                    due_at[schedule.name] = next_slot(schedule, now)
                except PheanqError as error:
                    log.warning("schedule %s: not decided (%s); trying again in %gs", schedule.name, error,
                                RETRY_SECONDS)
                    due_at[schedule.name] = now + dt.timedelta(seconds=RETRY_SECONDS)
                except Exception as error:  # a driver's surprise: the next round may well succeed; the tender goes on
                    log.error("schedule %s: failed: %s: %s; trying again in %gs", schedule.name,
                              type(error).__name__, error, RETRY_SECONDS)
                    due_at[schedule.name] = now + dt.timedelta(seconds=RETRY_SECONDS)
            wait = (min(due_at.values()) - dt.datetime.now(_UTC)).total_seconds()
            self._stop.wait(min(max(wait, 0.0), MAX_SLEEP_SECONDS))

    def _decide(self, schedule: Schedule, now: dt.datetime) -> None:
        """Decide the schedule's slots up to `now`: queue or skip each to run, then move its cursor."""
        assert self._service is not None
        store = self._service.store
        cursor = store.schedules.cursor(schedule.name, _naive(first_cursor(schedule, now))).replace(tzinfo=_UTC)
        due = due_slots(schedule, cursor, now)
        if due.dropped or due.more_dropped:
            log.warning("schedule %s: %s%d missed slot(s) dropped (catch_up = %s), the newest %s", schedule.name,
                        "more than " if due.more_dropped else "", due.dropped, schedule.catch_up,
                        slot_text(due.oldest_dropped) if due.oldest_dropped else "-")
        for slot in due.run:
            job, task = self._plan(schedule, slot)
            decision = self._service.dispatch.queue_slot(schedule.name, _naive(slot), job, task,
                                                         schedule.no_overlap, _naive(now))
            if decision.outcome == QUEUED:
                log.info("schedule %s: slot %s queued task %s", schedule.name, slot_text(slot), decision.task_id)
            elif decision.outcome == SKIPPED:
                log.warning("schedule %s: slot %s skipped: %s (no_overlap)", schedule.name, slot_text(slot),
                            decision.reason)
        store.schedules.advance(schedule.name, _naive(now))

    def _plan(self, schedule: Schedule, slot: dt.datetime) -> tuple[PlannedJob, NewTask]:
        """The task of one slot: a Python task with a `scheduled_for` parameter gets the slot there."""
        assert self._service is not None
        description = schedule.description
        if isinstance(description, PythonCall):
            registered = task_registry.lookup(description.name)
            signature = None if registered is None else inspect.signature(registered.function)
            if signature is not None and SLOT_PARAMETER in signature.parameters:
                try:
                    bound = signature.bind_partial(*description.args, **description.kwargs)
                except TypeError as error:
                    raise InvalidInput(f"task {description.name}: {error}") from None
                bound.arguments[SLOT_PARAMETER] = slot_text(slot)  # where the signature has it
                description = copy.copy(description)
                description.args, description.kwargs = list(bound.args), dict(bound.kwargs)
        return self._service.plan(description, **schedule.queue_options())


def _naive(moment: dt.datetime) -> dt.datetime:
    """A tz-aware time as the database columns keep it: naive UTC (pheanq.clock)."""
    return moment.astimezone(_UTC).replace(tzinfo=None)
