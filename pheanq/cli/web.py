"""`pheanq web`: the dashboard."""

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


def _serve(context: Context, bind: str) -> None:
    try:
        from pheanq.web.server import bind_address, check_exposure, serve
    except ImportError as error:
        raise ConfigError(f"{WEB_EXTRA} ({error})") from None
    check_exposure(bind_address(bind)[0], context.settings, "the dashboard")
    click.echo(f"pheanq web: serving on http://{bind}/", err=True)
    serve(context.settings, bind)
