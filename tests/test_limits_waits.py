"""How long a job over a concurrency limit waits: the backoff of pheanq.task_limits.limited_wait in whole seconds."""

from __future__ import annotations

import random

from pheanq.task_limits import LIMITED_WAIT_CAP, LIMITED_WAIT_FIRST, LIMITED_WAIT_JITTER, limited_wait


def test_the_backoff_doubles_from_its_first_wait_with_at_most_a_quarter_more() -> None:
    rng = random.Random(3)
    for releases in range(10):
        base = min(LIMITED_WAIT_CAP, LIMITED_WAIT_FIRST * 2 ** releases)
        waits = {limited_wait(0, releases, rng) for _ in range(200)}
        assert min(waits) >= base and max(waits) <= base * (1 + LIMITED_WAIT_JITTER), (releases, sorted(waits))
    assert {limited_wait(0, 0, rng) for _ in range(200)} == {1}  # not 2: a whole second is +100 % here
    assert min(limited_wait(0.2, 0, rng) for _ in range(200)) == 1  # a known wait is rounded up: never cut short
