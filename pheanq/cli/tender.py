"""The commands of the pool: `pheanq worker-tender` and `stop-worker-tender`."""

from __future__ import annotations

import os
import shlex
import sys

import click

from pheanq.cli.app import Context, cli, import_option, pass_context, use_tube_option
from pheanq.errors import PheanqError
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS
from pheanq.tender.pool import PoolLimits
from pheanq.tender.reconciler import DEFAULT_INTERVAL_SECONDS
from pheanq.tender.registry import stop_tenders
from pheanq.tender.tender import Tender, TenderOptions
from pheanq.worker.python_imports import check_importable

# What a worker-tender runs when --worker-command is not given: this installation's task-worker.
DEFAULT_WORKER_COMMAND = [sys.executable, "-m", "pheanq", "task-worker"]
# The global flags a tender hands on to its workers, so they reach the same settings.
_FLAG_ENV = {"config_file": "PHEANQ_CONFIG", "database_url": "PHEANQ_DATABASE_URL", "beanstalkd": "PHEANQ_BEANSTALKD"}


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
@click.option("--no-scheduler", is_flag=True, help="Do not run the recurring schedules here (every tender runs "
              "them by default; each slot is queued once however many do).")
@import_option
@pass_context
def worker_tender(context: Context, use_tube: str | None, worker_command: str | None, min_workers: int,
                  spare_workers: int, max_workers: int, max_worker_age: float, max_worker_buffer: int,
                  max_worker_memory: float | None, max_worker_tasks: int | None, shutdown_timeout: float,
                  allow_second_tender: bool, reconcile_interval: float, min_age: float, no_scheduler: bool,
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
                            worker_env, reconcile_interval, min_age, not no_scheduler, python_imports)
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

