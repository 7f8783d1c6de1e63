"""An application whose import costs ~300 ms (its models, its framework, its configuration), simulated by
CPU work at import time, as real imports are mostly CPU (parsing, compiling, building tables)."""

from __future__ import annotations

import time

_deadline = time.process_time() + 0.3
_tables = 0
while time.process_time() < _deadline:
    _tables += 1


def handle() -> int:
    return _tables
