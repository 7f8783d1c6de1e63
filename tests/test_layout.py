"""pheanq's rooms and the imports between them (docs/architecture.rst): no import cycle, arrows only point down
(cli → tender → worker / ops / producer → dispatch → storage / beanstalkd → the top-level modules), and no
module past the size at which it should be split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "pheanq"
MAX_LINES = 500

# Each room's floor: a module may import from its own room, and from rooms on lower floors only. The top-level
# modules every room uses stand on the ground floor; a room of the process that supervises another stands
# above it (the tender runs workers and the reconciler).
FLOORS = {
    "top": 0,
    "beanstalkd": 1,
    "storage": 1,
    "dispatch": 2,
    "producer": 3,
    "worker": 3,
    "ops": 3,
    "tender": 4,
    "web": 4,
    "cli": 5,
}
# Sideways arrows between rooms of one floor that are allowed: none.
ENTRY_POINTS = {"pheanq", "pheanq.__main__"}  # the public API and `python -m pheanq` gather every room


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports, wherever the import stands (also in functions and TYPE_CHECKING); a pheanq
    module by its name in `known`, another package by its top-level name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` names this package, each further dot one above
                above = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*above, base] if base else above)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {module if module in known else module.split(".")[0] for module in found} - {name}


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in FLOORS:
        return parts[1]          # pheanq.beanstalkd, pheanq.dispatch, and each room's own __init__
    if len(parts) > 2:
        return parts[1]
    return "top"


IMPORTS = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}
GRAPH = {name: {module for module in imported if module in IMPORTS} for name, imported in IMPORTS.items()}


def test_the_package_has_no_import_cycle() -> None:
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported):], imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_every_arrow_points_down_or_stays_in_its_room() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        if module in ENTRY_POINTS:
            continue
        room = room_of(module)
        for target in imported:
            other = room_of(target)
            if target in ENTRY_POINTS:
                wrong.append(f"{module} imports {target}, which gathers every room")
            elif other != room and FLOORS[other] >= FLOORS[room]:
                wrong.append(f"{module} ({room}, floor {FLOORS[room]}) imports {target} ({other}, "
                             f"floor {FLOORS[other]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_storage_and_beanstalkd_know_neither_each_other_nor_click() -> None:
    for module, imported in IMPORTS.items():
        room = room_of(module)
        if room in ("storage", "beanstalkd"):
            assert "click" not in imported, module
            reached = {room_of(target) for target in imported if target in GRAPH}
            assert not reached & ({"storage", "beanstalkd"} - {room}), module


def test_the_rules_of_this_test_are_the_code_s_rooms() -> None:
    rooms = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert rooms - {"migrations"} == {room for room in FLOORS if room != "top"}


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_is_longer_than_the_size_at_which_it_is_split(module: str) -> None:
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by concept"
