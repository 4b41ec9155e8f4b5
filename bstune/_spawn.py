"""Objects passed between bstune's process and the processes it spawns (trial workers,
data-parallel ranks), both ways.

One side pickles; the other, its parent or its own child started by ``multiprocessing``'s
*spawn* context, unpickles what it was handed through the pipe or queue the two share, as
``multiprocessing`` itself does with a process's arguments and results. Nothing here reads
a file or the network. cloudpickle (a dependency of bstune's) also ships lambdas and
``__main__``'s functions and classes (by value). A script bstune loaded is shipped by name, as any module
is: its children import it (:mod:`bstune._loading`), so that its classes stay the ones its
module holds. A child makes the ``__main__`` classes and functions that came by value its own
``__main__``'s (:func:`unpack_in_child`), so that the processes it starts (a loop's DataLoader
workers) get them by name, as the user's process hands them over.

A spawned child spends its first seconds importing (torch, bstune, the user's script)
before any of bstune's code runs in it. A Ctrl-C then (a terminal sends it to every process
of the group) would raise ``KeyboardInterrupt`` in the middle of an import and print its
traceback. :func:`start_holding_sigint` starts children with SIGINT blocked (a child inherits
the signal mask of the thread that starts it), so that one arriving then waits, pending, until
the child has its own handler in place and calls :func:`take_held_sigint`. The blocking thread
is one of its own: the caller's stays free to take a Ctrl-C, even where a start never returns
(``multiprocessing`` writes a child its arguments before ``start`` returns, and that write
blocks for good when the child died before reading them, an import it could not make, say).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from bstune._scratch import scratch_folder
from bstune.errors import ConfigError

__all__ = [
    "pack",
    "payload_file",
    "remove_files",
    "start_holding_sigint",
    "start_method",
    "take_held_sigint",
    "take_payload_file",
    "unpack",
    "unpack_in_child",
]

# cloudpickle's makers of what it ships by value: a class, an enum, a function (cloudpickle 3.x)
_BY_VALUE_MAKERS = frozenset({"_make_skeleton_class", "_make_skeleton_enum", "_make_function"})


def pack(obj: Any) -> bytes:
    """``obj`` as bytes the process at the other end (a spawned child, or its parent) loads with :func:`unpack`.

    Raises whatever the pickler raises for an object it cannot ship (an open file, a lock, a generator...).

    Example:
        >>> unpack(pack({"batch_size": 32}))
        {'batch_size': 32}
    """
    return bytes(cloudpickle.dumps(obj))


def unpack(blob: bytes) -> Any:
    """What :func:`pack` made at the other end (only ever bytes of a parent or child of this process)."""
    return pickle.loads(blob)


class _ByValueRecorder(pickle.Unpickler):
    """An unpickler that keeps every class and function cloudpickle rebuilt by value (:func:`unpack_in_child`)."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob))
        self.made: list[Any] = []

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if not (module.startswith("cloudpickle") and name in _BY_VALUE_MAKERS):
            return found

        def making(*args: Any, **kwargs: Any) -> Any:
            made = found(*args, **kwargs)
            self.made.append(made)
            return made

        return making


def unpack_in_child(blob: bytes) -> Any:
    """In a spawned child: :func:`unpack` its task, and make the classes and functions of the user's script that
    came with it by value (cloudpickle ships ``__main__``'s so) the ones its ``__main__`` holds under their names.

    A process the child starts in turn pickles what it is handed with the standard pickle, by name: a
    DataLoader's workers, where they spawn (macOS, Windows, ``set_start_method("spawn")``) or come from a fork
    server (Python 3.14's default on Linux), get the loop's ``Dataset`` so. By name, a class that came by value
    is "not the same object as __main__.Blobs" (the one the child's re-import of the script made), and every
    trial failed. Made ``__main__``'s, it pickles by name, and those processes import the script and take the
    class from there, as they do when the user's own process starts them.

    Only what the script defines at its top level is taken (the re-import has it; one defined under the main
    guard fails in those processes however it is pickled, and fails here first, with pickle's clear error);
    of a decorated function, the decorated one (``functools.wraps`` ships the wrapped one with it, under the
    same name). ``__main__`` becomes a copy of the re-imported script's module: the re-import itself
    (``__mp_main__``) keeps its own classes, so that what it made (a cached dataset) pickles by name as well.

    Example:
        >>> unpack_in_child(pack({"batch_size": 32}))
        {'batch_size': 32}
    """
    recorder = _ByValueRecorder(blob)
    task = recorder.load()
    main = sys.modules.get("__main__")
    if main is None:
        return task
    wrapped = {id(inner) for made in recorder.made if (inner := getattr(made, "__wrapped__", None)) is not None}
    shipped = {
        made.__qualname__: made
        for made in recorder.made
        if getattr(made, "__module__", None) == "__main__"
        and getattr(made, "__qualname__", "").isidentifier()
        and id(made) not in wrapped
        and hasattr(main, made.__qualname__)
    }
    if not shipped:
        return task
    if main is sys.modules.get("__mp_main__"):  # spawn's re-import of the script: leave its namespace as it is
        own = types.ModuleType("__main__", main.__doc__)
        own.__dict__.update(main.__dict__)  # __file__ and __spec__ too: what a spawn from here prepares from
        sys.modules["__main__"] = main = own
    for name, made in shipped.items():
        setattr(main, name, made)
    return task


def start_holding_sigint(
    starts: Sequence[Callable[[], object]], stopping: Callable[[], bool] = lambda: False, patience: float = 10.0
) -> None:
    """Call each of ``starts`` (``Process.start``, a ``Pool``'s constructor...) in turn, in a thread that blocks
    SIGINT, so that the processes they start begin with SIGINT blocked (see the module doc); wait for it here.

    A Ctrl-C while it waits is taken here as anywhere: raised as ``KeyboardInterrupt``, or, under a handler that
    only sets a flag, seen when ``stopping()`` turns true (checked every 0.1 s). Either way nothing further is
    started, and the start under way is waited for up to ``patience`` seconds (it returns once the child has
    read its arguments), so that the caller can stop the processes (one whose start is given up on still stops
    on the SIGINT it holds, once it takes it); then the ``KeyboardInterrupt`` goes on, or
    this returns. A second Ctrl-C stops that wait. Raises what a start raised.

    Example:
        >>> started = []
        >>> start_holding_sigint([lambda: started.append(1), lambda: started.append(2)])
        >>> started
        [1, 2]
    """
    errors: list[BaseException] = []
    halt = threading.Event()

    def run() -> None:
        try:
            if hasattr(signal, "pthread_sigmask"):  # POSIX
                from multiprocessing import resource_tracker

                # the resource tracker's first start unblocks SIGINT in the thread that starts it: start it first
                resource_tracker.ensure_running()
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            for start in starts:
                if halt.is_set() or stopping():
                    return
                start()
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    if stopping():
        return
    starter = threading.Thread(target=run, name="bstune-start", daemon=True)
    starter.start()
    try:
        while starter.is_alive() and not stopping():
            starter.join(0.1)
    finally:  # stopping() or a Ctrl-C (which goes on): the start under way is let finish, for the caller to stop
        if starter.is_alive():
            halt.set()
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                starter.join(patience)
    if errors:
        raise errors[0]


def payload_file(data: bytes, what: str) -> str:
    """``data`` (what :func:`pack` made) in a new file only this user may read, for a spawned child to take with
    :func:`take_payload_file` once it runs: passed as a process's argument instead, it goes down the pipe that
    ``start`` writes before it returns, and a child that died before reading it all (a failed import, a script
    without the ``__main__`` guard) leaves ``start`` blocked for good. The caller removes a file no child took.
    Raises :class:`~bstune.errors.ConfigError` where the temp folder (``TMPDIR``) has no room or is not writable.

    Example:
        >>> take_payload_file(payload_file(pack([1, 2]), "example")) == pack([1, 2])
        True
    """
    made: list[str] = []
    try:
        handle, path = tempfile.mkstemp(prefix=f"{what}-", suffix=".pickle", dir=scratch_folder())
        made.append(path)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
    except BaseException as exc:
        remove_files(made)
        if isinstance(exc, OSError):
            raise ConfigError(
                f"could not write the task ({len(data):,} bytes, pickled) for a spawned process to "
                f"{tempfile.gettempdir()}: {exc.strerror or exc}; point TMPDIR at a folder with room for it",
                source="temp folder",
            ) from exc
        raise
    return path


def take_payload_file(path: str) -> bytes:
    """In the child: the bytes of a :func:`payload_file`, which is removed (it holds the user's task, data and all)."""
    try:
        return Path(path).read_bytes()
    finally:
        remove_files([path])


def remove_files(paths: Iterable[str]) -> None:
    """Remove each of ``paths`` that is still there (payload files no child took, or took already)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def take_held_sigint() -> None:
    """In a child started by :func:`start_holding_sigint`, once its SIGINT handler is in place:
    unblock SIGINT, so that one that came while it started is handled now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start_method() -> str:
    """This process's ``multiprocessing`` start method, without fixing it (a later ``set_start_method`` of the
    user's still works): the one set, else the platform's default. A child started by *spawn* sets it as its
    own (:func:`multiprocessing.set_start_method` with ``force=True``), so that the processes it starts in turn
    (a loop's DataLoader workers) start as they would from the user's process."""
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
