"""Ctrl-C around imports: an import interrupted halfway is not a KeyboardInterrupt but a broken module."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["ctrl_c_held"]


@contextlib.contextmanager
def ctrl_c_held(what: str = "the imports finish") -> Iterator[None]:
    """Hold a Ctrl-C pressed inside the block and raise it as KeyboardInterrupt when the block ends.

    An import interrupted halfway does not fail with KeyboardInterrupt: NumPy's C extension then fails with
    ImportError ("cannot load module more than once per process"), a dataclass of PyTorch's with RuntimeError,
    each a traceback. The first press says that the stop waits until ``what``; a second one stops at once
    (an import that hangs, on a slow network file system, must not hold the terminal). Only the main thread
    receives signals; elsewhere, or under a handler not Python's own (an embedding program's, a study's, or
    SIGINT ignored under nohup), the block runs as it is.

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

    def hold(signum: int, frame: FrameType | None) -> None:
        if pressed:  # pressed again: now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        pressed.append(signum)
        with contextlib.suppress(Exception):  # stderr closed, or busy mid-write: the stop still comes
            sys.stderr.write(f"bstune: Ctrl-C: stopping once {what} (press it again to stop now)\n")
            sys.stderr.flush()

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    except Exception as exc:
        if pressed:  # the block failed after the press (an import cut short): the press is the news
            raise KeyboardInterrupt from exc
        raise
    finally:
        if signal.getsignal(signal.SIGINT) is hold:  # not one the block installed
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt
