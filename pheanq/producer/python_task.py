"""`@task`: a Python function as a pheanq task.

    from pheanq import task, Retry

    @task(tube="billing", retry=Retry(max_attempts=5), timeout=300)
    def send_invoice(invoice_id: int, *, email: bool = True) -> dict: ...

    task_id = send_invoice.queue(42, email=False)
    send_invoice.options(priority=0, delay=60, unique_key="inv-42").queue(42)
    send_invoice(42)                       # a plain call runs the function here, now

The arguments are bound to the function's signature and checked as JSON values when the task is queued,
so a call that could not run, or an argument no worker could read back, fails in the application. A
task's name is `module.qualname` unless given (`@task(name="billing.send_invoice")`): the name is what a
queued task refers to, so give one that outlives renames. `describe(...)` makes the task's description,
for everything that takes one: `queue_task`, chains (`.then`), `after=`, batches and their callbacks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from pheanq.errors import InvalidInput
from pheanq.producer.options import QueueKeywords, QueueOptions, Unpack
from pheanq.python_call import PREFIX, PythonCall, check_task_name
from pheanq.schedules import schedule_of_task
from pheanq.task_limits import check_limit_key, declare, limit_spec
from pheanq.task_registry import register

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pheanq.producer.service import TaskQueueService

P = ParamSpec("P")
R = TypeVar("R")


class PythonTask(Generic[P, R]):
    """A registered task function: call it to run it here; `.queue(...)` to run it on a worker."""

    # Copied from the function (functools.update_wrapper), as a decorator's result keeps them.
    __name__: str
    __wrapped__: Callable[P, R]

    def __init__(self, function: Callable[P, R], name: str, defaults: QueueKeywords,
                 service: TaskQueueService | None = None, key_of: Callable[..., str] | None = None) -> None:
        self.function = function
        self.name = name
        self.defaults = defaults
        self.key_of = key_of      # computes a run's limit_key from its arguments
        self.service = service
        self.signature = inspect.signature(function)
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    def describe(self, *args: P.args, **kwargs: P.kwargs) -> PythonCall:
        """The task's description with these arguments (InvalidInput when they do not fit the signature or are
        not JSON values), carrying the task's own options as its defaults."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise InvalidInput(f"task {self.name}: {error}") from None
        call = PythonCall(self.name, bound.args, bound.kwargs, tube=self.defaults.get("tube"))
        call.queue_defaults = {key: value for key, value in self.defaults.items() if key != "tube"}
        if self.key_of is not None:
            call.queue_defaults["limit_key"] = self._limit_key(bound)
        return call

    def _limit_key(self, bound: inspect.BoundArguments) -> str:
        """The run's limit key: `limit_key_of` called with every parameter by name, defaults included."""
        assert self.key_of is not None
        named = inspect.BoundArguments(self.signature, bound.arguments.copy())
        named.apply_defaults()
        try:
            key = self.key_of(**named.arguments)
        except Exception as error:
            raise InvalidInput(f"task {self.name}: limit_key_of failed: {type(error).__name__}: {error}") from None
        return check_limit_key(key)

    def queue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue a run of the task with these arguments; returns its task id at once."""
        return self._service().queue_task(self.describe(*args, **kwargs))

    def options(self, *, session: Session | None = None, django_db: str | None = None,
                service: TaskQueueService | None = None, **options: Unpack[QueueKeywords]) -> BoundTask[P, R]:
        """The task with queue options for the next `.queue(...)`: those of `queue_task` (tube, priority, delay,
        ttr, timeout, run_at, retry, unique_key, after, batch), `session=` to queue in a SQLAlchemy session's
        transaction, `django_db=` (a name in Django's DATABASES) to queue in Django's transaction on that
        database, `service=` for another TaskQueueService than the default one."""
        QueueOptions.of(options)  # a bad option fails here, not at .queue()
        if session is not None and django_db is not None:
            raise InvalidInput("options() takes session= or django_db=, not both: a task joins one transaction")
        return BoundTask(self, options, session, service or self.service, django_db)

    def _service(self) -> TaskQueueService:
        from pheanq.producer.service import default_service

        return self.service or default_service()

    def __repr__(self) -> str:
        return f"<pheanq task {self.name}>"


class BoundTask(Generic[P, R]):
    """A task with options for queueing it (see `PythonTask.options`)."""

    def __init__(self, task: PythonTask[P, R], options: QueueKeywords, session: Session | None,
                 service: TaskQueueService | None, django_db: str | None = None) -> None:
        self.task = task
        self.queue_options = options
        self.session = session
        self.service = service
        self.django_db = django_db

    def queue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        from pheanq.producer.service import default_service

        service = self.service or default_service()
        return service.queue_task(self.task.describe(*args, **kwargs), session=self.session, django_db=self.django_db,
                                  **self.queue_options)


@overload
def task(function: Callable[P, R], /) -> PythonTask[P, R]: ...


@overload
def task(*, name: str | None = None, service: TaskQueueService | None = None,
         schedule: str | Mapping[str, Any] | None = None, concurrency: int | None = None,
         rate: str | None = None, limit_key_of: Callable[..., str] | None = None,
         **defaults: Unpack[QueueKeywords]) -> Callable[[Callable[P, R]], PythonTask[P, R]]: ...


def task(function: Callable[P, R] | None = None, /, *, name: str | None = None,
         service: TaskQueueService | None = None, schedule: str | Mapping[str, Any] | None = None,
         concurrency: int | None = None, rate: str | None = None, limit_key_of: Callable[..., str] | None = None,
         **defaults: Unpack[QueueKeywords]) -> PythonTask[P, R] | Callable[[Callable[P, R]], PythonTask[P, R]]:
    """Make a function a task (see the module's doc). `name`: the name queued tasks refer to; the keywords
    are the task's own queue options (tube, priority, ttr, timeout, retry, ...), which a queue call's
    options override. `schedule`: run it recurrently, a cron expression or a table of a schedule's keys
    (pheanq.schedules.schedule_of_task), as a schedule named after the task. `concurrency` and `rate` ("10/m")
    limit its runs across every host (pheanq.task_limits); `limit_key_of`, called with the task's arguments by
    name (defaults included), makes each run's `limit_key` (the key its key limits count it under)."""
    if limit_key_of is not None and not callable(limit_key_of):
        raise InvalidInput(f"limit_key_of must be a function of the task's arguments, not {limit_key_of!r}")
    spec = None if concurrency is None and rate is None else limit_spec("@task", concurrency, rate)
    checked = QueueOptions.of(defaults)
    for per_run in ("after", "batch", "unique_key", "delay", "run_at"):
        if per_run in defaults:
            raise InvalidInput(f"@task takes no {per_run}=: it belongs to one run; give it to .options(...)")
    del checked

    def decorate(fn: Callable[P, R]) -> PythonTask[P, R]:
        if not callable(fn) or isinstance(fn, PythonTask):
            raise InvalidInput(f"@task decorates a function, not {type(fn).__name__}")
        task_name = name if name is not None else _default_name(fn)
        check_task_name(task_name)
        register(task_name, fn)
        if spec is not None:
            declare(PREFIX + task_name, spec)
        made = PythonTask(fn, task_name, defaults, service, limit_key_of)
        if schedule is not None:
            schedule_of_task(made, schedule)
        return made

    return decorate(function) if function is not None else decorate


def _default_name(fn: Callable[..., Any]) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        where = "in __main__" if module in (None, "__main__") else "inside a function"
        raise InvalidInput(f"task {qualname or fn!r} is defined {where}, where no worker can import it by its module "
                           "path: give it a name with @task(name=...) and register it in a module the worker "
                           "imports")
    return f"{module}.{qualname}"
