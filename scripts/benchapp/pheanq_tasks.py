"""The workloads as pheanq Python tasks: `pheanq task-worker --import benchapp.pheanq_tasks` imports this module,
and with it the application, once per worker (as the RQ and Celery workers of the benchmark do)."""

from __future__ import annotations

from benchapp import heavy_app, work  # noqa: F401  the application, imported before any task
from pheanq import PythonTask, task


@task(name="bench.noop")
def noop(key: str, out: str) -> None:
    work.noop(key, out)


@task(name="bench.cpu")
def cpu(key: str, out: str) -> None:
    work.cpu(key, out)


@task(name="bench.heavy")
def heavy(key: str, out: str) -> None:
    work.heavy(key, out)


TASKS: dict[str, PythonTask[[str, str], None]] = {"noop": noop, "cpu": cpu, "heavy": heavy}
