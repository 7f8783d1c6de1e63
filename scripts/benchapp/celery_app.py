"""The Celery app of the benchmark (imported by Celery's workers and by peers.py, in the peers' venv only)."""

from __future__ import annotations

import os

from celery import Celery

from benchapp import heavy_app  # noqa: F401  the application is imported once, before the pool forks
from benchapp.work import WORKLOADS

app = Celery("benchapp", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=1, task_acks_late=True,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
TASKS = {name: app.task(name=f"bench.{name}")(function) for name, function in WORKLOADS.items()}
