"""The peers' side of scripts/bench-python, run with the peers' venv (RQ, Celery, redis):

    python -m benchapp.peers flush
    python -m benchapp.peers worker SYSTEM QUEUE        # rq-fork, rq-simple (celery: its own CLI)
    python -m benchapp.peers enqueue SYSTEM QUEUE WORKLOAD OUT N SPACING_S

`enqueue` prints one line `KEY ENQUEUED_AT` per task, so the driver can compute pickup latency.
"""

from __future__ import annotations

import os
import sys
import time

from redis import Redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def main(argv: list[str]) -> None:
    action = argv[0]
    redis = Redis.from_url(REDIS_URL)
    if action == "flush":
        redis.flushdb()
    elif action == "worker":
        system, queue = argv[1:3]
        from rq import Queue, SimpleWorker, Worker

        from benchapp import heavy_app  # noqa: F401  imported once, before any job: what a careful RQ user does

        worker_class = Worker if system == "rq-fork" else SimpleWorker
        worker_class([Queue(queue, connection=redis)], connection=redis).work(logging_level="WARNING")
    elif action == "enqueue":
        system, queue, workload, out, count, spacing = argv[1:7]
        enqueue = _enqueuer(system, queue, redis)
        for n in range(int(count)):
            key = f"{queue}-{n}"
            at = time.time()
            enqueue(workload, key, out)
            print(key, f"{at:.6f}", flush=False)
            if float(spacing):
                time.sleep(float(spacing))
        sys.stdout.flush()
    else:
        raise SystemExit(f"unknown action {action!r}")


def _enqueuer(system: str, queue: str, redis: Redis):  # type: ignore[no-untyped-def]
    if system.startswith("rq"):
        from rq import Queue

        from benchapp.work import WORKLOADS

        rq_queue = Queue(queue, connection=redis)
        return lambda workload, key, out: rq_queue.enqueue(WORKLOADS[workload], key, out)
    from benchapp.celery_app import TASKS

    return lambda workload, key, out: TASKS[workload].apply_async((key, out), queue=queue)


if __name__ == "__main__":
    main(sys.argv[1:])
