"""`pheanq tasks`: list the tasks a filter selects, a page at a time, or cancel, regenerate or delete all of them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys

import click

from pheanq.cli.app import Context, cli, pass_context
from pheanq.config import check_tube_name
from pheanq.errors import InvalidInput
from pheanq.limits import LISTING_PAGE, MAX_LISTING_PAGE, MAX_MATCH_TEXT, MAX_TASK_ID, MAX_UNIQUE_KEY
from pheanq.ops.filters import bounded_text, parse_statuses, parse_time, split_words
from pheanq.ops.selection import (
    BulkOutcome,
    cancel_selection,
    count_selection,
    delete_selection,
    format_listing,
    list_selection,
    regenerate_selection,
)
from pheanq.ops.terminal import one_line
from pheanq.producer.cancel import canceller
from pheanq.status import Status
from pheanq.storage.listings import TaskFilter


def utc_time(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    """A time option: an ISO 8601 date or datetime (UTC unless it names its offset) or an age (`30m`, `2h`, `7d`:
    that long ago); as naive UTC, the table's clock."""
    if value is None:
        return None
    try:
        return parse_time(value, str(param.name))
    except InvalidInput as error:
        raise click.BadParameter(str(error).partition(": ")[2]) from None


@cli.command("tasks")
@click.option("--status", "statuses", multiple=True, metavar="S[,S...]",
              help=f"Only tasks in these statuses ({', '.join(status.value for status in Status)}).")
@click.option("--tube", "tubes", multiple=True, metavar="T[,T...]", help="Only tasks of these tubes.")
@click.option("--command", "commands", multiple=True, metavar="NAME[,NAME...]",
              help="Only tasks of these registered commands or Python tasks (by name).")
@click.option("--batch", "batch_id", type=click.IntRange(min=1, max=MAX_TASK_ID), metavar="ID",
              help="Only the tasks of this batch.")
@click.option("--unique-key", metavar="KEY", help="Only tasks queued with this unique key.")
@click.option("--created-after", callback=utc_time, metavar="TIME", help="Only tasks created at or after it.")
@click.option("--created-before", callback=utc_time, metavar="TIME", help="Only tasks created before it.")
@click.option("--finished-after", callback=utc_time, metavar="TIME", help="Only tasks that ended at or after it.")
@click.option("--finished-before", callback=utc_time, metavar="TIME", help="Only tasks that ended before it.")
@click.option("--match", metavar="TEXT", help="Only tasks whose stored description (JSON) contains TEXT, ignoring "
              "case; reads every row the other filters leave.")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LISTING_PAGE), metavar="N",
              help=f"List at most N tasks (one page). [default: {LISTING_PAGE}]")
@click.option("--after", type=click.IntRange(min=1, max=MAX_TASK_ID), metavar="ID",
              help="List the tasks after task ID in this order (ids below ID): the next page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--cancel", is_flag=True, help="Cancel every selected task that has not ended (not only one page).")
@click.option("--regenerate", is_flag=True, help="Put every selected failed task back into its tube (restarted).")
@click.option("--delete", is_flag=True, help="Delete every selected task that has ended (done, failed, cancelled, "
              "upstream_failed), except those a running batch or a waiting task still counts.")
@click.option("--yes", is_flag=True, help="Act without asking (needed when stdin is not a terminal).")
@click.option("--by", metavar="NAME", help="Who cancels, for the tasks' logs. [default: user@host]")
@pass_context
def tasks(context: Context, statuses: tuple[str, ...], tubes: tuple[str, ...], commands: tuple[str, ...],
          batch_id: int | None, unique_key: str | None, created_after: dt.datetime | None,
          created_before: dt.datetime | None, finished_after: dt.datetime | None,
          finished_before: dt.datetime | None, match: str | None, limit: int | None, after: int | None,
          as_json: bool, cancel: bool, regenerate: bool, delete: bool, yes: bool, by: str | None) -> None:
    """List tasks newest first, filtered, a page at a time; or cancel, regenerate or delete every task the filter
    selects."""
    where = TaskFilter(
        statuses=tuple(_statuses(statuses)), tubes=tuple(check_tube_name(tube, "--tube") for tube in _split(tubes)),
        commands=tuple(_split(commands)), batch_id=batch_id,
        unique_key=_text(unique_key, "--unique-key", MAX_UNIQUE_KEY),
        created_after=created_after, created_before=created_before, finished_after=finished_after,
        finished_before=finished_before, match=_text(match, "--match", MAX_MATCH_TEXT))
    if cancel + regenerate + delete > 1:
        raise click.UsageError("--cancel, --regenerate and --delete exclude each other: give one")
    if not (cancel or regenerate or delete):
        if yes or by is not None:
            raise click.UsageError(f"{'--yes' if yes else '--by'} goes with --cancel, --regenerate or --delete")
        listing = list_selection(context.dispatch, where, after, limit or LISTING_PAGE)
        if as_json:
            click.echo(json.dumps(listing.to_json(), indent=2))
        else:
            page = [] if limit is None else ["--limit", str(limit)]
            click.echo(format_listing(listing, ["pheanq", "tasks", *filter_options(where), *page]))
        return
    action = "cancel" if cancel else "regenerate" if regenerate else "delete"
    if limit is not None or after is not None:
        raise click.UsageError(f"--{action} acts on every selected task: --limit and --after page a listing only")
    if by is not None and not cancel:
        raise click.UsageError("--by goes with --cancel")
    who = canceller(by) if cancel else ""
    if not yes:
        _confirm(context, where, action)
    outcome = cancel_selection(context.dispatch, where, who) if cancel else \
        regenerate_selection(context.dispatch, where) if regenerate else delete_selection(context.dispatch, where)
    _print_outcome(outcome, as_json)


def filter_options(where: TaskFilter) -> list[str]:
    """The options of `pheanq tasks` that select what `where` selects (times as given, ages resolved)."""
    words: list[str] = []
    for option, values in (("--status", [status.value for status in where.statuses]), ("--tube", where.tubes),
                           ("--command", where.commands)):
        if values:
            words += [option, ",".join(values)]
    for option, value in (("--batch", where.batch_id), ("--unique-key", where.unique_key),
                          ("--created-after", where.created_after), ("--created-before", where.created_before),
                          ("--finished-after", where.finished_after), ("--finished-before", where.finished_before),
                          ("--match", where.match)):
        if value is not None:
            words += [option, value.isoformat() if isinstance(value, dt.datetime) else str(value)]
    return words


def _confirm(context: Context, where: TaskFilter, action: str) -> None:
    """Ask on a terminal, with the number of tasks selected; refuse off one (the caller gives --yes)."""
    if not sys.stdin.isatty():
        raise click.UsageError(f"--{action} asks for confirmation on a terminal; stdin is not one: add --yes")
    count = count_selection(context.dispatch, where)
    chosen = one_line(" ".join(filter_options(where))) or "(no filter: every task)"
    if not click.confirm(f"{count} task(s) match {chosen}; {action} them?", default=False):
        click.echo(f"nothing done: {action} not confirmed", err=True)
        sys.exit(1)


def _print_outcome(outcome: BulkOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(outcome), indent=2))
    else:
        click.echo("\n".join(outcome.report()))


def _split(values: tuple[str, ...]) -> list[str]:
    return split_words(values)


def _statuses(values: tuple[str, ...]) -> list[Status]:
    try:
        return parse_statuses(values, "--status")
    except InvalidInput as error:
        raise click.BadParameter(str(error).partition(": ")[2], param_hint="'--status'") from None


def _text(value: str | None, option: str, longest: int) -> str | None:
    try:
        return bounded_text(value, option, longest)
    except InvalidInput as error:
        raise click.BadParameter(str(error).partition(": ")[2], param_hint=f"'{option}'") from None
