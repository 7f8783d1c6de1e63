"""pheanq: a beanstalkd job queue whose SQL table says where every task is.

    from pheanq import TaskDescription, queue_task, task
    task_id = queue_task(TaskDescription("invoice", [42], {"send": True}))   # a registered command

    @task
    def send_invoice(invoice_id: int) -> None: ...
    task_id = send_invoice.queue(42)                                          # a Python function
"""

from __future__ import annotations

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
from pheanq.status import Status
from pheanq.task_context import TaskContext, current_task
from pheanq.task_registry import on_child_start, on_worker_start

__version__ = "0.1.0"

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
    "queue_task",
    "task",
]
