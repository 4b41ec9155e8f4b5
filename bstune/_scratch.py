"""This process's scratch folder in the temp folder (``TMPDIR``): the shims that let spawned processes import
a user's script, the payload files that hand them their task, the journal that parallel trials share when the
study has no storage of its own.

It is removed when the process exits. A process that cannot run its exit handlers (SIGKILL, the OOM
killer, a batch scheduler's hard kill) leaves it behind, with payloads that may hold the user's data, so
each folder carries an ``flock`` held by its process for as long as it lives (the OS lets go when it
dies, however it dies; forked children share it): the next bstune process on the machine to make a
scratch folder removes every one whose lock it can take. A folder's name carries its machine's name, and
only that machine sweeps it: a temp folder shared between machines may keep its locks per machine. Where
there is no ``fcntl`` (Windows), or the file system takes no locks (NFS mounted ``nolock``), there is no
lock, and a killed process's folder stays.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: removed at exit only
    fcntl = None  # type: ignore[assignment]

__all__ = ["PREFIX", "remove_abandoned", "scratch_folder"]

logger = logging.getLogger(__name__)

PREFIX = "bstune-scratch-"
_OWNER = ".owner"  # the locked file: present only once its lock is held (see scratch_folder)

_folder: Path | None = None
_owner_fd: int | None = None  # held open, and locked, for as long as this process lives


def scratch_folder() -> Path:
    """This process's scratch folder (made at the first call, removed at exit); a forked child shares its parent's.

    Example:
        >>> folder = scratch_folder()
        >>> folder.name.startswith(PREFIX), folder == scratch_folder()
        (True, True)
    """
    global _folder, _owner_fd
    if _folder is not None and _folder.is_dir():
        return _folder
    if _owner_fd is not None:  # the folder was removed under it (a temp cleaner): a new one
        os.close(_owner_fd)
        _owner_fd = None
    remove_abandoned()
    folder = Path(tempfile.mkdtemp(prefix=_own_prefix()))  # this user's alone (0700)
    if fcntl is not None:
        # locked under another name, then renamed: a sweeper never finds an owner file that is not yet locked
        locking = folder / ".locking"
        fd = os.open(locking, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks (NFS mounted nolock): removed at exit only
            os.close(fd)
            logger.debug("no lock in %s (%s): a killed process leaves its scratch folder", folder, exc)
        else:
            os.rename(locking, folder / _OWNER)
            _owner_fd = fd
    atexit.register(_remove, folder, os.getpid())
    _folder = folder
    return folder


def _own_prefix() -> str:
    """``PREFIX`` and this machine's name: a temp folder shared between machines (where a lock may be each
    machine's own) is swept of this machine's folders only."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    return f"{PREFIX}{host}-"


def _remove(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # not a forked child that exits through atexit: the folder is its parent's
        shutil.rmtree(folder, ignore_errors=True)


def remove_abandoned(temp: Path | None = None) -> list[Path]:
    """Remove this machine's scratch folders in ``temp`` (default: the temp folder) whose process is gone; returns
    them. A folder without its owner file (being made, or made where there are no locks) is left alone."""
    removed: list[Path] = []
    if fcntl is None:
        return removed
    for folder in Path(temp or tempfile.gettempdir()).glob(f"{_own_prefix()}*"):
        try:
            fd = os.open(folder / _OWNER, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # no owner file, or another user's folder
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process (or a forked child of it) lives
            continue
        finally:  # closing lets go of a lock this call took
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        logger.debug("removed %s, left by a process that was killed", folder)
    return removed
