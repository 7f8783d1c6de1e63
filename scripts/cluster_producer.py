"""A producer of scripts/cluster, run on one of its hosts (inside the host's namespace, with the host's
pheanq.toml in PHEANQ_CONFIG): queue COUNT tasks of COMMAND through `TaskQueueService.queue_task`, spread over
SECONDS, and write each id the call returned to OUT, one line each, as it comes (the harness counts them as
queued). The first line of OUT is ``start <epoch seconds>``, written just before the first task is queued.

A task's argument is a duration drawn from [LOW, HIGH] (COMMAND `chaos` sleeps that long; `noop` ignores it).
A queue_task that raises (the database is away) is tried again after a moment, as an application would; one
that warns TaskPendingWarning (beanstalkd away) returned an id: it is queued, and its line says ``pending``.

    python cluster_producer.py OUT COMMAND COUNT LOW HIGH TTR SECONDS SEED
"""

from __future__ import annotations

import random
import sys
import time
import warnings

from pheanq import TaskDescription, TaskPendingWarning, TaskQueueService, load_settings
from pheanq.errors import PheanqError


def main(argv: list[str]) -> int:
    out, command, count, low, high, ttr, seconds, seed = argv
    rng = random.Random(seed)
    service = TaskQueueService(load_settings())
    with open(out, "a", buffering=1) as ids:
        started = time.time()
        ids.write(f"start {started}\n")
        accepted = 0
        while accepted < int(count):
            duration = rng.uniform(float(low), float(high))
            try:
                with warnings.catch_warnings(record=True) as warned:
                    warnings.simplefilter("always", TaskPendingWarning)
                    task_id = service.queue_task(TaskDescription(command, [f"{duration:.3f}"]), ttr=int(ttr))
            except PheanqError:
                time.sleep(0.2)  # the application's pause before it tries again
                continue
            pending = any(issubclass(warning.category, TaskPendingWarning) for warning in warned)
            ids.write(f"{task_id}{' pending' if pending else ''}\n")
            accepted += 1
            ahead = started + float(seconds) * accepted / int(count) - time.time()
            if ahead > 0:
                time.sleep(ahead)  # spreading the tasks over SECONDS
    service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
