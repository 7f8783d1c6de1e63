"""The `pheanq` command: parse, call, print. Behaviour lives in the modules it calls."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from pheanq.buried import delete_buried, kick_buried, list_buried
from pheanq.config import Settings, check_tube_name, load_settings
from pheanq.errors import InvalidInput, NotFound, PheanqError, StoreUnavailable, WrongStatus
from pheanq.example import ExampleTask, run_example
from pheanq.migrate import upgrade_database
from pheanq.pause import FOREVER_SECONDS, pause_tube, resume_tube
from pheanq.pool import PoolLimits
from pheanq.reconcile import DEFAULT_INTERVAL_SECONDS, DEFAULT_MIN_AGE_SECONDS, reconcile
from pheanq.report import format_buried, format_status, format_task, status_report, task_report
from pheanq.retry import BACKOFFS, MAX_ATTEMPTS, MAX_DELAY, Retry, parse_exit_codes
from pheanq.service import DEFAULT_PRIORITY, MAX_PRIORITY, TaskQueueService
from pheanq.tender import Tender, TenderOptions
from pheanq.tenders import default_run_dir, stop_tenders
from pheanq.worker import Worker
from pheanq.worker_limits import SingleInstance, WorkerLimits

# Above this many tasks, add-example-task draws a progress bar.
PROGRESS_BAR_FROM = 100
# Commands that log what they do at INFO level without -v.
LONG_RUNNING = ("task-worker", "worker-tender")
# What a worker-tender runs when --worker-command is not given: this installation's task-worker.
DEFAULT_WORKER_COMMAND = [sys.executable, "-m", "pheanq", "task-worker"]
# The global flags a tender hands on to its workers, so they reach the same settings.
_FLAG_ENV = {"config_file": "PHEANQ_CONFIG", "database_url": "PHEANQ_DATABASE_URL", "beanstalkd": "PHEANQ_BEANSTALKD"}


class _NeverRaised(click.UsageError):
    """Stands in for NoArgsIsHelpError on click 8.1, which prints a group's help itself."""


# click >= 8.2 raises this UsageError when a group is called without a command.
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", _NeverRaised)


def main() -> NoReturn:
    """Entry point: errors become one line on stderr; bad input exits 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except _NO_ARGS_IS_HELP as error:
        # A group called without a command: its help is the answer, not an error message (click >= 8.2).
        click.echo(error.format_message(), err=True)
        sys.exit(error.exit_code)
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else "pheanq"
        hint = f" (see {where} --help)" if error.ctx else ""
        click.echo(f"{where}: error: {error.format_message()}{hint}", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"pheanq: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.Abort:
        click.echo("pheanq: aborted", err=True)
        sys.exit(1)
    except PheanqError as error:
        click.echo(f"pheanq: error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


class Context:
    """What every command reaches: the settings (read on first use) and a service made from them."""

    def __init__(self, flags: dict[str, Any]) -> None:
        self.flags = flags
        self._settings: Settings | None = None
        self._service: TaskQueueService | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.flags)
        return self._settings

    @property
    def service(self) -> TaskQueueService:
        if self._service is None:
            self._service = TaskQueueService(self.settings)
        return self._service

    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir) if self.settings.run_dir else default_run_dir()

    def tube(self, use_tube: str | None) -> str:
        """The one tube a command acts on (several are refused)."""
        tubes = self.tubes(use_tube)
        if len(tubes) > 1:
            raise click.BadParameter(f"{use_tube!r}: this command takes one tube, not several",
                                     param_hint="'--use-tube'")
        return tubes[0]

    def tubes(self, use_tube: str | None) -> list[str]:
        if use_tube is None:
            return [self.settings.default_tube]
        return [check_tube_name(name.strip(), "--use-tube") for name in use_tube.split(",")]


pass_context = click.make_pass_decorator(Context)


def _use_tube_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--use-tube", metavar="TUBE", help=help_text + " [default: default_tube setting]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="PATH", help="pheanq.toml to read [env: PHEANQ_CONFIG].")
@click.option("--database-url", metavar="URL", help="SQLAlchemy URL of the task table [env: PHEANQ_DATABASE_URL].")
@click.option("--beanstalkd", metavar="HOST:PORT", help="beanstalkd server [env: PHEANQ_BEANSTALKD].")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.version_option(package_name="pheanq")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, database_url: str | None, beanstalkd: str | None,
        verbose: int) -> None:
    """pheanq: a beanstalkd job queue whose SQL table says where every task is."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose or ctx.invoked_subcommand in LONG_RUNNING \
        else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    ctx.obj = Context({"config_file": config_file, "database_url": database_url, "beanstalkd": beanstalkd})


@cli.command("task-worker")
@_use_tube_option("Tube(s) to take tasks from, comma-separated.")
@click.option("--stop-when-empty", is_flag=True, help="Exit when no job is ready instead of waiting.")
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
@pass_context
def task_worker(context: Context, use_tube: str | None, stop_when_empty: bool, max_tasks: int | None,
                cycles_limit: int | None, cycle_delay: float, memory_limit: float | None, time_limit: float | None,
                single_id: str | None, pid_dir: str | None) -> None:
    """Run tasks from the tube until stopped (SIGTERM: finish the task, then exit)."""
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
        context.service.store.check_schema()
    worker = Worker(context.service, context.tubes(use_tube), stop_when_empty=stop_when_empty,
                    max_tasks=max_tasks, limits=WorkerLimits(cycles_limit, cycle_delay, memory_limit, time_limit))
    sys.exit(worker.run())


@cli.command("worker-tender")
@_use_tube_option("Tube(s) the workers take tasks from, comma-separated.")
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
              help="Run the reconciler for the tube(s) this often (one at a time across machines); 0: never.")
@pass_context
def worker_tender(context: Context, use_tube: str | None, worker_command: str | None, min_workers: int,
                  spare_workers: int, max_workers: int, max_worker_age: float, max_worker_buffer: int,
                  max_worker_memory: float | None, max_worker_tasks: int | None, shutdown_timeout: float,
                  allow_second_tender: bool, reconcile_interval: float) -> None:
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
    options = TenderOptions(context.tubes(use_tube), command, limits, shutdown_timeout, allow_second_tender,
                            worker_env, reconcile_interval)
    sys.exit(Tender(options, context.run_dir, context.service).run())


@cli.command("stop-worker-tender")
@_use_tube_option("Stop the tender(s) of this tube.")
@click.option("--timeout", type=click.FloatRange(min=0), default=120, show_default=True, metavar="SECONDS",
              help="How long to wait for them to finish their tasks and exit.")
@pass_context
def stop_worker_tender(context: Context, use_tube: str | None, timeout: float) -> None:
    """Stop the worker-tender(s) of a tube on this machine and wait until they are gone."""
    tube = context.tubes(use_tube)[0]
    stopped, running = stop_tenders(context.run_dir, tube, timeout)
    if not stopped and not running:
        click.echo(f"no worker-tender for tube {tube} runs on this machine")
    for record in stopped:
        click.echo(f"stopped worker-tender {record.pid} (tubes {','.join(record.tubes)})")
    if running:
        pids = ", ".join(str(record.pid) for record in running)
        raise PheanqError(f"worker-tender(s) {pids} still running after {timeout:.0f}s")


@cli.command("regenerate-failed-task")
@click.option("--id", "ids", required=True, metavar="ID[,ID...]", help="Failed task id(s), comma-separated.")
@_use_tube_option("Accepted for compatibility; a task goes back to its own tube.")
@pass_context
def regenerate_failed_task(context: Context, ids: str, use_tube: str | None) -> None:
    """Put failed tasks back into their tube (status `restarted`)."""
    task_ids = _parse_ids(ids)
    problems = 0
    for task_id in task_ids:
        try:
            job_id = context.service.regenerate_task(task_id)
        except (NotFound, WrongStatus, InvalidInput) as error:  # a problem of this task; others stop the command
            click.echo(f"task {task_id}: not regenerated: {error}", err=True)
            problems += 1
            continue
        click.echo(f"task {task_id}: restarted as job {job_id}")
    if problems:
        sys.exit(1)


@cli.command("reconcile")
@click.option("--use-tube", metavar="TUBE", help="Only this tube's tasks. [default: every tube]")
@click.option("--dry-run", is_flag=True, help="Only say what would be sent again.")
@click.option("--min-age", type=click.FloatRange(min=0), default=DEFAULT_MIN_AGE_SECONDS, show_default=True,
              metavar="SECONDS", help="Leave waiting tasks changed more recently than this alone (their put "
              "may be in flight).")
@pass_context
def reconcile_command(context: Context, use_tube: str | None, dry_run: bool, min_age: float) -> None:
    """Send again every task the table says must run but beanstalkd has no job for."""
    tube = None if use_tube is None else context.tube(use_tube)
    report = reconcile(context.service, tube, dry_run=dry_run, min_age=min_age)
    for action in report.actions:
        click.echo(action)
    click.echo(("dry run: " if dry_run else "") + report.summary(dry_run))


@cli.command("pause")
@_use_tube_option("The tube to pause.")
@click.option("--for", "seconds", type=click.IntRange(min=1, max=FOREVER_SECONDS), metavar="SECONDS",
              help="Resume by itself after this long. [default: until `pheanq resume`]")
@pass_context
def pause(context: Context, use_tube: str | None, seconds: int | None) -> None:
    """Stop workers taking tasks from the tube (running tasks finish); queueing goes on."""
    tube = context.tube(use_tube)
    until = pause_tube(context.service, tube, seconds)
    click.echo(f"tube {tube} paused " + (f"until {until:%Y-%m-%d %H:%M:%S} UTC" if seconds else
                                         "until `pheanq resume`"))


@cli.command("resume")
@_use_tube_option("The tube to resume.")
@pass_context
def resume(context: Context, use_tube: str | None) -> None:
    """Let workers take tasks from a paused tube again."""
    tube = context.tube(use_tube)
    click.echo(f"tube {tube} resumed" if resume_tube(context.service, tube) else f"tube {tube} was not paused")


@cli.group("buried", invoke_without_command=True)
@_use_tube_option("The tube whose buried jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def buried(ctx: click.Context, use_tube: str | None, as_json: bool) -> None:
    """List the jobs workers buried (refused to run), with the reason; `kick` or `delete` them."""
    context: Context = ctx.obj
    ctx.meta["pheanq.buried_tube"] = use_tube
    if ctx.invoked_subcommand is not None:
        return
    listing = list_buried(context.service, context.tube(use_tube))
    click.echo(json.dumps(listing.to_json(), indent=2) if as_json else format_buried(listing))


@buried.command("kick")
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every buried job of the tube.")
@_use_tube_option("The tube of the buried jobs.")
@click.pass_context
def buried_kick(ctx: click.Context, job_ids: tuple[int, ...], every: bool, use_tube: str | None) -> None:
    """Make buried jobs ready again (after fixing what made a worker bury them)."""
    context, tube, chosen = _buried_target(ctx, job_ids, every, use_tube)
    click.echo(f"kicked {kick_buried(context.service, tube, chosen)} buried job(s) of tube {tube}")


@buried.command("delete")
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every buried job of the tube.")
@_use_tube_option("The tube of the buried jobs.")
@click.pass_context
def buried_delete(ctx: click.Context, job_ids: tuple[int, ...], every: bool, use_tube: str | None) -> None:
    """Delete buried jobs. A task whose job is deleted still runs if the table says it must (reconciler)."""
    context, tube, chosen = _buried_target(ctx, job_ids, every, use_tube)
    click.echo(f"deleted {len(delete_buried(context.service, tube, chosen))} buried job(s) of tube {tube}")


def _buried_target(ctx: click.Context, job_ids: tuple[int, ...], every: bool,
                   use_tube: str | None) -> tuple[Context, str, list[int] | None]:
    if every == bool(job_ids):
        raise click.UsageError("give job ids or --all (not both)")
    context: Context = ctx.obj
    tube = context.tube(use_tube or ctx.meta.get("pheanq.buried_tube"))
    return context, tube, None if every else list(job_ids)


@cli.command("task-cleanup")
@click.option("--period", type=click.IntRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="Delete done tasks that finished more than this long ago.")
@pass_context
def task_cleanup(context: Context, period: int) -> None:
    """Delete old `done` tasks (failed ones are kept). Run it from cron."""
    deleted = context.service.clean_up_tasks(period)
    click.echo(f"deleted {deleted} done task(s) that finished more than {period}s ago")


@cli.command("add-example-task")
@click.option("--total-tasks", type=click.IntRange(min=1), default=1, show_default=True, metavar="N")
@click.option("--wait", type=click.IntRange(min=0), default=1, show_default=True, metavar="SECONDS",
              help="How long each example task runs.")
@click.option("--message", default="hello world", show_default=True, help="What each example task prints.")
@click.option("--timeout", type=click.IntRange(min=1), metavar="SECONDS",
              help="Stop each task's command after this long; the attempt fails. [default: no limit]")
@click.option("--priority", type=click.IntRange(min=0, max=MAX_PRIORITY), default=DEFAULT_PRIORITY,
              show_default=True, metavar="N", help="beanstalkd priority: 0 is the most urgent.")
@click.option("--delay", type=click.IntRange(min=0, max=MAX_PRIORITY), default=0, show_default=True,
              metavar="SECONDS", help="Not to run before this many seconds from now.")
@click.option("--max-attempts", type=click.IntRange(min=1, max=MAX_ATTEMPTS), default=1, show_default=True,
              metavar="N", help="Run a failed task again, up to N attempts in all.")
@click.option("--backoff", type=click.Choice(BACKOFFS), default="exponential", show_default=True,
              help="How the wait between attempts grows.")
@click.option("--retry-delay", type=click.IntRange(min=0, max=MAX_DELAY), default=10, show_default=True,
              metavar="SECONDS", help="The wait before the second attempt (doubling each time if exponential).")
@click.option("--retry-cap", type=click.IntRange(min=0, max=MAX_DELAY), default=3600, show_default=True,
              metavar="SECONDS", help="The longest wait between attempts.")
@click.option("--non-retryable", metavar="CODE[,CODE...]", help="Exit codes that fail the task at once.")
@click.option("--after", metavar="ID[,ID...]", help="Wait until these tasks are done.")
@click.option("--unique-key", metavar="KEY", help="Queue nothing if a task with this key has not ended.")
@click.option("--batch", "batch_id", type=click.IntRange(min=1), metavar="ID", help="Join this open batch.")
@_use_tube_option("Tube to queue into.")
@pass_context
def add_example_task(context: Context, total_tasks: int, wait: int, message: str, timeout: int | None,
                     priority: int, delay: int, max_attempts: int, backoff: str, retry_delay: int, retry_cap: int,
                     non_retryable: str | None, after: str | None, unique_key: str | None, batch_id: int | None,
                     use_tube: str | None) -> None:
    """Queue example tasks: a quick check that beanstalkd, the database and the workers are set up."""
    tube = context.tubes(use_tube)[0]
    service = context.service
    retry = Retry(max_attempts, backoff, retry_delay, retry_cap,  # type: ignore[arg-type]  # a BACKOFFS choice
                  non_retryable=parse_exit_codes(non_retryable) if non_retryable else frozenset())
    parents = _parse_ids(after, "--after") if after else []
    ids: list[int] = []
    with click.progressbar(length=total_tasks, label="queueing", file=sys.stderr,
                           hidden=total_tasks < PROGRESS_BAR_FROM) as progress:
        for _ in range(total_tasks):
            ids.append(service.queue_task(ExampleTask(wait, message), tube=tube, priority=priority, delay=delay,
                                          timeout=timeout, retry=retry, after=parents, unique_key=unique_key,
                                          batch=batch_id))
            progress.update(1)
    unique = sorted(set(ids))  # with --unique-key, every call after the first returns the same task
    span = f"{unique[0]}" if len(unique) == 1 else f"{unique[0]}..{unique[-1]}"
    click.echo(f"queued {len(unique)} example task(s) into tube {tube}: id {span}")


@cli.command("example-task-worker")
@click.argument("wait", type=click.IntRange(min=0))
@click.option("--message", default="hello world", show_default=True, help="The message to print.")
def example_task_worker(wait: int, message: str) -> None:
    """The example task's command: a line, a dot a second for WAIT seconds, then the message."""
    run_example(wait, message, sys.stdout)


@cli.group("db")
def db() -> None:
    """The task table's schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(context: Context) -> None:
    """Create or upgrade pheanq's tables to the newest schema (safe to run again)."""
    store = context.service.store
    before, after = upgrade_database(store)
    if before == after:
        click.echo(f"database {store.safe_url} is already at revision {after}")
    else:
        click.echo(f"database {store.safe_url} upgraded from {before or 'empty'} to revision {after}")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def status(context: Context, as_json: bool) -> None:
    """Task counts per tube and status from SQL, beside beanstalkd's own tube stats."""
    report = status_report(context.service)
    click.echo(json.dumps(report, indent=2) if as_json else format_status(report))


@cli.command("show")
@click.argument("task_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def show(context: Context, task_id: int, as_json: bool) -> None:
    """One task: its status, times, worker and log."""
    report = task_report(context.service.find_task(task_id))
    click.echo(json.dumps(report, indent=2) if as_json else format_task(report))


def _split_command(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not a command line: {error}", param_hint="'--worker-command'") from None
    if not argv:
        raise click.BadParameter("is empty", param_hint="'--worker-command'")
    return argv


def _parse_ids(text: str, option: str = "--id") -> list[int]:
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) == 0:
            raise click.BadParameter(f"{part!r} is not a task id (a positive whole number)", param_hint=f"'{option}'")
        ids.append(int(part))
    return ids


# Registered last: they use the group and the helpers above.
import pheanq.cli_workflow  # noqa: E402,F401
