"""The README is the user's manual: it shows every status, move, command, option and setting the code has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from pheanq.cli import cli
from pheanq.config import _ENV_NAMES, Settings
from pheanq.status import TRANSITIONS, Status

README = (Path(__file__).parent.parent / "README.rst").read_text()
LINES = [line.rstrip() for line in README.splitlines()]


def test_readme_shows_every_move_of_the_status_table() -> None:
    for (source, target), why in TRANSITIONS.items():
        pattern = re.compile(rf"^{source.value}\s+{target.value}\s+{re.escape(why)}$")
        assert any(pattern.match(line) for line in LINES), f"README lacks the move {source} -> {target}: {why}"
    shown = {(m.group(1), m.group(2)) for line in LINES
             if (m := re.match(r"^([a-z_]+)\s+([a-z_]+)\s+\S", line)) and m.group(1) in set(Status)
             and m.group(2) in set(Status)}
    assert shown == {(s.value, t.value) for s, t in TRANSITIONS}, "README shows a move the code does not have"


def test_readme_explains_every_status() -> None:
    for status in Status:
        assert any(re.match(rf"^{status.value}\s{{2,}}\S", line) for line in LINES), f"status {status} missing"


def test_readme_documents_every_command_and_option() -> None:
    def walk(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += walk(command, f"{prefix} {name}")
            else:
                found.append((f"{prefix} {name}", command))
        return found

    for path, command in walk(cli, "pheanq"):
        assert f"``{path}" in README, f"README does not document `{path}`"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert opt in README, f"README does not document {opt} of `{path}`"
    for param in cli.params:
        for opt in param.opts:
            if opt.startswith("--") and opt not in ("--help", "--version"):
                assert opt in README, f"README does not document the global flag {opt}"


def test_readme_documents_every_setting_and_its_environment_variable() -> None:
    for field in dataclasses.fields(Settings):
        if field.name != "config_file":
            assert f"``{field.name}``" in README or f"``[{field.name}]``" in README, f"setting {field.name} missing"
    for env_name in [*_ENV_NAMES.values(), "PHEANQ_CONFIG"]:
        assert env_name in README, f"environment variable {env_name} missing"
