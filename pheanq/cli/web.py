"""`pheanq web` (the dashboard, with /metrics) and `pheanq metrics` (/metrics alone)."""

from __future__ import annotations

import click

from pheanq.cli.app import Context, cli, pass_context
from pheanq.errors import ConfigError

WEB_EXTRA = "the web extra is not installed: pip install 'pheanq[web]'"


@cli.command("web")
@click.option("--bind", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where to serve. Any address but a loopback one needs users configured ([web.users.NAME]).")
@pass_context
def web(context: Context, bind: str) -> None:
    """Serve the dashboard: counts, charts, tasks, batches, workers, tubes, buried jobs, audit; /api and
    /metrics."""
    _serve(context, bind)


@cli.command("metrics")
@click.option("--bind", default="127.0.0.1:9464", show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics. Any address but a loopback one needs users configured ([web.users.NAME]); "
                   "Prometheus then sends a user's token as a bearer token.")
@pass_context
def metrics(context: Context, bind: str) -> None:
    """Serve /metrics (Prometheus text format) alone, for hosts that do not run the dashboard."""
    _serve(context, bind, metrics_only=True)


def _serve(context: Context, bind: str, metrics_only: bool = False) -> None:
    try:
        from pheanq.web.server import serve
    except ImportError as error:
        raise ConfigError(f"{WEB_EXTRA} ({error})") from None
    command = "metrics" if metrics_only else "web"
    if not metrics_only:
        context.import_application()
    serve(context.settings, bind, metrics_only, announce=lambda line: click.echo(f"pheanq {command}: {line}", err=True))
