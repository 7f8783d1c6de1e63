"""Planning and cancelling a batch of N tasks, beside a bare greenstalk + SQLAlchemy loop doing the same writes.

For each run of each side, on a fresh SQLite database and a fresh beanstalkd:

1. plan: pheanq's ``Batch.add_many`` queues N tasks 500 at a time (one INSERT ... RETURNING and one
   transaction per chunk, then a put per task and one executemany UPDATE of the job ids per chunk); the
   baseline makes the same inserts, puts and updates with SQLAlchemy and greenstalk directly, with no
   batch row, no validation and no codec.
2. progress: one read of the batch's counts (pheanq: ``Batch.progress``; baseline: one GROUP BY).
3. cancel: pheanq's ``Batch.cancel`` (one UPDATE per 500 tasks, each task's end settled, its job deleted);
   the baseline UPDATEs the same pages and deletes the same jobs.

Sides alternate, --runs times; the medians, the min-max and the ratio of the medians are printed.
A benchmark script that prints figures, not a timed test.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import greenstalk
import sqlalchemy as sa
from benchlib import TUBE, bare_engine, beanstalkd, fresh_database, measured_runs

CHUNK = 500
Times = dict[str, float]


def pheanq_side(url: str, address: tuple[str, int], tasks: int) -> Times:
    from pheanq import TaskDescription
    from pheanq.config import load_settings
    from pheanq.producer.service import TaskQueueService

    service = TaskQueueService(load_settings({"database_url": url, "beanstalkd": f"{address[0]}:{address[1]}"},
                                             environ={}))
    times: Times = {}
    started = time.perf_counter()
    batch = service.create_batch("bench")
    batch.add_many(TaskDescription("true", [n]) for n in range(tasks))
    batch.close()
    times["plan"] = time.perf_counter() - started
    started = time.perf_counter()
    progress = batch.progress()
    times["progress"] = time.perf_counter() - started
    if progress.pending != tasks:
        raise SystemExit(f"pheanq's batch counts {progress.pending} pending task(s), expected {tasks}")
    started = time.perf_counter()
    cancelled = batch.cancel()
    times["cancel"] = time.perf_counter() - started
    service.close()
    if cancelled != tasks:
        raise SystemExit(f"pheanq cancelled {cancelled} task(s), expected {tasks}")
    return times


def baseline_side(url: str, address: tuple[str, int], tasks: int) -> Times:
    engine = bare_engine(url)
    task = sa.Table("pheanq_task", sa.MetaData(), autoload_with=engine)
    times: Times = {}
    now = sa.func.current_timestamp()
    started = time.perf_counter()
    with greenstalk.Client(address, encoding=None, use=TUBE) as client:
        for first in range(0, tasks, CHUNK):
            rows = [{"command": "true", "data": json.dumps({"command": "true", "arguments": [n]}), "tube": TUBE,
                     "status": "new", "priority": 1024, "ttr": 60, "attempts": 0, "batch_id": 1}
                    for n in range(first, min(tasks, first + CHUNK))]
            with engine.begin() as conn:
                ids = list(conn.execute(task.insert().values(created=now, modified=now)
                                        .returning(task.c.id, sort_by_parameter_order=True), rows).scalars())
            jobs = [{"task": task_id, "job": client.put(json.dumps({"task_id": task_id}).encode(), priority=1024,
                                                         ttr=60)} for task_id in ids]
            with engine.begin() as conn:
                conn.execute(task.update().where(task.c.id == sa.bindparam("task"))
                             .values(job_id=sa.bindparam("job")), jobs)
        times["plan"] = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            counts: dict[str, int] = {status: int(n) for status, n in conn.execute(
                sa.select(task.c.status, sa.func.count()).where(task.c.batch_id == 1).group_by(task.c.status))}
        times["progress"] = time.perf_counter() - started
        if counts.get("new") != tasks:
            raise SystemExit(f"the baseline counts {counts}, expected {tasks} new")
        started = time.perf_counter()
        after = 0
        while True:
            with engine.begin() as conn:
                page = conn.execute(sa.select(task.c.id, task.c.job_id).where(
                    task.c.batch_id == 1, task.c.id > after, task.c.status == "new").order_by(task.c.id)
                    .limit(CHUNK)).all()
                if not page:
                    break
                conn.execute(task.update().where(task.c.id.in_([row.id for row in page]), task.c.status == "new")
                             .values(status="cancelled", finished=now, modified=now,
                                     log=sa.func.coalesce(task.c.log, "") + "--- cancelled\n"))
            after = page[-1].id
            for row in page:
                client.delete(row.job_id)
        times["cancel"] = time.perf_counter() - started
    engine.dispose()
    return times


def measure(root: Path, tasks: int, runs: int) -> dict[str, dict[str, list[float]]]:
    sides: dict[str, Callable[[str, tuple[str, int], int], Times]] = {"pheanq": pheanq_side,
                                                                     "baseline": baseline_side}
    times: dict[str, dict[str, list[float]]] = {case: {"pheanq": [], "baseline": []}
                                                for case in ("plan", "progress", "cancel")}
    for run in range(runs):
        for name in (("pheanq", "baseline") if run % 2 == 0 else ("baseline", "pheanq")):
            url = fresh_database(root, f"batch-{name}-{run}.db")
            with beanstalkd() as address:
                for case, seconds in sides[name](url, address, tasks).items():
                    times[case][name].append(seconds)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    figures = measured_runs(__doc__ or "", 10_000, "pheanq-bench-batch-", measure, argv)
    if figures is None:
        return 0
    options, times = figures
    print(f"a batch of {options.tasks} tasks (SQLite, loopback beanstalkd), median of {options.runs}:")
    for case, sides in times.items():
        pheanq_s, base_s = statistics.median(sides["pheanq"]), statistics.median(sides["baseline"])
        rate = "" if case == "progress" else f" ({options.tasks / pheanq_s:6.0f} tasks/s)"
        print(f"  {case:<8} pheanq {pheanq_s:8.3f} s{rate} ({min(sides['pheanq']):.3f}-{max(sides['pheanq']):.3f})"
              f"   baseline {base_s:8.3f} s   ratio {pheanq_s / base_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
