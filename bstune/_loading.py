"""Loading a Task from a user's Python script (what the CLI's SCRIPT argument names).

A script exposes its problem as a function ``make_task() -> bstune.Task`` (preferred:
building data is deferred until asked) or a module-level ``task`` object. Loading
runs the script's top level, as ``python script.py`` would, minus its
``if __name__ == "__main__":`` block.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bstune._keys import SCRIPT_MODULE_PREFIX
from bstune.errors import ConfigError, TaskError
from bstune.task import Task

__all__ = ["load_task"]


def load_task(path: str | Path) -> Task:
    """Import ``path`` and return its Task.

    Example:
        >>> load_task("no/such/file.py")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: no/such/file.py: no such file
    """
    script = Path(path)
    if not script.is_file():
        raise ConfigError("no such file", source=str(path))
    if script.suffix != ".py":
        raise ConfigError("expected a Python script (.py) defining make_task()", source=str(path))
    name = f"{SCRIPT_MODULE_PREFIX}{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ConfigError("cannot be imported as a Python module", source=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"importing the script raised {type(exc).__name__}: {exc}", source=str(path)) from exc
    factory = getattr(module, "make_task", None)
    if callable(factory):
        try:
            task = factory()
        except TaskError as exc:
            raise ConfigError(str(exc), source=str(path), field="make_task()") from exc
        except Exception as exc:
            raise ConfigError(f"raised {type(exc).__name__}: {exc}", source=str(path), field="make_task()") from exc
    else:
        task = getattr(module, "task", None)
        if task is None:
            raise ConfigError("defines neither make_task() nor a module-level `task`", source=str(path))
    if not isinstance(task, Task):
        raise ConfigError(f"expected a bstune.Task, got {type(task).__name__}", source=str(path), field="make_task()")
    return task
