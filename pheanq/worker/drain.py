"""`--stop-when-drained`: a worker that stops only once its tubes hold no job it could still be given.

`--stop-when-empty` stops at the first check that finds no job ready, so a script draining a tube leaves
behind the tasks that wait out a retry's backoff or a delay: their jobs are delayed in beanstalkd. A draining
worker asks beanstalkd instead, after such a check, how many jobs of its tubes are ready or delayed, and goes
on while any is. Jobs reserved by other workers, and buried ones, are not waited for: another worker's task
is its own, and a buried job waits for a person.
"""

from __future__ import annotations

from collections.abc import Iterable

from pheanq.beanstalkd import BeanstalkdServers


def jobs_to_come(beanstalkd: BeanstalkdServers, tubes: Iterable[str]) -> int:
    """How many jobs of `tubes` are ready or delayed: those a reserve on them may still return."""
    total = 0
    for tube in tubes:
        stats = beanstalkd.tube_stats(tube)
        if stats is not None:
            total += int(stats["current-jobs-ready"]) + int(stats["current-jobs-delayed"])
    return total
