"""Chains: `a.then(b).then(c)` runs b once a is done, and c once b is done.

A chain is queued in one transaction: its first task `new` (or `waiting`, when it waits for tasks given
with `after=`), each later one `waiting` for the one before. If a step fails (after its retries) or is
cancelled, every later step ends `upstream_failed` with a log line that names that step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pheanq.errors import InvalidInput

if TYPE_CHECKING:
    from pheanq.description import TaskDescription


class Chain:
    """Task descriptions that run one after another. Build one with `TaskDescription.then`."""

    def __init__(self, steps: tuple[TaskDescription, ...]) -> None:
        self.steps = steps

    def then(self, step: TaskDescription) -> Chain:
        from pheanq.description import TaskDescription

        if not isinstance(step, TaskDescription):
            raise InvalidInput(f"then() takes a TaskDescription, not {type(step).__name__}")
        return Chain((*self.steps, step))

    def __iter__(self) -> Iterator[TaskDescription]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return " -> ".join(step.command for step in self.steps)
