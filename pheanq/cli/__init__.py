"""The `pheanq` command line: click commands that parse, call and print — nothing else.

`app` holds the group and what every command shares; each other module adds the commands of one kind, and is
imported when one of its commands is run or listed (`app.COMMAND_MODULES`).
"""

from __future__ import annotations

from pheanq.cli.app import cli, main

__all__ = ["cli", "main"]
