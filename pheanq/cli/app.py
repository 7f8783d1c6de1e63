"""The `pheanq` group: its global flags, the context every command reaches, and the entry point that turns
errors into one line. The commands live beside it, one module per room they call into."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from pheanq.config import Settings, check_tube_name, load_settings
from pheanq.dispatch import Dispatcher
from pheanq.errors import ConfigError, PheanqError
from pheanq.producer.service import TaskQueueService
from pheanq.rundir import default_run_dir

# Commands that log what they do at INFO level without -v.
LONG_RUNNING = ("task-worker", "worker-tender")

# The module of pheanq.cli that defines each command of the group. A command's module is imported when the command
# is run or listed, so a process loads only what its own command needs: a task-worker no migrations (alembic) and
# no tender, a worker-tender no task-worker. tests/test_cli.py checks this against the modules' commands.
COMMAND_MODULES = {
    "add-example-task": "tasks", "cancel": "tasks", "example-task-worker": "tasks", "regenerate-failed-task": "tasks",
    "task-cleanup": "tasks",
    "tasks": "selection",
    "batch": "batch",
    "buried": "ops", "db": "ops", "pause": "ops", "reconcile": "ops", "resume": "ops", "show": "ops",
    "status": "ops",
    "schedules": "schedules",
    "task-worker": "worker",
    "stop-worker-tender": "tender", "worker-tender": "tender",
    "web": "web", "metrics": "web",
}


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
    def dispatch(self) -> Dispatcher:
        return self.service.dispatch

    def import_application(self, extra: Sequence[str] = (), strict: bool = False) -> None:
        """Import the `[python] imports` modules and `extra`, so that what their code declares (limits, schedules)
        shows. With `strict`, a module that does not import is the command's error (ConfigError); else a warning,
        and the rest of the report stands without it."""
        modules = [*self.settings.python_imports, *extra]
        if modules:
            from pheanq.worker.python_imports import import_tasks  # lazy: only with an application to import

            try:
                import_tasks(modules)
            except ConfigError as error:
                if strict:
                    raise
                click.echo(f"warning: limits declared in code are not shown: {error}", err=True)

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


class CommandGroup(click.Group):
    """The `pheanq` group: knows its commands by name (COMMAND_MODULES) and imports a command's module on first
    use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"pheanq.cli.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)


def use_tube_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--use-tube", metavar="TUBE", help=help_text + " [default: default_tube setting]")


# The Python application of a task-worker, and of the workers of a worker-tender.
import_option = click.option(
    "--import", "python_imports", multiple=True, metavar="MODULE",
    help="Import this module of the application once, and run the Python tasks (@pheanq.task) it registers; "
    "repeat for more. Added to [python] imports of pheanq.toml.")


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="PATH", help="pheanq.toml to read [env: PHEANQ_CONFIG].")
@click.option("--database-url", metavar="URL", help="SQLAlchemy URL of the task table [env: PHEANQ_DATABASE_URL].")
@click.option("--beanstalkd", metavar="HOST:PORT[,...]",
              help="beanstalkd server, or several separated by commas [env: PHEANQ_BEANSTALKD].")
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


def parse_ids(text: str, option: str = "--id") -> list[int]:
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) == 0:
            raise click.BadParameter(f"{part!r} is not a task id (a positive whole number)", param_hint=f"'{option}'")
        ids.append(int(part))
    return ids

