"""The commands that run processes: `pheanq task-worker`, `worker-tender` and `stop-worker-tender`."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import click

from pheanq.cli.app import Context, cli, pass_context, use_tube_option
from pheanq.errors import PheanqError, StoreUnavailable
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS
from pheanq.tender.pool import PoolLimits
from pheanq.tender.reconciler import DEFAULT_INTERVAL_SECONDS
from pheanq.tender.registry import stop_tenders
from pheanq.tender.tender import Tender, TenderOptions
from pheanq.worker.cron import SingleInstance, WorkerLimits
from pheanq.worker.loop import TaskWorker
from pheanq.worker.python_imports import check_importable, start_python

# What a worker-tender runs when --worker-command is not given: this installation's task-worker.
DEFAULT_WORKER_COMMAND = [sys.executable, "-m", "pheanq", "task-worker"]
# The global flags a tender hands on to its workers, so they reach the same settings.
_FLAG_ENV = {"config_file": "PHEANQ_CONFIG", "database_url": "PHEANQ_DATABASE_URL", "beanstalkd": "PHEANQ_BEANSTALKD"}


import_option = click.option(
    "--import", "python_imports", multiple=True, metavar="MODULE",
    help="Import this module of the application once, and run the Python tasks (@pheanq.task) it registers; "
    "repeat for more. Added to [python] imports of pheanq.toml.")


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


@cli.command("worker-tender")
@use_tube_option("Tube(s) the workers take tasks from, comma-separated.")
@click.option("--worker-command", metavar="COMMAND", help="The worker to run, as a command line; "
              "`--use-tube T` is appended. [default: this installation's `pheanq task-worker`]")
@click.option("--min-workers", type=click.IntRange(min=0), default=2, show_default=True, metavar="N")
@click.option("--spare-workers", type=click.IntRange(min=0), default=1, show_default=True, metavar="N",
              help="Idle workers to keep ready.")
@click.option("--max-workers", type=click.IntRange(min=1), default=5, show_default=True, metavar="N")
@click.option("--max-worker-age", type=click.FloatRange(min=0), default=600, show_default=True, metavar="SECONDS",
              help="Retire a worker this old (after its current task).")
@click.option("--max-worker-buffer", type=click.IntRange(min=0), default=6_000_000, show_default=True,
              metavar="BYTES", help="Retire a worker that has printed more than this.")
@click.option("--max-worker-memory", type=click.FloatRange(min=1), metavar="MB",
              help="Retire a worker whose resident memory, with its children's, exceeds this.")
@click.option("--max-worker-tasks", type=click.IntRange(min=1), metavar="N", help="Retire a worker after N tasks.")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=60, show_default=True,
              metavar="SECONDS", help="On SIGTERM, how long running tasks may take before they are interrupted.")
@click.option("--allow-second-tender", is_flag=True, help="Run even if a tender for the tube runs here already.")
@click.option("--reconcile-interval", type=click.FloatRange(min=0), default=DEFAULT_INTERVAL_SECONDS,
              show_default=True, metavar="SECONDS",
              help="Run the reconciler for the tube(s) this often (one at a time across machines), and at once when "
              "beanstalkd restarted; 0: never.")
@click.option("--min-age", type=click.FloatRange(min=0), default=DEFAULT_MIN_AGE_SECONDS, show_default=True,
              metavar="SECONDS", help="The reconciler leaves waiting tasks changed more recently than this alone "
              "(their put may be in flight), as `pheanq reconcile --min-age`.")
@import_option
@pass_context
def worker_tender(context: Context, use_tube: str | None, worker_command: str | None, min_workers: int,
                  spare_workers: int, max_workers: int, max_worker_age: float, max_worker_buffer: int,
                  max_worker_memory: float | None, max_worker_tasks: int | None, shutdown_timeout: float,
                  allow_second_tender: bool, reconcile_interval: float, min_age: float,
                  python_imports: tuple[str, ...]) -> None:
    """Keep a pool of task-workers alive for the tube (SIGTERM: drain and stop; SIGHUP: replace them)."""
    command = DEFAULT_WORKER_COMMAND if worker_command is None else _split_command(worker_command)
    limits = PoolLimits(min_workers, spare_workers, max_workers, max_worker_age, max_worker_buffer,
                        max_worker_memory, max_worker_tasks)
    problem = limits.problem()
    if problem is not None:
        raise click.UsageError(problem)
    worker_env = {_FLAG_ENV[key]: str(value) for key, value in context.flags.items() if value is not None}
    if "PHEANQ_CONFIG" in worker_env:
        worker_env["PHEANQ_CONFIG"] = os.path.abspath(worker_env["PHEANQ_CONFIG"])
    if python_imports:
        modules = check_importable([*context.settings.python_imports, *python_imports])
        worker_env["PHEANQ_PYTHON_IMPORTS"] = ",".join(modules)
    options = TenderOptions(context.tubes(use_tube), command, limits, shutdown_timeout, allow_second_tender,
                            worker_env, reconcile_interval, min_age)
    sys.exit(Tender(options, context.run_dir, context.dispatch).run())


@cli.command("stop-worker-tender")
@use_tube_option("Stop the tender(s) of this tube.")
@click.option("--timeout", type=click.FloatRange(min=0), default=120, show_default=True, metavar="SECONDS",
              help="How long to wait for them to finish their tasks and exit.")
@pass_context
def stop_worker_tender(context: Context, use_tube: str | None, timeout: float) -> None:
    """Stop the worker-tender(s) of a tube on this machine and wait until they are gone."""
    tube = context.tubes(use_tube)[0]
    outcome = stop_tenders(context.run_dir, tube, timeout)
    if not outcome.stopped and not outcome.running:
        click.echo(f"no worker-tender for tube {tube} runs on this machine")
    for record in outcome.unverified:
        click.echo(f"not signalled: pid {record.pid} named by {record.path} is not the worker-tender that wrote it",
                   err=True)
    for record in outcome.stopped:
        click.echo(f"stopped worker-tender {record.pid} (tubes {','.join(record.tubes)})")
    if outcome.running:
        pids = ", ".join(str(record.pid) for record in outcome.running)
        raise PheanqError(f"worker-tender(s) {pids} still running after {timeout:.0f}s")


def _split_command(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not a command line: {error}", param_hint="'--worker-command'") from None
    if not argv:
        raise click.BadParameter("is empty", param_hint="'--worker-command'")
    return argv

