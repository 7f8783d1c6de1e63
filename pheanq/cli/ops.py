"""The operator's commands: `pheanq status`, `show`, `reconcile`, `pause`, `resume`, `buried` and `db upgrade`."""

from __future__ import annotations

import json
import sys

import click

from pheanq.cli.app import Context, cli, pass_context, use_tube_option
from pheanq.limits import LISTING_PAGE, MAX_BURIED_RECORDS
from pheanq.ops.buried import delete_buried, kick_buried, list_buried
from pheanq.ops.pause import FOREVER_SECONDS, pause_tube, resume_tube
from pheanq.ops.reconcile import DEFAULT_MIN_AGE_SECONDS, reconcile
from pheanq.ops.report import format_buried, format_status, format_task, status_report, task_report
from pheanq.ops.watch import MIN_WATCH_INTERVAL, watch_status
from pheanq.storage.migrate import upgrade_database


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (with --watch, a line each time).")
@click.option("--watch", is_flag=True, help="Draw it again every --interval seconds, with the tasks each tube ended "
              "in the last minute, until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=MIN_WATCH_INTERVAL), default=2.0, show_default=True,
              metavar="SECONDS", help="With --watch: the time between two drawings.")
@click.option("--count", "drawings", type=click.IntRange(min=1), metavar="N",
              help="With --watch: stop after N drawings. [default: until Ctrl-C]")
@pass_context
def status(context: Context, as_json: bool, watch: bool, interval: float, drawings: int | None) -> None:
    """Task counts per tube and status from SQL, beside beanstalkd's own tube stats; the limits and their use."""
    context.import_application()
    if not watch:
        if drawings is not None:
            raise click.UsageError("--count goes with --watch")
        report = status_report(context.dispatch)
        click.echo(json.dumps(report, indent=2) if as_json else format_status(report))
        return
    try:
        watch_status(context.dispatch, sys.stdout, interval, drawings, as_json, in_place=sys.stdout.isatty())
    except KeyboardInterrupt:
        click.echo("")  # Ctrl-C is how a watch ends: no traceback, exit code 0


@cli.command("show")
@click.argument("task_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def show(context: Context, task_id: int, as_json: bool) -> None:
    """One task: its status, times, worker and log."""
    report = task_report(context.service.find_task(task_id))
    click.echo(json.dumps(report, indent=2) if as_json else format_task(report))


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
    report = reconcile(context.dispatch, tube, dry_run=dry_run, min_age=min_age)
    for action in report.actions:
        click.echo(action)
    click.echo(("dry run: " if dry_run else "") + report.summary(dry_run))


@cli.command("pause")
@use_tube_option("The tube to pause.")
@click.option("--for", "seconds", type=click.IntRange(min=1, max=FOREVER_SECONDS), metavar="SECONDS",
              help="Resume by itself after this long. [default: until `pheanq resume`]")
@pass_context
def pause(context: Context, use_tube: str | None, seconds: int | None) -> None:
    """Stop workers taking tasks from the tube (running tasks finish); queueing goes on."""
    tube = context.tube(use_tube)
    until = pause_tube(context.dispatch, tube, seconds)
    click.echo(f"tube {tube} paused " + (f"until {until:%Y-%m-%d %H:%M:%S} UTC" if seconds else
                                         "until `pheanq resume`"))


@cli.command("resume")
@use_tube_option("The tube to resume.")
@pass_context
def resume(context: Context, use_tube: str | None) -> None:
    """Let workers take tasks from a paused tube again."""
    tube = context.tube(use_tube)
    click.echo(f"tube {tube} resumed" if resume_tube(context.dispatch, tube) else f"tube {tube} was not paused")


@cli.group("buried", invoke_without_command=True)
@use_tube_option("The tube whose buried jobs to list.")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_BURIED_RECORDS), default=LISTING_PAGE,
              show_default=True, metavar="N", help="List at most N jobs (one page).")
@click.option("--after", type=click.IntRange(min=0), default=0, metavar="JOB_ID",
              help="List the jobs after this job id: the next page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def buried(ctx: click.Context, use_tube: str | None, limit: int, after: int, as_json: bool) -> None:
    """List the jobs workers buried (refused to run), with the reason, a page at a time; `kick` or `delete` them."""
    context: Context = ctx.obj
    ctx.meta["pheanq.buried_tube"] = use_tube
    if ctx.invoked_subcommand is not None:
        return
    listing = list_buried(context.dispatch, context.tube(use_tube), after, limit)
    click.echo(json.dumps(listing.to_json(), indent=2) if as_json else format_buried(listing, limit))


@buried.command("kick")
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every buried job of the tube.")
@use_tube_option("The tube of the buried jobs.")
@click.pass_context
def buried_kick(ctx: click.Context, job_ids: tuple[int, ...], every: bool, use_tube: str | None) -> None:
    """Make buried jobs ready again (after fixing what made a worker bury them)."""
    context, tube, chosen = _buried_target(ctx, job_ids, every, use_tube)
    click.echo(f"kicked {kick_buried(context.dispatch, tube, chosen)} buried job(s) of tube {tube}")


@buried.command("delete")
@click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every buried job of the tube.")
@use_tube_option("The tube of the buried jobs.")
@click.pass_context
def buried_delete(ctx: click.Context, job_ids: tuple[int, ...], every: bool, use_tube: str | None) -> None:
    """Delete buried jobs. A task whose job is deleted still runs if the table says it must (reconciler)."""
    context, tube, chosen = _buried_target(ctx, job_ids, every, use_tube)
    click.echo(f"deleted {len(delete_buried(context.dispatch, tube, chosen))} buried job(s) of tube {tube}")


def _buried_target(ctx: click.Context, job_ids: tuple[int, ...], every: bool,
                   use_tube: str | None) -> tuple[Context, str, list[int] | None]:
    if every == bool(job_ids):
        raise click.UsageError("give job ids or --all (not both)")
    context: Context = ctx.obj
    tube = context.tube(use_tube or ctx.meta.get("pheanq.buried_tube"))
    return context, tube, None if every else list(job_ids)


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

