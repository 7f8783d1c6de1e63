"""`pheanq schedules`: the recurring schedules, their last and next slots, and their status."""

from __future__ import annotations

import json

import click

from pheanq.cli.app import Context, cli, import_option, pass_context
from pheanq.ops.schedules import format_schedules, schedule_listing
from pheanq.schedules import all_schedules


@cli.command("schedules")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@import_option
@pass_context
def schedules(context: Context, as_json: bool, python_imports: tuple[str, ...]) -> None:
    """The recurring schedules of pheanq.toml and of the application's code: last and next slot, status."""
    context.import_application(python_imports, strict=True)  # their @task(schedule=...) and periodic()
    listing = schedule_listing(context.service.store, all_schedules(context.settings.schedules))
    click.echo(json.dumps(listing, indent=2) if as_json else format_schedules(listing))
