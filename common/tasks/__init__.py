"""Task registry: tasks keyed by name (``cls``, ``seg``, ``dpt``, ``csr``, ``tti``).

Every module of this package (except ``base``) is imported and registers its task
with ``@register_task``: a new task is one new module (plus its output message in
service.proto and the split that uses it).
"""

from __future__ import annotations

import importlib
import pkgutil

from splitfc.common.errors import UnknownNameError
from splitfc.common.tasks.base import Keep, Task

TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task (one instance) to the registry under ``cls.name``."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    """The task of ``name``; unknown names list the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownNameError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def task_of(split_id: str) -> Task:
    """The task of a split."""
    from splitfc.common.specs import get_split

    return get_task(get_split(split_id).task)


def task_for_proto_field(field: str) -> Task | None:
    """The task that fills ``TaskResult.<field>``, if any."""
    return next((t for t in TASKS.values() if t.proto_field == field), None)


def _import_task_modules() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_task_modules()

__all__ = ["TASKS", "Keep", "Task", "get_task", "register_task", "task_for_proto_field", "task_of"]
