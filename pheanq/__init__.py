"""pheanq: a beanstalkd job queue whose SQL table says where every task is.

    from pheanq import TaskDescription, queue_task, task
    task_id = queue_task(TaskDescription("invoice", [42], {"send": True}))   # a registered command

    @task
    def send_invoice(invoice_id: int) -> None: ...
    task_id = send_invoice.queue(42)                                          # a Python function
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pheanq.config import Settings, load_settings
    from pheanq.description import Chain, TaskDescription
    from pheanq.dispatch import WorkPackage
    from pheanq.errors import (
        ConfigError,
        InvalidInput,
        NotFound,
        PheanqError,
        SchemaMissing,
        StoreUnavailable,
        TaskNotSent,
        TaskPendingWarning,
        TubeUnavailable,
        WrongStatus,
    )
    from pheanq.producer.batch import Batch, BatchProgress
    from pheanq.producer.cancel import CancelResult
    from pheanq.producer.python_task import BoundTask, PythonTask, task
    from pheanq.producer.service import TaskQueueService, default_service, queue_task
    from pheanq.python_call import PythonCall
    from pheanq.retry import Retry
    from pheanq.schedules import periodic
    from pheanq.status import Status
    from pheanq.task_context import TaskContext, current_task
    from pheanq.task_registry import on_child_start, on_worker_start

__version__ = "0.1.0"

# Each public name and the module it lives in. `import pheanq` (which `python -m pheanq` and every submodule's
# import run first) loads none of them: a name's module is imported on first use, so a task-worker or a
# worker-tender does not load the producer's Python-task, batch, cancel and after-commit machinery.
_HOMES = {
    "pheanq.config": ("Settings", "load_settings"),
    "pheanq.description": ("Chain", "TaskDescription"),
    "pheanq.dispatch": ("WorkPackage",),
    "pheanq.errors": ("ConfigError", "InvalidInput", "NotFound", "PheanqError", "SchemaMissing", "StoreUnavailable",
                      "TaskNotSent", "TaskPendingWarning", "TubeUnavailable", "WrongStatus"),
    "pheanq.producer.batch": ("Batch", "BatchProgress"),
    "pheanq.producer.cancel": ("CancelResult",),
    "pheanq.producer.python_task": ("BoundTask", "PythonTask", "task"),
    "pheanq.producer.service": ("TaskQueueService", "default_service", "queue_task"),
    "pheanq.python_call": ("PythonCall",),
    "pheanq.retry": ("Retry",),
    "pheanq.schedules": ("periodic",),
    "pheanq.status": ("Status",),
    "pheanq.task_context": ("TaskContext", "current_task"),
    "pheanq.task_registry": ("on_child_start", "on_worker_start"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "Batch",
    "BatchProgress",
    "BoundTask",
    "CancelResult",
    "Chain",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "PheanqError",
    "PythonCall",
    "PythonTask",
    "Retry",
    "SchemaMissing",
    "Settings",
    "Status",
    "StoreUnavailable",
    "TaskContext",
    "TaskDescription",
    "TaskNotSent",
    "TaskPendingWarning",
    "TaskQueueService",
    "TubeUnavailable",
    "WorkPackage",
    "WrongStatus",
    "current_task",
    "default_service",
    "load_settings",
    "on_child_start",
    "on_worker_start",
    "periodic",
    "queue_task",
    "task",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pheanq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
