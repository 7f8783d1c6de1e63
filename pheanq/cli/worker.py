"""`pheanq task-worker`: the command that runs tasks."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from pheanq.cli.app import Context, cli, import_option, pass_context, use_tube_option
from pheanq.errors import StoreUnavailable
from pheanq.worker.cron import SingleInstance, WorkerLimits
from pheanq.worker.loop import TaskWorker
from pheanq.worker.python_imports import start_python


@cli.command("task-worker")
@use_tube_option("Tube(s) to take tasks from, comma-separated.")
@click.option("--stop-when-empty", is_flag=True, help="Exit when no job is ready instead of waiting (tasks in a "
              "retry's backoff or delayed are left behind: see --stop-when-drained).")
@click.option("--stop-when-drained", is_flag=True,
              help="Exit when no job is ready and none is delayed (a retry's backoff, a delay) in the tubes.")
@click.option("--max-tasks", type=click.IntRange(min=1), metavar="N", help="Exit after N tasks.")
@click.option("--cycles-limit", type=click.IntRange(min=1), metavar="N",
              help="Exit after checking the tube N times (a check counts whether a job came or not).")
@click.option("--cycle-delay", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Pause this long after a check that found no job.")
@click.option("--memory-limit", type=click.FloatRange(min=1), metavar="MB",
              help="Exit (after the current task) once the worker's resident memory exceeds this.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Exit (after the current task) once the worker has run this long.")
@click.option("--single-id", metavar="ID", help="Run only if no other worker with this id runs (from cron).")
@click.option("--pid-dir", metavar="DIR", help="Where --single-id keeps its lock files. [default: run_dir]")
@import_option
@pass_context
def task_worker(context: Context, use_tube: str | None, stop_when_empty: bool, stop_when_drained: bool,
                max_tasks: int | None, cycles_limit: int | None, cycle_delay: float, memory_limit: float | None,
                time_limit: float | None, single_id: str | None, pid_dir: str | None,
                python_imports: tuple[str, ...]) -> None:
    """Run tasks from the tube until stopped (SIGTERM: finish the task, then exit)."""
    if stop_when_empty and stop_when_drained:
        raise click.UsageError("--stop-when-empty and --stop-when-drained exclude each other: give one")
    if pid_dir is not None and single_id is None:
        raise click.UsageError("--pid-dir needs --single-id")
    if single_id is not None:
        instance = SingleInstance(Path(pid_dir) if pid_dir else context.run_dir, single_id)
        holder = instance.acquire()
        if holder is not None:
            click.echo(f"pheanq task-worker: a worker with --single-id {single_id} already runs"
                       f"{f' (pid {holder})' if holder else ''}; exiting", err=True)
            sys.exit(0)
    # A never-upgraded database is a set-up mistake to report now; an outage the worker waits out.
    with contextlib.suppress(StoreUnavailable):
        context.service.store.database.check_schema()
    python = start_python(context.dispatch, context.settings, python_imports)
    worker = TaskWorker(context.dispatch, context.tubes(use_tube), stop_when_empty=stop_when_empty,
                        stop_when_drained=stop_when_drained, max_tasks=max_tasks,
                        limits=WorkerLimits(cycles_limit, cycle_delay, memory_limit, time_limit), python=python)
    sys.exit(worker.run())
