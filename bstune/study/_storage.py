"""Opening an Optuna storage from a URL or path, with errors that say what is wrong."""

from __future__ import annotations

import json
import sqlite3
import traceback
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from bstune.errors import ConfigError, StorageError, UserCodeError
from bstune.study._file_lock import FileLock
from bstune.study._optuna_compat import swap_state

# the file processes lock beside a storage file (bstune.study._trial_taking): not "<file>.lock", which Optuna's
# journal takes as its own lock (a symlink it makes and removes; a file of ours there stalled every journal write
# 30 s, then Optuna deleted it)
TAKE_LOCK_SUFFIX = ".bstune.lock"


def lock_file(file: Path, suffix: str = TAKE_LOCK_SUFFIX) -> Path:
    """The file a lock on storage ``file`` takes: hidden beside it (``runs/.study.db.bstune.lock``).

    Example:
        >>> str(lock_file(Path("runs/study.db")))
        'runs/.study.db.bstune.lock'
    """
    return file.with_name(f".{file.name}{suffix}")


__all__ = ["open_storage", "storage_error", "storage_failure", "storage_file"]

_SQLITE_LOCK_WAIT_S = 60.0  # sqlite3's default is 5 s: short when several processes write one file
# how long a process opening a SQLite file waits for another creating it (or counting its trials) before it opens
# it anyway (without fcntl, on Windows, two creating one file at once may race: Optuna's own behaviour)
_CREATE_PATIENCE_S = 120.0


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
            file = Path(text.removeprefix("sqlite:///"))
            file.parent.mkdir(parents=True, exist_ok=True)
            # several processes on one file take turns to write: wait for the lock rather than fail; and
            # one at a time creates the schema (two at once: "UNIQUE constraint failed: alembic_version")
            with FileLock(None if file.name == ":memory:" else lock_file(file), _CREATE_PATIENCE_S):
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


def storage_error(reason: str, source: str) -> StorageError:
    """The error a study ends with when its storage ``source`` failed (``reason``: :func:`storage_failure`'s)."""
    return StorageError(
        reason,
        source=source,
        advice="what was recorded before is kept: make room (or restore the file or its permissions), then resume "
        "the study",
    )


def storage_failure(exc: BaseException) -> str | None:
    """Why the study's storage failed behind ``exc``, in one line; None where no storage failed.

    Optuna hides a storage's failure to record a trial's end behind an ``AssertionError``
    of its own ("Should not reach"), with the storage's error as its context. So the chain of
    causes and contexts is read, and the innermost storage error gives the reason: SQLite's
    or the database driver's, or an ``OSError`` (a journal file on a full disk). It counts
    only where it came up through Optuna's storages (or bstune's own storage calls): a
    user's own database or file error is not the study's storage failing, and the chain is
    not read past a :class:`~bstune.errors.UserCodeError` (the code that trains).

    Example:
        >>> import tempfile, optuna
        >>> db = Path(tempfile.mkdtemp()) / "study.db"
        >>> _ = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
        >>> read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
        >>> try:
        ...     optuna.load_study(study_name="s", storage=read_only).ask()
        ... except Exception as exc:
        ...     storage_failure(exc)
        'attempt to write a readonly database (sqlite3.OperationalError)'
        >>> try:
        ...     sqlite3.connect(":memory:").execute("SELECT * FROM images")  # the user's own database
        ... except sqlite3.Error as exc:
        ...     storage_failure(exc) is None
        True
    """
    reason, through_storage = None, False
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen and not isinstance(at, UserCodeError):
        seen.add(id(at))
        through_storage = through_storage or any(
            _storage_code(frame.filename) for frame in traceback.extract_tb(at.__traceback__)
        )
        if _storage_kind(at):
            reason = _one_line(at)
        at = at.__cause__ or at.__context__
    return reason if through_storage else None


def _storage_kind(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error | optuna.exceptions.StorageInternalError | OSError) or type(
        exc
    ).__module__.startswith("sqlalchemy.")


def _storage_code(filename: str) -> bool:
    """Whether ``filename`` is Optuna's storages or bstune's own storage code."""
    parts = Path(filename).parts
    if parts[-2:] in (("study", "_optuna_compat.py"), ("study", "_storage.py")) and "bstune" in parts:
        return True
    return any(parts[i : i + 2] == ("optuna", "storages") for i in range(len(parts) - 1))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        lines = str(exc).strip().splitlines()  # SQLAlchemy's go on with the statement and "Background on..."
        what = lines[0] if lines else ""
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    return f"{what} ({kind})" if what else kind
