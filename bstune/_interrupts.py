"""Ctrl-C around imports: an import interrupted halfway is not a KeyboardInterrupt but a broken module."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["ctrl_c_held"]


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C pressed inside the block and raise it as KeyboardInterrupt when the block ends.

    An import interrupted halfway does not fail with KeyboardInterrupt: NumPy's C extension then fails with
    ImportError ("cannot load module more than once per process"), a dataclass of PyTorch's with RuntimeError,
    each a traceback. Only the main thread receives signals; elsewhere, or under a handler not Python's own
    (an embedding program's, a study's), the block runs as it is.

    Example:
        >>> with ctrl_c_held():
        ...     import json
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt
