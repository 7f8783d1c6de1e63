"""README.rst and the docs/ pages are the user's manual: together they show every status, move, command, option and
setting the code has, and every page of docs/ is reachable from its front page."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from pheanq.cli import cli
from pheanq.config import _ENV_NAMES, Settings
from pheanq.status import TRANSITIONS, Status

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
# Every page of the site: docs/**/*.rst, except what a build wrote.
PAGES = sorted(path for path in DOCS.rglob("*.rst") if "_build" not in path.relative_to(DOCS).parts)
README = "\n".join(path.read_text() for path in [ROOT / "README.rst", *PAGES])
LINES = [line.rstrip() for line in README.splitlines()]


def test_docs_have_pages() -> None:
    assert DOCS / "index.rst" in PAGES and len(PAGES) > 1, "docs/ has no pages"


def test_readme_shows_every_move_of_the_status_table() -> None:
    for (source, target), why in TRANSITIONS.items():
        pattern = re.compile(rf"^{source.value}\s+{target.value}\s+{re.escape(why)}$")
        assert any(pattern.match(line) for line in LINES), f"the docs lack the move {source} -> {target}: {why}"
    shown = {(m.group(1), m.group(2)) for line in LINES
             if (m := re.match(r"^([a-z_]+)\s+([a-z_]+)\s+\S", line)) and m.group(1) in set(Status)
             and m.group(2) in set(Status)}
    assert shown == {(s.value, t.value) for s, t in TRANSITIONS}, "the docs show a move the code does not have"


def test_readme_explains_every_status() -> None:
    for status in Status:
        assert any(re.match(rf"^{status.value}\s{{2,}}\S", line) for line in LINES), f"status {status} missing"


def test_readme_documents_every_command_and_option() -> None:
    def walk(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
        found = []
        context = click.Context(group)
        for name in group.list_commands(context):  # the group's commands load on first use: asked by name
            command = group.get_command(context, name)
            assert command is not None, name
            if isinstance(command, click.Group):
                found += walk(command, f"{prefix} {name}")
            else:
                found.append((f"{prefix} {name}", command))
        return found

    for path, command in walk(cli, "pheanq"):
        assert f"``{path}" in README, f"the docs do not document `{path}`"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert opt in README, f"the docs do not document {opt} of `{path}`"
    for param in cli.params:
        for opt in param.opts:
            if opt.startswith("--") and opt not in ("--help", "--version"):
                assert opt in README, f"the docs do not document the global flag {opt}"


def test_readme_documents_every_setting_and_its_environment_variable() -> None:
    for field in dataclasses.fields(Settings):
        if field.name != "config_file":
            assert f"``{field.name}``" in README or f"``[{field.name}]``" in README, f"setting {field.name} missing"
    for env_name in [*_ENV_NAMES.values(), "PHEANQ_CONFIG"]:
        assert env_name in README, f"environment variable {env_name} missing"


def _toctree_entries(page: Path) -> list[Path]:
    """The pages a page's toctree directives list (entries `name` or `Title <name>`; external links skipped)."""
    entries: list[Path] = []
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines):
        if not re.match(r"^\s*\.\. toctree::", line):
            continue
        indent = len(line) - len(line.lstrip()) + 1
        for entry in lines[number + 1:]:
            if entry.strip() and len(entry) - len(entry.lstrip()) < indent:
                break  # the directive's body ended
            entry = entry.strip()
            if not entry or entry.startswith(":"):
                continue  # a blank line or an option such as :maxdepth:
            name = m.group(1) if (m := re.search(r"<([^<>]+)>$", entry)) else entry
            if "://" in name or name == "self":
                continue
            base = DOCS if name.startswith("/") else page.parent
            entries.append((base / f"{name.lstrip('/')}.rst").resolve())
    return entries


def test_every_page_is_reachable_from_the_front_page() -> None:
    reached: set[Path] = set()
    todo = [(DOCS / "index.rst").resolve()]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for entry in _toctree_entries(page):
            assert entry.is_file(), f"{page.relative_to(DOCS.resolve())}: toctree names a missing page {entry}"
            todo.append(entry)
    unreached = [str(path.relative_to(DOCS)) for path in PAGES if path.resolve() not in reached]
    assert not unreached, f"pages in no toctree reachable from docs/index.rst: {unreached}"
