"""How a process takes its share of a study's ``n_trials`` beside other processes on the same storage.

Two ``bstune run`` of one study (or one run's trial workers beside another run) each count the
trials finished and running before they take the next. Counted without a lock, both may see one
trial left and both take it, and the study ends with a trial more than ``n_trials``. On a SQLite or
journal file the count and the new trial's creation happen under an exclusive ``flock`` of
``.<file>.bstune.lock``, which the OS releases when its holder dies. On a database server (or where
``fcntl`` is missing) there is no lock: the count and the creation are a read and a write apart,
milliseconds, so two processes rarely both take the last trial. A run whose count is reached while
a peer's trial is still running waits for it (:func:`wait_for_peers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from bstune._keys import HEARTBEAT_KEY, OWNER_KEY
from bstune.study._file_lock import FileLock
from bstune.study._liveness import OWNERLESS_S, Owner, abandoned_reason, stored_progress
from bstune.study._storage import TAKE_LOCK_SUFFIX, lock_file, storage_file

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

    from bstune.study._settings import StudySettings

__all__ = [
    "PROBE_LOCK_SUFFIX",
    "TAKE_LOCK_SUFFIX",
    "TakeLock",
    "lock_files",
    "peers_running",
    "taken",
    "wait_for_peers",
]

logger = logging.getLogger(__name__)
PROBE_LOCK_SUFFIX = ".bstune-probe.lock"  # held while a process probes a study (OptunaBackend.probing)
_PEER_POLL_S = 1.0  # how often a run waiting for peers' trials looks at the storage


class TakeLock(FileLock):
    """Held from counting a study's trials to the new trial being stored as running (:meth:`let_go` then): the
    :class:`~bstune.study._file_lock.FileLock` beside the study's SQLite or journal file (``suffix`` names which).

    A process that waits longer than ``patience`` seconds goes on without it (logged; at worst
    one trial too many).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> lock = TakeLock(f"sqlite:///{folder}/study.db")
        >>> lock.take(), lock.held, lock.path.name
        (True, True, '.study.db.bstune.lock')
        >>> lock.let_go(); lock.held
        False
        >>> TakeLock("postgresql://db/x").take()  # no file: nothing to lock
        False
    """

    def __init__(
        self,
        url: str | Path | BaseStorage | None,
        patience: float = 120.0,
        *,
        suffix: str = TAKE_LOCK_SUFFIX,
        waiting: str | None = None,
    ) -> None:
        file = storage_file(url)
        path = None if file is None or file.name == ":memory:" else lock_file(file, suffix)
        super().__init__(path, patience, waiting=waiting)


def peers_running(trials: Sequence[FrozenTrial], grace_period: float, *, now: float | None = None) -> int:
    """The trials of one read of a study that run in another live process: not this process's (none runs while it
    counts: one of its own still stored as running was cut short), not abandoned, with a heartbeat within
    ``grace_period`` where it has written one (a peer stopped with Ctrl-Z writes none)."""
    return len(_peer_trials(trials, grace_period, now=now))


def _peer_trials(trials: Sequence[FrozenTrial], grace_period: float, *, now: float | None = None) -> list[FrozenTrial]:
    me = Owner.current()
    now = time.time() if now is None else now
    out = []
    for trial in trials:
        if trial.state != TrialState.RUNNING or abandoned_reason(trial, grace_period, now=now) is not None:
            continue
        owner = trial.system_attrs.get(OWNER_KEY)
        if isinstance(owner, dict) and (owner.get("host"), owner.get("boot_id"), owner.get("pid")) == (
            me.host,
            me.boot_id,
            me.pid,
        ):
            continue
        beat = trial.system_attrs.get(HEARTBEAT_KEY)
        if isinstance(beat, int | float) and now - beat > grace_period:
            continue
        out.append(trial)
    return out


def _who(trial: FrozenTrial, grace_period: float) -> str:
    """Trial ``trial``, whose process is waited for, and when it would be taken over."""
    owner = trial.system_attrs.get(OWNER_KEY)
    if not isinstance(owner, dict):
        return f"trial {trial.number} (no process named yet: taken over {min(grace_period, OWNERLESS_S):g} s after its start)"
    here = owner.get("host") == Owner.current().host
    return f"trial {trial.number} (pid {owner.get('pid')} on {owner.get('host')}" + (
        ")" if here else f": taken over after {grace_period:g} s without a heartbeat)"
    )


def taken(study: optuna.Study, grace_period: float) -> int:
    """The trials of ``study`` finished (as :func:`~bstune.study._liveness.count_finished` counts them) or running in
    another live process (:func:`peers_running`), from one read: what counts toward ``n_trials`` for a run that
    is between trials."""
    trials = study.get_trials(deepcopy=False)
    return stored_progress(trials, grace_period)[0] + peers_running(trials, grace_period)


def wait_for_peers(study: optuna.Study, settings: StudySettings, on_poll: Callable[[], None]) -> bool:
    """Wait while trials run in other live processes (:func:`peers_running`); True when it waited (count the
    study's trials again: a peer's trial may have been given up and queued to run again), False when none ran.
    ``on_poll`` is called at each look (a progress bar's update).

    A study's run ends once its ``n_trials`` are finished, so a run whose last trial ends
    while a peer's is still running waits for it rather than report a study still in progress.
    """
    peers = _peer_trials(study.get_trials(deepcopy=False), settings.grace_period)
    if not peers:
        return False
    # said at WARNING: the wait can last a whole grace period, and a console at its default level showed nothing
    logger.warning(
        "waiting for %s, running in another process on this study: n_trials counts %s",
        ", ".join(_who(t, settings.grace_period) for t in peers),
        "it" if len(peers) == 1 else "them",
    )
    alive = len(peers)
    while alive:
        time.sleep(min(settings.heartbeat_interval, _PEER_POLL_S))
        on_poll()
        alive = peers_running(study.get_trials(deepcopy=False), settings.grace_period)
    return True


def lock_files(file: Path) -> list[Path]:
    """The lock files processes make beside storage ``file`` (which a failed start that made the file removes).

    Example:
        >>> [p.name for p in lock_files(Path("runs/study.db"))]
        ['.study.db.bstune.lock', '.study.db.bstune-probe.lock']
    """
    return [lock_file(file), lock_file(file, PROBE_LOCK_SUFFIX)]
