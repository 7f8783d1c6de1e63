"""How long a reconciler pass takes over a backlog, beside a bare greenstalk + SQLAlchemy loop.

One SQLite database with N `new` tasks (queued by pheanq) and, for each run of each side:

1. alive: every task's job is in beanstalkd. pheanq's ``reconcile`` checks each (stats-job, then peek
   to see whose job it is) and sends nothing; the baseline pages through the same rows (500 at a
   time) and makes the same two calls per row.
2. lost: a fresh, empty beanstalkd (a restart without binlog). pheanq's ``reconcile`` finds every job
   gone and sends each task again; the baseline makes the same checks, puts a job and UPDATEs the
   row's job id, compare-and-set on the old one, as pheanq does.

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
from typing import TYPE_CHECKING

import greenstalk
import sqlalchemy as sa
from benchlib import TUBE, bare_engine, beanstalkd, fresh_database, measured_runs

if TYPE_CHECKING:
    from pheanq.producer.service import TaskQueueService

PAGE = 500


def pheanq_service(url: str, address: tuple[str, int]) -> TaskQueueService:
    from pheanq.config import load_settings
    from pheanq.producer.service import TaskQueueService

    return TaskQueueService(load_settings({"database_url": url, "beanstalkd": f"{address[0]}:{address[1]}"},
                                          environ={}))


def queue_backlog(url: str, address: tuple[str, int], tasks: int) -> None:
    from pheanq import TaskDescription

    service = pheanq_service(url, address)
    for _ in range(tasks):
        service.queue_task(TaskDescription("true"))
    service.close()


def pheanq_pass(url: str, address: tuple[str, int], expect_sent: int) -> float:
    from pheanq.ops.reconcile import reconcile

    service = pheanq_service(url, address)
    started = time.perf_counter()
    report = reconcile(service.dispatch, min_age=0)
    seconds = time.perf_counter() - started
    service.close()
    if report.sent_again != expect_sent:
        raise SystemExit(f"pheanq's reconcile sent {report.sent_again} task(s), expected {expect_sent}")
    return seconds


def baseline_pass(url: str, address: tuple[str, int], expect_sent: int) -> float:
    engine = bare_engine(url)
    task = sa.table("pheanq_task", sa.column("id"), sa.column("job_id"), sa.column("status"), sa.column("data"),
                    sa.column("tube"), sa.column("priority"), sa.column("ttr"))
    sent = 0
    started = time.perf_counter()
    with greenstalk.Client(address, encoding=None, use=TUBE) as client:
        after = 0
        while True:
            with engine.begin() as conn:
                rows = conn.execute(sa.select(task.c.id, task.c.job_id, task.c.data, task.c.priority, task.c.ttr)
                                    .where(task.c.id > after, task.c.status == "new").order_by(task.c.id)
                                    .limit(PAGE)).all()
            if not rows:
                break
            for row in rows:
                after = row.id
                if _alive(client, row.job_id, row.id):
                    continue
                body = json.dumps({"pheanq": 1, "task_id": row.id, "description": json.loads(row.data)},
                                  separators=(",", ":")).encode()
                job_id = client.put(body, priority=row.priority, ttr=row.ttr)
                with engine.begin() as conn:
                    conn.execute(task.update().where(task.c.id == row.id, task.c.status == "new",
                                                     task.c.job_id == row.job_id).values(job_id=job_id))
                sent += 1
    seconds = time.perf_counter() - started
    engine.dispose()
    if sent != expect_sent:
        raise SystemExit(f"the baseline sent {sent} task(s), expected {expect_sent}")
    return seconds


def _alive(client: greenstalk.Client[bytes], job_id: int | None, task_id: int) -> bool:
    if job_id is None:
        return False
    try:
        client.stats_job(job_id)
        body = client.peek(job_id).body
    except greenstalk.NotFoundError:
        return False
    return bool(json.loads(body).get("task_id") == task_id)


def measure(root: Path, tasks: int, runs: int) -> dict[str, dict[str, list[float]]]:
    url = fresh_database(root, "reconcile.db")
    times: dict[str, dict[str, list[float]]] = {"alive": {"pheanq": [], "baseline": []},
                                                "lost": {"pheanq": [], "baseline": []}}
    sides: dict[str, Callable[[str, tuple[str, int], int], float]] = {"pheanq": pheanq_pass,
                                                                      "baseline": baseline_pass}
    with beanstalkd() as address:
        print(f"queueing {tasks} tasks ...", file=sys.stderr)
        queue_backlog(url, address, tasks)
        for run in range(runs):
            for name in (("pheanq", "baseline") if run % 2 == 0 else ("baseline", "pheanq")):
                times["alive"][name].append(sides[name](url, address, 0))
    for run in range(runs):
        for name in (("pheanq", "baseline") if run % 2 == 0 else ("baseline", "pheanq")):
            with beanstalkd() as empty:  # every job lost, as after a restart without binlog
                times["lost"][name].append(sides[name](url, empty, tasks))
    return times


def main(argv: Sequence[str] | None = None) -> int:
    figures = measured_runs(__doc__ or "", 20_000, "pheanq-bench-reconcile-", measure, argv)
    if figures is None:
        return 0
    options, times = figures
    print(f"reconcile pass over {options.tasks} new tasks (SQLite, loopback beanstalkd), median of {options.runs}:")
    for case, sides in times.items():
        pheanq_s, base_s = statistics.median(sides["pheanq"]), statistics.median(sides["baseline"])
        print(f"  {case:<6} pheanq {pheanq_s:7.2f} s ({options.tasks / pheanq_s:7.0f} tasks/s, "
              f"{min(sides['pheanq']):.2f}-{max(sides['pheanq']):.2f})   baseline {base_s:7.2f} s "
              f"({options.tasks / base_s:7.0f} tasks/s)   ratio {pheanq_s / base_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
