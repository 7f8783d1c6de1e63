"""`pheanq tasks`: list the tasks a filter selects, a page at a time, or cancel or regenerate all of them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys

import click

from pheanq.cli.app import Context, cli, pass_context
from pheanq.clock import utc_now
from pheanq.config import check_tube_name
from pheanq.limits import LISTING_PAGE, MAX_LISTING_PAGE, MAX_MATCH_TEXT, MAX_TASK_ID, MAX_UNIQUE_KEY
from pheanq.ops.selection import (
    BulkOutcome,
    cancel_selection,
    count_selection,
    format_listing,
    list_selection,
    regenerate_selection,
)
from pheanq.ops.terminal import one_line
from pheanq.producer.cancel import canceller
from pheanq.status import Status
from pheanq.storage.listings import TaskFilter

# An age: a whole number and its unit, meaning that long ago.
AGE = re.compile(r"^(\d{1,9})([smhdw])\Z")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def utc_time(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.datetime | None:
    """A time option: an ISO 8601 date or datetime, taken as UTC unless it names its offset, or an age (`30m`,
    `2h`, `7d`: that long ago); as naive UTC, the table's clock."""
    if value is None:
        return None
    text = value.strip()
    try:
        if age := AGE.match(text):
            return utc_now() - dt.timedelta(seconds=int(age[1]) * AGE_UNITS[age[2]])
        parsed = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{value!r} is not a time: give an ISO 8601 date or datetime (UTC unless it has "
                                 "an offset), or an age such as 30m, 2h, 7d (s, m, h, d, w)") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return parsed


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
@click.option("--yes", is_flag=True, help="Act without asking (needed when stdin is not a terminal).")
@click.option("--by", metavar="NAME", help="Who cancels, for the tasks' logs. [default: user@host]")
@pass_context
def tasks(context: Context, statuses: tuple[str, ...], tubes: tuple[str, ...], commands: tuple[str, ...],
          batch_id: int | None, unique_key: str | None, created_after: dt.datetime | None,
          created_before: dt.datetime | None, finished_after: dt.datetime | None,
          finished_before: dt.datetime | None, match: str | None, limit: int | None, after: int | None,
          as_json: bool, cancel: bool, regenerate: bool, yes: bool, by: str | None) -> None:
    """List tasks newest first, filtered, a page at a time; or cancel or regenerate every task the filter
    selects."""
    where = TaskFilter(
        statuses=tuple(_statuses(statuses)), tubes=tuple(check_tube_name(tube, "--tube") for tube in _split(tubes)),
        commands=tuple(_split(commands)), batch_id=batch_id,
        unique_key=_text(unique_key, "--unique-key", MAX_UNIQUE_KEY),
        created_after=created_after, created_before=created_before, finished_after=finished_after,
        finished_before=finished_before, match=_text(match, "--match", MAX_MATCH_TEXT))
    if cancel and regenerate:
        raise click.UsageError("--cancel and --regenerate exclude each other: give one")
    if not (cancel or regenerate):
        if yes or by is not None:
            raise click.UsageError(f"{'--yes' if yes else '--by'} goes with --cancel or --regenerate")
        listing = list_selection(context.dispatch, where, after, limit or LISTING_PAGE)
        if as_json:
            click.echo(json.dumps(listing.to_json(), indent=2))
        else:
            page = [] if limit is None else ["--limit", str(limit)]
            click.echo(format_listing(listing, ["pheanq", "tasks", *filter_options(where), *page]))
        return
    action = "cancel" if cancel else "regenerate"
    if limit is not None or after is not None:
        raise click.UsageError(f"--{action} acts on every selected task: --limit and --after page a listing only")
    if by is not None and not cancel:
        raise click.UsageError("--by goes with --cancel")
    who = canceller(by) if cancel else ""
    if not yes:
        _confirm(context, where, action)
    outcome = cancel_selection(context.dispatch, where, who) if cancel else regenerate_selection(context.dispatch,
                                                                                                 where)
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
    """Repeated options and comma-separated lists, as one list without blanks or repeats, in the order given."""
    return list(dict.fromkeys(part.strip() for value in values for part in value.split(",") if part.strip()))


def _statuses(values: tuple[str, ...]) -> list[Status]:
    known = {status.value: status for status in Status}
    for name in _split(values):
        if name not in known:
            raise click.BadParameter(f"{name!r} is not a status (one of {', '.join(known)})", param_hint="'--status'")
    return [known[name] for name in _split(values)]


def _text(value: str | None, option: str, longest: int) -> str | None:
    if value is not None and not 0 < len(value) <= longest:
        raise click.BadParameter(f"give 1 to {longest} characters, not {len(value)}", param_hint=f"'{option}'")
    return value
