"""A worker's Python application: the modules it imports once (`--import`, `[python] imports`), whose `@task`
functions are the Python tasks it runs, and the pool of children that runs them."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable

from pheanq import task_registry
from pheanq.config import Settings
from pheanq.dispatch import Dispatcher
from pheanq.errors import ConfigError
from pheanq.worker.python_pool import PythonPool

log = logging.getLogger("pheanq.worker")


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
    """The modules, each found on the path without being run (a worker-tender checks what its workers will
    import, without importing the application itself); ConfigError names one that is not found."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    found = []
    for module in dict.fromkeys(modules):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as error:
            raise ConfigError(f"cannot import {module!r}: {error}") from None
        if spec is None:
            raise ConfigError(f"cannot import {module!r}: no module named {module!r}")
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
    database = dispatch.store.database

    def forget_in_child() -> None:
        # The connections are the worker's: a child that closed them would end the worker's sessions too.
        database.engine.dispose(close=False)

    return PythonPool(settings.max_tasks_per_child, settings.max_child_memory, settings.max_log_bytes,
                      forget_in_child)
