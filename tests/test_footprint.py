"""What the long-running processes load: `pheanq task-worker` and `pheanq worker-tender` import only what their
own command needs (issue 13: an idle worker's and tender's resident memory). Each case is a fresh interpreter that
imports what `python -m pheanq <command>` imports before the command runs, then names the modules it holds.
The figures in MB are the bench's (./scripts/bench, its memory row); this test holds the module names."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click
import pytest

from pheanq.cli.app import COMMAND_MODULES, cli

# What neither process needs to wait for work: migrations (alembic and the migrations' mako), every other
# command's module, and the MySQL dialect on a database that is not MySQL.
NEVER = ("alembic", "mako", "pheanq.storage.migrate", "pheanq.ops.report", "pheanq.cli.ops", "pheanq.cli.tasks",
         "pheanq.cli.batch", "pheanq.producer.python_task", "sqlalchemy.orm", "sqlalchemy.dialects.mysql",
         "sqlalchemy.dialects.postgresql")
# The Python-task pool, loaded by a worker only when it has a Python application to run (--import).
PYTHON_POOL = ("pheanq.worker.python_pool", "pheanq.worker.python_child", "pheanq.worker.python_execution")
NOT_LOADED = {
    "task-worker": (*NEVER, *PYTHON_POOL, "pheanq.cli.tender", "pheanq.tender"),
    "worker-tender": (*NEVER, *PYTHON_POOL, "pheanq.cli.worker", "pheanq.worker.loop"),
}
LOADED = {"task-worker": ("pheanq.worker.loop", "sqlalchemy", "greenstalk"),
          "worker-tender": ("pheanq.tender.tender", "sqlalchemy", "greenstalk")}


def modules_of(command: str) -> set[str]:
    """The modules a fresh `python -m pheanq <command>` holds once its command is loaded and the SQLite
    engine is made (no connection: that needs a database)."""
    script = ("import json, sys, click, sqlalchemy\n"
              "from pheanq.cli import cli\n"  # what pheanq/__main__.py imports
              f"assert cli.get_command(click.Context(cli), {command!r}) is not None\n"
              "sqlalchemy.create_engine('sqlite://')\n"
              "print(json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("command", sorted(NOT_LOADED))
def test_a_long_running_command_loads_only_what_it_needs(command: str) -> None:
    loaded = modules_of(command)
    assert set(LOADED[command]) <= loaded
    unwanted = sorted(name for name in loaded
                      if any(name == prefix or name.startswith(prefix + ".") for prefix in NOT_LOADED[command]))
    assert unwanted == [], f"`pheanq {command}` loads {unwanted}: import them where they are used"


def test_the_command_modules_are_the_ones_that_define_the_commands() -> None:
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"pheanq.cli.{module}")
    assert set(cli.commands) == set(COMMAND_MODULES)
    for name, command in cli.commands.items():
        assert command.callback is not None
        assert command.callback.__module__ == f"pheanq.cli.{COMMAND_MODULES[name]}", name
    assert cli.list_commands(click.Context(cli)) == sorted(COMMAND_MODULES)


def test_every_public_name_of_pheanq_is_the_one_its_module_defines() -> None:
    import pheanq

    for module, names in pheanq._HOMES.items():
        for name in names:
            assert getattr(pheanq, name) is getattr(importlib.import_module(module), name)
    assert sorted(pheanq._HOME_OF) == sorted(pheanq.__all__)
    assert set(pheanq.__all__) <= set(dir(pheanq))
    with pytest.raises(AttributeError):
        pheanq.no_such_name  # noqa: B018
