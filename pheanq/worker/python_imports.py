"""A worker's Python application: the modules it imports once (`--import`, `[python] imports`), whose `@task`
functions are the Python tasks it runs, and the pool of children that runs them."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pheanq import task_registry
from pheanq.config import Settings
from pheanq.dispatch import Dispatcher
from pheanq.errors import ConfigError

if TYPE_CHECKING:
    from pheanq.worker.python_pool import PythonPool

log = logging.getLogger("pheanq.worker")
# In a child: what it inherited from its worker and must never finalise (see start_python).
_INHERITED: list[object] = []


def import_tasks(modules: Iterable[str]) -> list[str]:
    """Import each module (its directory: the current one, as `python -m` has it); the Python tasks registered.
    ConfigError names a module that cannot be imported and why, in one line."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"cannot import {module!r}: {error}") from None
        except Exception as error:
            raise ConfigError(f"importing {module!r} failed: {type(error).__name__}: {error}") from None
    return task_registry.names()


def check_importable(modules: Iterable[str]) -> list[str]:
    """The modules, each of whose top-level package is found on the path (a worker-tender checks what its
    workers will import without running any of the application: finding a submodule would import its
    package); ConfigError names one that is not found."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    found = []
    for module in dict.fromkeys(modules):
        package = module.partition(".")[0]
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError) as error:
            raise ConfigError(f"cannot import {module!r}: {error}") from None
        if spec is None:
            raise ConfigError(f"cannot import {module!r}: no module named {package!r}")
        found.append(module)
    return found


def start_python(dispatch: Dispatcher, settings: Settings, modules: Iterable[str]) -> PythonPool | None:
    """Import the application and run its on_worker_start hooks; the pool that runs its tasks, or None when the
    worker runs commands only (no module to import)."""
    modules = list(dict.fromkeys([*settings.python_imports, *modules]))
    if not modules:
        return None
    names = import_tasks(modules)
    if not names:
        raise ConfigError(f"{', '.join(modules)} registered no Python task (decorate functions with "
                          "@pheanq.task)")
    for hook in task_registry.hooks("worker"):
        try:
            hook()
        except Exception as error:
            raise ConfigError(f"the on_worker_start hook {getattr(hook, '__qualname__', hook)!r} failed: "
                              f"{type(error).__name__}: {error}") from None
    log.info("Python tasks: %s", ", ".join(names))
    # lazy: a worker without a Python application (no module to import) and a worker-tender (which imports this
    # module for check_importable) never load the pool's modules
    from pheanq.worker.python_pool import PythonPool

    database = dispatch.store.database

    def forget_in_child() -> None:
        # The connections are the worker's: a child that closed them would end the worker's sessions too. Their
        # pool is kept referenced for the child's whole life, so that no collected connection is finalised (a
        # PostgreSQL connection's finaliser says goodbye to the server on the worker's socket); the child ends
        # with os._exit, which finalises nothing.
        _INHERITED.append(database.engine.pool)
        database.engine.dispose(close=False)

    return PythonPool(settings.max_tasks_per_child, settings.max_child_memory, settings.max_log_bytes,
                      forget_in_child)
