"""The `pheanq batch` commands: a batch's progress, cancel and close."""

from __future__ import annotations

import json

import click

from pheanq.cli.app import Context, cli, pass_context
from pheanq.ops.report import format_batch
from pheanq.ops.terminal import one_line


@cli.group("batch")
def batch() -> None:
    """Batches of tasks: progress, cancel, close."""


@batch.command("show")
@click.argument("batch_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def show(context: Context, batch_id: int, as_json: bool) -> None:
    """A batch's progress: total, done, failed, cancelled and pending tasks, and its callbacks."""
    progress = context.service.batch(batch_id).progress()
    if as_json:
        click.echo(json.dumps(progress.as_dict(), indent=2))
        return
    click.echo(format_batch(progress.summary(), progress.as_dict(), progress.callbacks))


@batch.command("cancel")
@click.argument("batch_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--by", metavar="NAME", help="Who cancels, for the tasks' logs. [default: user@host]")
@pass_context
def cancel_batch(context: Context, batch_id: int, by: str | None) -> None:
    """Close the batch and cancel each of its tasks that has not ended."""
    cancelled = context.service.batch(batch_id).cancel(by)
    click.echo(f"batch {batch_id}: closed; {cancelled} task(s) cancelled")


@batch.command("close")
@click.argument("batch_id", metavar="ID", type=click.IntRange(min=1))
@pass_context
def close(context: Context, batch_id: int) -> None:
    """Take no more tasks into the batch (if its planner died before closing it): it finishes once they end."""
    handle = context.service.batch(batch_id)
    handle.close()
    click.echo(one_line(handle.progress().summary()))
