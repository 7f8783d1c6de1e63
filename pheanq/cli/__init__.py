"""The `pheanq` command line: click commands that parse, call and print — nothing else.

`app` holds the group and what every command shares; each other module adds the commands of one kind.
"""

from __future__ import annotations

from pheanq.cli import batch, ops, tasks, workers
from pheanq.cli.app import cli, main

__all__ = ["batch", "cli", "main", "ops", "tasks", "workers"]
