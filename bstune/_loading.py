"""Loading what a user's Python script tunes (what the CLI's SCRIPT argument names).

A script exposes its problem as a function ``make_task() -> bstune.Task`` (preferred:
building data is deferred until asked), a module-level ``task`` object, or its own
training loop as a function ``train(ctx)`` (see :class:`bstune.TrialContext`), which
``bstune run`` tunes as it tunes a task. Loading runs the script's top level, as
``python script.py`` would, minus its ``if __name__ == "__main__":`` block, and with the
script's folder first on ``sys.path`` as ``python`` puts it, so that the script imports the
modules beside it (``from my_data import load``).

The script's module is named ``bstune_user_<hash>`` (so that a script called ``torch.py``
shadows nothing), and that name is importable in every process started from this one: a
folder on ``sys.path`` (which ``multiprocessing`` hands to the processes it spawns) holds a
``bstune_user_<hash>.py`` that loads the script itself. So trial workers, re-scoring and
data-parallel processes, and the DataLoader workers they spawn unpickle the script's
functions and classes (a ``Dataset`` subclass, a ``functools.cache`` function) by name,
as the same objects the script's module holds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from bstune._keys import SCRIPT_MODULE_PREFIX
from bstune._scratch import scratch_folder
from bstune.errors import ConfigError, TaskError
from bstune.task import Task
from bstune.training import TrialFunction

__all__ = ["load_subject", "load_task"]


def load_subject(path: str | Path) -> Task | TrialFunction:
    """Import ``path`` and return its Task, or its training function ``train(ctx)`` when it defines
    no task.

    Example:
        >>> load_subject("no/such/file.py")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: no/such/file.py: no such file
    """
    module = _import(path)
    if not hasattr(module, "make_task") and getattr(module, "task", None) is None:
        fn = getattr(module, "train", None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return _task_of(module, path)


def load_task(path: str | Path, *, command: str = "this command") -> Task:
    """Import ``path`` and return its Task.

    Example:
        >>> load_task("no/such/file.py")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: no/such/file.py: no such file
    """
    module = _import(path)
    if (
        not hasattr(module, "make_task")
        and getattr(module, "task", None) is None
        and callable(getattr(module, "train", None))
    ):
        raise ConfigError(
            f"defines a training function train(ctx) and no Task; {command} needs a Task (make_task()); "
            "`bstune run` tunes the training function, and run_function(train, result.best_train_config(), "
            "params=result.best_config, optimizer=result.best_optimizer()) trains its recommendation again "
            "(see the README)",
            source=str(path),
        )
    return _task_of(module, path)


def _import(path: str | Path) -> ModuleType:
    script = Path(path)
    if not script.is_file():
        raise ConfigError("no such file", source=str(path))
    if script.suffix != ".py":
        raise ConfigError("expected a Python script (.py) defining make_task() or train(ctx)", source=str(path))
    name = f"{SCRIPT_MODULE_PREFIX}{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ConfigError("cannot be imported as a Python module", source=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    _importable(name, script.resolve())
    folder = script.resolve().parent
    if str(folder) not in sys.path:  # as `python SCRIPT` does; kept, for imports the training makes later
        sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"importing the script raised {type(exc).__name__}: {exc}", source=str(path)) from exc
    return module


def _shims() -> Path:
    """This process's folder of shims (:func:`_importable`), in its scratch folder (removed at exit)."""
    folder = scratch_folder() / "scripts"
    folder.mkdir(exist_ok=True)
    return folder


def _importable(name: str, script: Path) -> None:
    """Let ``import name`` load ``script`` under that name in processes spawned from this one (see the module
    docstring): the shim puts the script's own module in its place, with its ``__file__``."""
    shim = _shims() / f"{name}.py"
    if str(shim.parent) not in sys.path:
        sys.path.append(str(shim.parent))  # last: it holds bstune_user_* names only
    if shim.exists():
        return
    shim.write_text(
        "import importlib.util, sys\n"
        f"_spec = importlib.util.spec_from_file_location(__name__, {str(script)!r})\n"
        "_module = sys.modules[__name__] = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_module)\n"
    )


def _task_of(module: Any, path: str | Path) -> Task:
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
            raise ConfigError(
                "defines neither make_task(), a module-level `task`, nor a training function train(ctx)",
                source=str(path),
            )
    if not isinstance(task, Task):
        raise ConfigError(f"expected a bstune.Task, got {type(task).__name__}", source=str(path), field="make_task()")
    return task
