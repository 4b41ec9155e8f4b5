"""Opening an Optuna storage from a URL or path, with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from bstune.errors import ConfigError

__all__ = ["open_storage"]

_SQLITE_LOCK_WAIT_S = 60.0  # sqlite3's default is 5 s: short when several processes write one file


def open_storage(url: str | Path | BaseStorage | None) -> BaseStorage | None:
    """``None``: in memory. ``sqlite:///file.db`` (or any SQLAlchemy URL): Optuna's RDB
    storage. ``journal:path``, or a path ending in ``.log``/``.jsonl``: Optuna's journal
    file, which needs no database and suits network file systems. All of them open in
    ``optuna-dashboard`` as they are. Several processes may share a SQLite or journal
    file: SQLite writers wait up to a minute for the file's lock.

    Example:
        >>> open_storage(None) is None
        True
    """
    if url is None or isinstance(url, BaseStorage):
        return url
    text = str(url)
    try:
        if text.startswith("journal:") or text.endswith((".log", ".jsonl")):
            path = Path(text.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in text:
            raise ConfigError(
                f"{text!r} is neither a database URL (sqlite:///runs/study.db) nor a journal file "
                "(journal:runs/study.log, or a path ending in .log or .jsonl)",
                source="storage",
            )
        if text.startswith("sqlite:///"):
            Path(text.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # several processes on one file take turns to write: wait for the lock rather than fail
            return RDBStorage(text, engine_kwargs={"connect_args": {"timeout": _SQLITE_LOCK_WAIT_S}})
        return RDBStorage(text)
    except ConfigError:
        raise
    except (OSError, ImportError, ValueError, optuna.exceptions.OptunaError, Exception) as exc:
        raise ConfigError(f"cannot open {text!r}: {type(exc).__name__}: {exc}", source="storage") from exc
