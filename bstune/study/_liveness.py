"""Which running trials are dead: trial owners, heartbeats, and one retry per abandoned trial.

Several processes may run one study on one storage (a SQLite file, a journal file, a
database server). A trial left ``RUNNING`` by a process that died must be failed and run
again, but a trial that another live process is running must be left alone. Optuna's
own heartbeat exists only for ``RDBStorage`` (``JournalStorage`` has none in Optuna 5),
and it cannot tell a dead process from a live one before its grace period ends. So
bstune records, on every trial it runs, in the trial's system attributes:

- ``bstune:owner``: the host (name and kernel boot id), process id and process start
  time of the process running it;
- ``bstune:heartbeat``: a wall-clock timestamp, renewed every ``heartbeat_interval``
  seconds by a daemon thread while the trial runs.

A ``RUNNING`` trial is *abandoned* when its owner is on this host and that process is
gone (or its pid now belongs to a younger process), or, for an owner elsewhere, when its
last heartbeat (its start, if it never beat) is older than ``grace_period``. A trial
that names no owner three minutes after it started (``OWNERLESS_S``) is abandoned too:
bstune records the owner first thing in a trial, so its process stopped between Optuna
storing the trial and that write (killed, or its disk full), and a resume waited out the
whole grace period for it (ten minutes, silent). An
abandoned trial is marked ``interrupted`` and failed with an atomic compare-and-set
(``RUNNING -> FAIL``), so when several processes notice it at once exactly one wins,
and only the winner enqueues its parameters again (``retry_of`` names the original).
Finished trials are never touched. A trial stopped by Ctrl-C in its own process ends the
same way at once: marked ``interrupted``, failed, and queued again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from bstune._keys import HEARTBEAT_KEY, OWNER_KEY
from bstune.records import TrialStatus
from bstune.study._optuna_compat import rdb_of, storage_of, swap_state, trial_id_of
from bstune.training import trained_before

__all__ = [
    "HEARTBEAT_KEY",
    "OWNERLESS_S",
    "OWNER_KEY",
    "Heartbeat",
    "Owner",
    "Untold",
    "abandoned_reason",
    "claim_abandoned",
    "count_finished",
    "count_taken",
    "describe_states",
    "finished_trials",
    "requeue_interrupted",
    "retry_abandoned",
    "retry_unqueued",
    "with_heartbeat",
]

logger = logging.getLogger(__name__)

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# seconds after its start that a running trial naming no owner is abandoned (or grace_period, if shorter): a live
# bstune process names itself milliseconds after Optuna stores the trial, but on a contended SQLite file each of the
# writes in between may wait out the lock (_storage._SQLITE_LOCK_WAIT_S, 60 s): three of those
OWNERLESS_S = 180.0


@cache
def _boot_id() -> str | None:
    """The kernel's boot id (Linux): tells this host from another with the same name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), None if unknown.

    A zombie (killed, not yet reaped) counts as gone: it runs nothing.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0], starttime fields[19]
    if fields[0] in ("Z", "X"):
        return -1
    return int(fields[19])


@dataclasses.dataclass(frozen=True)
class Owner:
    """The process that runs a trial."""

    host: str
    boot_id: str | None
    pid: int
    started: int | None  # process start time (clock ticks since boot); tells a reused pid apart

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Owner:
        """Process ``pid`` of this host."""
        return cls(socket.gethostname(), _boot_id(), pid, _process_start(pid))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def alive(self) -> bool | None:
        """Whether this owner's process still runs: True/False on this host, None elsewhere (or unknown)."""
        here = Owner.current()
        if self.host != here.host or self.boot_id != here.boot_id:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        started = _process_start(self.pid)
        if started == -1:
            return False  # a zombie
        if started is None or self.started is None:
            return None  # exists, but whether it is the same process cannot be told here: ask the heartbeat
        return started == self.started


def abandoned_reason(trial: FrozenTrial, grace_period: float, *, now: float | None = None) -> str | None:
    """Why running ``trial`` is abandoned, or None while its owner may still be running it."""
    if trial.state != TrialState.RUNNING:
        return None
    owner_attr = trial.system_attrs.get(OWNER_KEY)
    if isinstance(owner_attr, dict):
        try:
            owner = Owner(**owner_attr)
        except TypeError:
            owner = None
        if owner is not None:
            alive = owner.alive()
            if alive is False:
                return f"its process (pid {owner.pid} on {owner.host}) is gone"
            if alive is True:
                return None
    now = time.time() if now is None else now
    last = trial.system_attrs.get(HEARTBEAT_KEY)
    if not isinstance(last, int | float):
        # no heartbeat yet: the owner died between taking the trial and its first beat, or is not bstune
        last = trial.datetime_start.timestamp() if trial.datetime_start else None
        if owner_attr is None and last is not None and now - last > min(grace_period, OWNERLESS_S):
            return (
                f"it names no process {now - last:.0f} s after it started: the one that took it stopped before "
                "recording itself"
            )
    if last is not None and now - last > grace_period:
        return f"no heartbeat for {now - last:.0f} s (grace period {grace_period:g} s)"
    return None


def claim_abandoned(storage: BaseStorage, trial_id: int) -> bool:
    """Fail running trial ``trial_id``; True for exactly one caller, however many race.

    On an SQL database this is one ``UPDATE ... WHERE state = RUNNING`` (Optuna's own
    ``set_trial_state_values`` reads, then writes, which SQLite does not make atomic).
    A journal replays its log in order, so the first FAIL written wins and a later one
    raises :class:`optuna.exceptions.UpdateFinishedTrialError` for the loser.
    """
    rdb = rdb_of(storage)
    if rdb is not None:
        return swap_state(rdb, trial_id, TrialState.RUNNING, TrialState.FAIL, datetime_complete="now")
    try:
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def drawn_params(trial: FrozenTrial | Trial) -> dict[str, Any] | None:
    """The whole config a trial runs, to queue again; ``None`` where it had not drawn it all.

    A trial has drawn its config once it stores it as ``config`` (before training), and a queued retry
    holds it from the start (``fixed_params``). A trial cut short while its sampler was still drawing
    holds some parameters only; queued again, its retry would keep those and draw the rest afresh:
    another config, under the old one's name.
    """
    system = (
        trial.system_attrs if isinstance(trial, FrozenTrial) else trial.storage.get_trial_system_attrs(trial._trial_id)
    )
    fixed = system.get("fixed_params")
    if isinstance(fixed, dict) and fixed:  # a retry: its config is the queued one, however far it got
        return dict(fixed)
    return dict(trial.params) if "config" in trial.user_attrs else None


def retry_abandoned(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail every abandoned running trial of ``study`` and enqueue its parameters once more (where it had
    drawn them all: :func:`drawn_params`; else a fresh trial takes its place).

    Returns the numbers of the trials this call took over (another process may take
    over others at the same time; each is taken over once).
    """
    taken: list[int] = []
    storage = storage_of(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = abandoned_reason(trial, grace_period)
        if reason is None:
            continue
        drawn = drawn_params(trial)
        again = "its config runs again" if drawn else "it had not drawn its config: a fresh trial takes its place"
        try:
            storage.set_trial_user_attr(trial_id_of(trial), "status", TrialStatus.INTERRUPTED.value)
            storage.set_trial_user_attr(trial_id_of(trial), "message", f"abandoned: {reason}; {again}")
            won = claim_abandoned(storage, trial_id_of(trial))
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            won = False  # it finished meanwhile, or another process took it over first
        if not won:
            continue
        if drawn:
            study.enqueue_trial(drawn, user_attrs=retry_attrs(trial.number, trial.user_attrs))
        taken.append(trial.number)
        logger.warning("trial %d was abandoned (%s); %s", trial.number, reason, again)
    return taken


def retry_attrs(number: int, attrs: dict[str, Any]) -> dict[str, int]:
    """The user attributes of the trial that runs trial ``number``'s config again: ``retry_of`` names it,
    ``retry_root`` the first trial of the chain (a pruner that deals trials out by number keeps it there).

    Example:
        >>> retry_attrs(7, {}), retry_attrs(9, {"retry_of": 7, "retry_root": 7})
        ({'retry_of': 7, 'retry_root': 7}, {'retry_of': 9, 'retry_root': 7})
    """
    root = attrs.get("retry_root")
    return {"retry_of": number, "retry_root": root if isinstance(root, int) else number}


def retry_unqueued(study: optuna.Study) -> list[int]:
    """Queue once more every interrupted trial whose config no trial runs again (``retry_of``).

    :func:`requeue_interrupted` marks the trial, then queues its config. Ctrl-C can land while
    a storage write is under way (a trial starts with several); SQLite may then keep the
    write lock, and the queueing fails after the lock's timeout, leaving a trial marked
    interrupted with nothing queued: its config would never run again. A study that resumes
    queues such trials here. Returns their numbers.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    todo = [
        (t, params)
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get("status") == TrialStatus.INTERRUPTED.value
        and t.number not in retried
        and (params := drawn_params(t))
    ]
    for trial, params in todo:
        study.enqueue_trial(params, user_attrs=retry_attrs(trial.number, trial.user_attrs))
        logger.warning("trial %d was interrupted and not queued again; its config runs again now", trial.number)
    return [t.number for t, _ in todo]


def _finished(trial: FrozenTrial) -> bool:
    return trial.state in _FINISHED and trial.user_attrs.get("status") != TrialStatus.INTERRUPTED


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to their end (completed, pruned or failed), not abandoned ones (their configs run again)."""
    return [t for t in study.get_trials(deepcopy=False, states=_FINISHED) if _finished(t)]


def count_finished(study: optuna.Study) -> int:
    """Trials that ran to their end (completed, pruned or failed), not counting abandoned ones."""
    return len(finished_trials(study))


def describe_states(trials: Sequence[FrozenTrial]) -> str:
    """What a stored study holds, by what became of each trial.

    Example:
        >>> from optuna.trial import create_trial
        >>> describe_states([create_trial(value=1.0), create_trial(state=TrialState.WAITING)])
        '2 trials (1 finished, 1 waiting to run)'
    """
    counts = {
        "finished": sum(1 for t in trials if _finished(t)),
        "interrupted": sum(1 for t in trials if t.user_attrs.get("status") == TrialStatus.INTERRUPTED),
        "running or abandoned": sum(1 for t in trials if t.state == TrialState.RUNNING),
        "waiting to run": sum(1 for t in trials if t.state == TrialState.WAITING),
    }
    said = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    return f"{len(trials)} trial{'s' if len(trials) != 1 else ''}" + (f" ({said})" if said else "")


def stored_progress(trials: Sequence[FrozenTrial], grace_period: float = 600.0) -> tuple[int, int]:
    """(finished trials as :func:`count_finished` counts them, trials running with their owner alive) of one read
    of a study's trials. Alive: its process here, or a heartbeat within ``grace_period`` (the default
    :class:`~bstune.study.StudySettings`'): a study still in progress, not one stopped before its end.

    Example:
        >>> from optuna.trial import create_trial
        >>> stored_progress([create_trial(value=1.0), create_trial(state=TrialState.WAITING)])
        (1, 0)
    """
    finished = sum(1 for t in trials if _finished(t))
    alive = sum(1 for t in trials if t.state == TrialState.RUNNING and abandoned_reason(t, grace_period) is None)
    return finished, alive


def count_taken(study: optuna.Study) -> int:
    """Trials finished (as :func:`count_finished` counts them) plus those running, from one read of the storage.

    Not ``count_finished(study) + running``: a trial that finishes between two reads is
    in neither, and a worker counting that way takes one trial too many.
    """
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING or _finished(t))


class Heartbeat:
    """While a trial runs: its owner recorded, and its heartbeat renewed by a daemon thread.

    Used as ``with Heartbeat(trial, interval): ...``. The thread stops when the block
    ends, or on its own when the trial is no longer running (another process declared
    it abandoned: then :attr:`lost` is set and an error logged).
    """

    def __init__(self, trial: Trial, interval: float) -> None:
        self._storage = trial.storage
        self._trial_id = trial_id_of(trial)
        self._number = trial.number
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"bstune-heartbeat-{trial.number}", daemon=True)
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._storage.set_trial_system_attr(self._trial_id, OWNER_KEY, Owner.current().to_dict())
        self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_KEY, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.check()
        except Exception as err:  # the storage is unreachable: Optuna's tell will say so
            logger.warning("trial %d: state not readable: %s: %s", self._number, type(err).__name__, err)

    def check(self) -> bool:
        """Whether the trial is still running here; sets :attr:`lost` when another process failed it."""
        if not self.lost and self._storage.get_trial(self._trial_id).state != TrialState.RUNNING:
            self.lost = True
            logger.error(
                "trial %d was declared abandoned by another process (no heartbeat within its grace period); "
                "its result here is dropped and its retry counts instead",
                self._number,
            )
        return not self.lost

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self.check():
                    return
                self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_KEY, time.time())
            except Exception as exc:  # a storage hiccup must not end the trial; the next beat tries again
                logger.warning("trial %d: heartbeat not recorded: %s: %s", self._number, type(exc).__name__, exc)


def requeue_interrupted(trial: Trial) -> None:
    """Mark running ``trial`` ``interrupted`` (Ctrl-C in this process) and queue its parameters once more.

    The trial then ends as a killed one does once it is taken over: Optuna fails it as the
    interrupt leaves its objective, :func:`count_finished` does not count it, and its
    config runs again (``retry_of`` names it) when the study resumes.
    """
    storage = trial.storage
    drawn = drawn_params(trial)
    again = (
        "its config runs again when the study resumes"
        if drawn
        else "it had not drawn its config: a fresh trial takes its place when the study resumes"
    )
    storage.set_trial_user_attr(trial._trial_id, "status", TrialStatus.INTERRUPTED.value)
    storage.set_trial_user_attr(trial._trial_id, "message", f"interrupted (Ctrl-C, or a stop signal); {again}")
    if drawn:
        trial.study.enqueue_trial(drawn, user_attrs=retry_attrs(trial.number, trial.user_attrs))
    logger.info("trial %d interrupted; %s", trial.number, again)


@dataclasses.dataclass
class Untold:
    """How this process's last trial ended, as its objective left it, until Optuna has stored it.

    Ctrl-C can land after the objective returned and before Optuna stored the trial's
    state. The trial would then stay ``RUNNING`` (taken over only when its owner is seen
    gone), and the run it finished would count for nothing. :meth:`store` stores it as
    the objective ended: completed with its value, pruned at its last reported value, or
    failed.
    """

    trial: Trial | None = None
    state: TrialState | None = None
    value: float | None = None

    def store(self, study: optuna.Study) -> None:
        """Store the last trial's outcome if it is still ``RUNNING`` (its telling was cut off)."""
        if self.trial is None or self.state is None:
            return
        storage, tid = storage_of(study), trial_id_of(self.trial)
        frozen = storage.get_trial(tid)
        if frozen.state != TrialState.RUNNING:
            return
        values: list[float] | None = None
        if self.state == TrialState.COMPLETE and self.value is not None:
            values = [self.value]
        elif self.state == TrialState.PRUNED and frozen.last_step is not None:
            values = [frozen.intermediate_values[frozen.last_step]]  # as Optuna stores a pruned trial
        try:
            storage.set_trial_state_values(tid, self.state, values)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return  # stored meanwhile, or taken over by another process
        logger.info("trial %d stored as %s although Ctrl-C cut Optuna short", frozen.number, self.state.name.lower())


def with_heartbeat(
    objective: Callable[[Trial], float], interval: float, lost: list[int], untold: Untold | None = None
) -> Callable[[Trial], float]:
    """``objective`` run inside a :class:`Heartbeat`; numbers of trials taken over meanwhile go to ``lost``,
    and how each trial ended to ``untold`` (see :class:`Untold`).

    A ``KeyboardInterrupt`` (Ctrl-C) inside it marks the trial interrupted and queues it
    again (:func:`requeue_interrupted`) before it goes on up.
    """
    ended = untold if untold is not None else Untold()

    def run(trial: Trial) -> float:
        beat = Heartbeat(trial, interval)
        ended.trial, ended.state, ended.value = trial, None, None
        try:
            with beat:
                value = objective(trial)
            ended.state, ended.value = TrialState.COMPLETE, value
            return value
        except optuna.TrialPruned:
            ended.state = TrialState.PRUNED
            raise
        except KeyboardInterrupt as exc:
            if not beat.lost:
                # what it trained up to the interrupt (the last milestone's count, kept as it went, is short of it)
                samples, _ = trained_before(exc)
                if samples:
                    with contextlib.suppress(Exception):  # a storage that fails here fails the requeue too, said
                        trial.set_user_attr("samples", samples)
                requeue_interrupted(trial)
            raise
        except Exception:
            ended.state = TrialState.FAIL
            raise
        finally:
            if beat.lost:
                lost.append(trial.number)
                ended.state = None  # another process failed it and queued it again

    return run
