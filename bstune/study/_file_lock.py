"""An exclusive ``flock`` on a file beside a study's storage, with a patience.

The OS releases it when its holder dies, so a crashed process never leaves a study locked. Where
there is no ``fcntl`` (Windows), no path (a database server, an in-memory database), or a folder
that cannot be written, there is no lock: :meth:`FileLock.take` says so, and the caller goes on
without it. Used to count and take a study's trials (:mod:`bstune.study._trial_taking`), to probe a
study once, and to create a SQLite file once (:mod:`bstune.study._storage`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # not POSIX: no lock (see the module docstring)
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock"]

logger = logging.getLogger(__name__)


class FileLock:
    """An exclusive ``flock`` of ``path`` (created if missing), taken with :meth:`take` and let go with :meth:`let_go`,
    or held for a ``with`` block.

    A process that waits longer than ``patience`` seconds goes on without it (a warning in the log).
    Holding it again while held, or letting go when not held, does nothing. ``waiting``, if given, is
    logged (INFO) once when the lock is held elsewhere and this process must wait.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> lock = FileLock(Path(tempfile.mkdtemp()) / ".x.lock")
        >>> lock.take(), lock.held
        (True, True)
        >>> lock.let_go(); lock.held
        False
        >>> with lock:  # held for the block, and let go after it
        ...     lock.held
        True
        >>> lock.held
        False
        >>> FileLock(None).take()  # nothing to lock
        False
    """

    POLL_S = 0.05

    def __init__(self, path: Path | None, patience: float = 120.0, *, waiting: str | None = None) -> None:
        self.path = None if fcntl is None else path
        self._patience = patience
        self._waiting = waiting
        self._fd: int | None = None
        self._outer = False  # held before the with-block began

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        """Wait for the lock; True when held, False where there is none or ``patience`` ran out."""
        if self.path is None or fcntl is None:
            return False
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only folder: the storage itself says so when it writes
            logger.debug("no lock at %s: %s", self.path, exc)
            return False
        deadline = time.monotonic() + self._patience
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self._waiting is not None:
                        logger.info("%s", self._waiting)
                        self._waiting = None
                    if time.monotonic() > deadline:
                        logger.warning(
                            "waited %.3g s for %s (another process on this study holds it); going on",
                            self._patience,
                            self.path,
                        )
                        os.close(fd)
                        return False
                    time.sleep(self.POLL_S)
                    continue
                except OSError as exc:  # a file system without flock
                    logger.debug("no lock at %s: %s", self.path, exc)
                    os.close(fd)
                    return False
                self._fd = fd
                return True
        except BaseException:  # a Ctrl-C while it waits: the file is not left open
            os.close(fd)
            raise

    def let_go(self) -> None:
        """Release the lock, if held (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self._outer = self.held  # a with-block inside a hold leaves that hold in place
        self.take()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._outer:
            self.let_go()
