"""Opening an Optuna storage from a URL or path, with errors that say what is wrong."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from bstune.errors import ConfigError
from bstune.study._optuna_compat import swap_state

__all__ = ["open_storage", "storage_file"]

_SQLITE_LOCK_WAIT_S = 60.0  # sqlite3's default is 5 s: short when several processes write one file


class _RDBStorage(RDBStorage):
    """Optuna's RDB storage, with a queued trial handed to exactly one process.

    Optuna takes a queued (WAITING) trial by reading its state, then writing RUNNING; on
    SQLite the read holds no lock, so processes that ask at the same instant could all
    get the same queued trial (a retry of an abandoned one) and run it side by side. Here
    the take is one ``UPDATE ... WHERE state = WAITING``: one process wins, the others
    move on to the next queued trial or a new one.
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        return swap_state(self, trial_id, TrialState.WAITING, TrialState.RUNNING, datetime_start="now")


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
            _check_journal(path)
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
            return _RDBStorage(text, engine_kwargs={"connect_args": {"timeout": _SQLITE_LOCK_WAIT_S}})
        return _RDBStorage(text)
    except ConfigError:
        raise
    except (OSError, ImportError, ValueError, optuna.exceptions.OptunaError, Exception) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # not SQLAlchemy's "Background on..."
        raise ConfigError(f"cannot open {text!r}: {type(exc).__name__}: {first}", source="storage") from exc


def _check_journal(path: Path) -> None:
    """Refuse a file that holds something other than Optuna journal records (another log given by mistake):
    opening it went on to a JSON traceback, and appended a record to the file first."""
    if not path.is_file():
        return
    with path.open("rb") as f:
        first = f.readline(1 << 16)
    if not first.strip() or not first.endswith(b"\n"):  # empty, or a first record another process is writing
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(
            f"{str(path)!r} holds something other than an Optuna journal (its first line is not a journal "
            f"record: {first[:60].decode(errors='replace').rstrip()!r}); give a new file, or the study's own",
            source="storage",
        )


def storage_file(url: str | Path | BaseStorage | None) -> Path | None:
    """The local file a storage URL keeps its trials in (SQLite or journal); None for others.

    Example:
        >>> [str(storage_file(url)) for url in ("sqlite:///runs/study.db", "journal:runs/x.log", None)]
        ['runs/study.db', 'runs/x.log', 'None']
    """
    if url is None or isinstance(url, BaseStorage):
        return None
    text = str(url)
    if text.startswith("journal:") or text.endswith((".log", ".jsonl")):
        return Path(text.removeprefix("journal:"))
    if text.startswith("sqlite:///"):
        return Path(text.removeprefix("sqlite:///"))
    return None
