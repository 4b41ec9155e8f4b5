"""Objects passed between bstune's process and the processes it spawns (trial workers,
data-parallel ranks), both ways.

One side pickles; the other, its parent or its own child started by ``multiprocessing``'s
*spawn* context, unpickles what it was handed through the pipe or queue the two share, as
``multiprocessing`` itself does with a process's arguments and results. Nothing here reads
a file or the network. cloudpickle, where installed (the ``ray`` extra installs it), also ships
lambdas and the functions of a script bstune loaded (by value); without it the standard
pickle needs every function at module level.

A spawned child spends its first seconds importing (torch, bstune, the user's script)
before any of bstune's code runs in it. A Ctrl-C then (a terminal sends it to every process
of the group) would raise ``KeyboardInterrupt`` in the middle of an import and print its
traceback. :func:`children_hold_sigint` starts children with SIGINT blocked (a signal mask
is inherited through fork and exec), so that one arriving then waits, pending, until the
child has its own handler in place and calls :func:`take_held_sigint`.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from bstune._keys import SCRIPT_MODULE_PREFIX

__all__ = ["children_hold_sigint", "pack", "take_held_sigint", "unpack"]


def pack(obj: Any) -> bytes:
    """``obj`` as bytes the process at the other end (a spawned child, or its parent) loads with :func:`unpack`.

    Raises whatever the pickler raises for an object it cannot ship (a lambda without
    cloudpickle, an open file...).

    Example:
        >>> unpack(pack({"batch_size": 32}))
        {'batch_size': 32}
    """
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith(SCRIPT_MODULE_PREFIX):
            cloudpickle.register_pickle_by_value(module)
    return bytes(cloudpickle.dumps(obj))


def unpack(blob: bytes) -> Any:
    """What :func:`pack` made at the other end (only ever bytes of a parent or child of this process)."""
    return pickle.loads(blob)


@contextlib.contextmanager
def children_hold_sigint() -> Iterator[None]:
    """Processes started inside this block start with SIGINT blocked (see the module doc); this
    process's own SIGINT waits until the block ends, as does any thread started inside it for good.

    Only the main thread blocks it (another thread's mask would not reach the children it does not
    start); where ``signal.pthread_sigmask`` is missing (Windows), nothing is blocked.

    Example:
        >>> with children_hold_sigint():
        ...     signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        True
        >>> signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        False
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def take_held_sigint() -> None:
    """In a child started under :func:`children_hold_sigint`, once its SIGINT handler is in place:
    unblock SIGINT, so that one that came while it started is handled now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
