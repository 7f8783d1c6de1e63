"""pheanq: a beanstalkd job queue whose SQL table says where every task is.

    from pheanq import TaskDescription, queue_task
    task_id = queue_task(TaskDescription("invoice", [42], {"send": True}))
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
from pheanq.producer.service import TaskQueueService, default_service, queue_task
from pheanq.retry import Retry
from pheanq.status import Status

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchProgress",
    "CancelResult",
    "Chain",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "PheanqError",
    "Retry",
    "SchemaMissing",
    "Settings",
    "Status",
    "StoreUnavailable",
    "TaskDescription",
    "TaskNotSent",
    "TaskPendingWarning",
    "TaskQueueService",
    "TubeUnavailable",
    "WorkPackage",
    "WrongStatus",
    "default_service",
    "load_settings",
    "queue_task",
]
