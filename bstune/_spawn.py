"""Objects passed between bstune's process and the processes it spawns (trial workers,
data-parallel ranks), both ways.

One side pickles; the other, its parent or its own child started by ``multiprocessing``'s
*spawn* context, unpickles what it was handed through the pipe or queue the two share, as
``multiprocessing`` itself does with a process's arguments and results. Nothing here reads
a file or the network. cloudpickle, where installed (the ``ray`` extra installs it), also ships
lambdas and the functions of a script bstune loaded (by value); without it the standard
pickle needs every function at module level.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from bstune._keys import SCRIPT_MODULE_PREFIX

__all__ = ["pack", "unpack"]


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
