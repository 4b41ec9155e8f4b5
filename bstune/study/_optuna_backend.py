"""The embedded backend: Optuna in this process, on an in-memory, SQLite or journal storage.

Every trial reports its objective at the same *sample* milestones (multiples of
``budget_samples / n_evals``), as Optuna step 1, 2, ..., so pruners compare trials at
equal compute whatever their batch sizes. A trial that diverges, runs out of memory or
raises is recorded with what happened (and the traceback), and the study goes on.
Several processes may run one study on one storage: each trial carries its owner and a
heartbeat (:mod:`bstune.study._liveness`), and only trials whose owner is dead are
failed and run again. With ``parallel_trials > 1`` (or ``devices``) the trials run in that
many worker processes on this machine, sharing the storage (:mod:`bstune.study._workers`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import Trial, TrialState

from bstune._keys import CRITICAL_ATTR, FROM_PROBE_ATTR, PROBE_ATTR, RESCORED_ATTR
from bstune._progress import progress_bar
from bstune._scratch import scratch_folder
from bstune.errors import BstuneError, ConfigError
from bstune.metrics import Direction
from bstune.records import ProbeResult, Rescored, TrialRecord, TrialStatus, clean_json
from bstune.study._backend import Resumed, StudySpec, TrialBackend
from bstune.study._liveness import (
    Untold,
    count_finished,
    count_taken,
    retry_abandoned,
    retry_unqueued,
    with_heartbeat,
)
from bstune.study._pruners import make_pruner
from bstune.study._records import trial_line, trial_record, trial_records
from bstune.study._rescore_pool import run_plans_parallel
from bstune.study._resume import check_settings
from bstune.study._storage import open_storage, storage_failure
from bstune.study._trial import SYSTEMATIC_ATTR, TrialOutcome, give_up
from bstune.study._trial_plan import TrialPlan, TrialPlanner
from bstune.study._trial_taking import PROBE_LOCK_SUFFIX, TakeLock, taken, wait_for_peers
from bstune.study._workers import pickled, run_workers, worker_devices
from bstune.training import Decision, EvalRecord

__all__ = ["OptunaBackend", "TrialFailure"]

logger = logging.getLogger(__name__)
_PROBE_PATIENCE_S = 6 * 3600.0  # how long a second start of a study waits for the first's probe before probing itself
# one INFO line per finished trial: the command line shows it where stderr is no terminal (no progress bars)
trial_lines = logging.getLogger("bstune.trials")


class TrialFailure(BstuneError):
    """A trial ended without a result (diverged, out of memory, or raised); the study goes on."""


@contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's own INFO lines off (study created/loaded, each trial's value) while inside; bstune logs what matters."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


@contextmanager
def interrupts_kept(study: optuna.Study | None = None, untold: Untold | None = None) -> Iterator[None]:
    """Ctrl-C inside Optuna's bookkeeping stays a ``KeyboardInterrupt``, and the trial it cut short is kept.

    Optuna 5.1's ``_run_trial`` tells the storage a trial's state in a ``try`` whose
    ``finally`` reads the state told; an interrupt that lands inside the telling leaves
    it unset, and the ``finally`` raises ``UnboundLocalError`` in the interrupt's place,
    so the study would end as a crash rather than as interrupted (trials queued again,
    ``--resume`` offered). Any exception raised while handling an interrupt is turned
    back into one. Given ``study`` and ``untold`` (what the objective last finished), a
    trial whose telling was cut off is stored as its objective ended (:class:`Untold`).

    Example:
        >>> try:
        ...     with interrupts_kept():
        ...         try:
        ...             raise KeyboardInterrupt
        ...         finally:
        ...             raise UnboundLocalError("updated_state")
        ... except KeyboardInterrupt as exc:
        ...     type(exc.__cause__).__name__
        'UnboundLocalError'
    """
    try:
        yield
    except KeyboardInterrupt:
        _store_untold(study, untold)
        raise
    except Exception as exc:
        seen: BaseException | None = exc
        chain: set[int] = set()  # a chain may loop back on itself
        while seen is not None and id(seen) not in chain:
            if isinstance(seen, KeyboardInterrupt):
                _store_untold(study, untold)
                raise KeyboardInterrupt from exc
            chain.add(id(seen))
            seen = seen.__cause__ or seen.__context__
        raise


def _store_untold(study: optuna.Study | None, untold: Untold | None) -> None:
    if study is not None and untold is not None:
        try:
            untold.store(study)
        except Exception as exc:  # the interrupt goes on up whatever the storage says
            # a storage that failed is said once, as the study's StorageError (a worker stopped for it lands here)
            level = logging.DEBUG if storage_failure(exc) is not None else logging.WARNING
            logger.log(level, "the interrupted trial's outcome was not stored: %s: %s", type(exc).__name__, exc)


def _given_up(study: optuna.Study) -> int:
    """The trials of ``study`` given up (interrupted: killed, abandoned, Ctrl-C), whose configs run again."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == TrialStatus.INTERRUPTED)


class OptunaBackend(TrialBackend):
    """Trials drawn and pruned by Optuna: one after the other in this process, or in worker processes.

    ``storage``: ``None`` (in memory), ``"sqlite:///runs/x.db"`` or any SQLAlchemy URL,
    or a journal file (``"journal:runs/x.log"``); opened (and refused with a reason) at
    once. The sampler and pruner are the study's. ``Study(task, space,
    storage="sqlite:///x.db")`` is ``Study(task, space, backend=OptunaBackend("sqlite:///x.db"))``.

    With the settings' ``parallel_trials > 1`` (or ``devices``), ``parallel_trials`` worker
    processes run the trials, each on its device (see :mod:`bstune.study._workers`); the probe
    and the re-scoring's bookkeeping stay in this process. The workers must open the storage
    themselves: a URL or journal file is reopened by each; with none (in memory), the study
    lives in a journal file in a temporary folder of its own, removed when the study object
    (``result.optuna_study``) is; a storage object other than an SQL or journal-file one
    cannot be shared and is refused.

    Example:
        >>> OptunaBackend("not a url")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: storage: 'not a url' is neither a database URL (sqlite:///runs/study.db) nor a journal file (journal:runs/study.log, or a path ending in .log or .jsonl)
    """

    name = "optuna"

    def __init__(self, storage: str | Path | BaseStorage | None = None) -> None:
        self.storage = open_storage(storage)
        self._url = storage if isinstance(storage, str | Path) else None  # what a worker process reopens
        self._spec: StudySpec | None = None
        self._study: optuna.Study | None = None
        self._planner: TrialPlanner | None = None
        self._worker: str | None = None  # in a trial worker process: which, recorded on each trial
        # when this process began running trials: the trials begun since are this run's (see _gave_up)
        self._since = datetime.datetime.now()
        self._stopped = False  # this run gave up on the study (its code fails): draw no more trials
        self._take: TakeLock | None = None  # the lock a sequential run counts the trials and takes one under
        self._temporary: tuple[BaseStorage, str] | None = None  # parallel trials without a storage: a journal

    def worker_url(self) -> str | None:
        """The URL trial worker processes reopen this storage by; None for none (in memory).

        Raises:
            ConfigError: a storage object workers cannot reopen (an in-memory one, or a
                journal that is not a file).
        """
        if self.storage is None:
            return None
        if (url := self._reopen_url()) is not None:
            return url
        kind = "in memory" if isinstance(self.storage, InMemoryStorage) else type(self.storage).__name__
        raise ConfigError(
            f"trial worker processes cannot open this storage ({kind}); give a URL (sqlite:///x.db), "
            "a journal file (x.log), or none",
            source="Study",
            field="parallel_trials",
        )

    def storage_name(self) -> str:
        """How a message names this storage: its file, its URL, or its kind."""
        return self._reopen_url() or f"the study's storage ({type(self.storage).__name__})"

    def _reopen_url(self) -> str | None:
        """The URL the storage is opened by again (the one given, an RDB's, a journal file's); None for others."""
        if self._url is not None:
            return str(self._url)
        if isinstance(self.storage, RDBStorage):
            return str(self.storage.url)
        if isinstance(self.storage, JournalStorage) and isinstance(self.storage._backend, JournalFileBackend):
            return f"journal:{self.storage._backend._file_path}"
        return None

    def _shared_storage(self) -> tuple[BaseStorage, str]:
        """The storage trial worker processes share and the URL each reopens it by (see the class docstring)."""
        url = self.worker_url()
        if self.storage is not None and url is not None:
            return self.storage, url
        if self._temporary is not None:  # run() again: the same study, as in memory
            return self._temporary
        folder = tempfile.mkdtemp(prefix="parallel-", dir=scratch_folder())
        url = f"journal:{Path(folder) / 'study.log'}"
        storage = open_storage(url)
        assert storage is not None
        weakref.finalize(storage, shutil.rmtree, folder, ignore_errors=True)  # the study lives as long as its object
        self._temporary = (storage, url)
        return storage, url

    # -- the store ---------------------------------------------------------------------
    def open(self, spec: StudySpec) -> Resumed:
        settings = spec.settings
        self._spec = spec
        storage = self.storage
        if settings.workers > 1:
            storage, self._url = self._shared_storage()
        with optuna_quiet():  # no "A new study created" / "Using an existing study" lines on the user's terminal
            self._study = study = optuna.create_study(
                storage=storage,
                sampler=spec.sampler,
                pruner=make_pruner(settings.pruner, settings.n_evals),
                study_name=spec.name,
                direction=Direction(settings.direction).value,
                load_if_exists=True,
            )
        check_settings(study, spec.fingerprint)
        stored = len(study.get_trials(deepcopy=False))
        if stored and spec.resumed_samplers is not None:  # resumed: draw on from here, not the first run's draws again
            sampler, worker_sampler = spec.resumed_samplers(stored)
            study.sampler = sampler
            self._spec = spec = dataclasses.replace(spec, sampler=sampler, worker_sampler=worker_sampler)
        retry_abandoned(study, settings.grace_period)  # left running by a dead process: fail it, run its config again
        retry_unqueued(study)  # interrupted, but Ctrl-C cut the queueing of its config short
        return Resumed(
            probe=study.user_attrs.get(PROBE_ATTR),
            rescored=[Rescored.from_dict(d) for d in study.user_attrs.get(RESCORED_ATTR, [])],
            critical=study.user_attrs.get(CRITICAL_ATTR),
        )

    def run_probe(self, probe: Any, **kwargs: Any) -> ProbeResult:
        result: ProbeResult = probe(**kwargs)
        return result

    def keep_probe(self, probe: ProbeResult) -> None:
        self._opened().set_user_attr(PROBE_ATTR, clean_json(probe.to_dict()))

    @contextmanager
    def probing(self) -> Iterator[dict[str, Any] | None]:
        lock = TakeLock(
            self._reopen_url(),
            patience=_PROBE_PATIENCE_S,
            suffix=PROBE_LOCK_SUFFIX,
            waiting=f"another process is probing this study ({self.storage_name()}): waiting to take its probe",
        )
        lock.take()
        try:
            yield self._opened().user_attrs.get(PROBE_ATTR)  # stored by that process while this one waited
        finally:
            lock.let_go()

    def keep_rescored(self, done: list[Rescored]) -> None:
        self._opened().set_user_attr(RESCORED_ATTR, [r.to_dict() for r in done])

    def keep_critical(self, measured: dict[str, Any]) -> None:
        self._opened().set_user_attr(CRITICAL_ATTR, clean_json(measured))

    def describe(self, metric_names: list[str], attrs: dict[str, Any]) -> None:
        study = self._opened()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:  # a resumed study: written once
                study.set_user_attr(key, value)

    def handle(self) -> optuna.Study | None:
        return self._study

    # -- the trials --------------------------------------------------------------------
    def adopt(
        self,
        plan: TrialPlan,
        outcome: TrialOutcome,
        intermediate: dict[int, float],
        distributions: dict[str, optuna.distributions.BaseDistribution],
    ) -> bool:
        study = self._opened()
        if any(t.user_attrs.get(FROM_PROBE_ATTR) for t in study.get_trials(deepcopy=False)):
            return True  # a resumed study: recorded when it first ran
        assert outcome.status == TrialStatus.COMPLETED and outcome.value is not None
        study.add_trial(
            optuna.trial.create_trial(
                params=plan.params,
                distributions=distributions,
                value=outcome.value,
                intermediate_values=intermediate,
                user_attrs={**plan.attrs(), **outcome.attrs(), FROM_PROBE_ATTR: True},
            )
        )
        return True

    def run_trials(self, planner: TrialPlanner) -> list[TrialRecord]:
        study, spec = self._opened(), self._spec
        assert spec is not None
        self._planner = planner
        settings = spec.settings
        if (finished := count_finished(study)) > settings.n_trials:  # a resume asking for fewer: none is dropped
            logger.warning(
                "the study already holds %d finished trials, more than n_trials=%d: it trains none more, and "
                "the report reads all %d",
                finished,
                settings.n_trials,
                finished,
            )
        if settings.workers > 1:
            payload = pickled((spec, planner, str(self._url)))
            while True:
                before = _given_up(study)
                run_workers(study, settings, payload, work_on, where=self.storage_name())
                # trials another run on this storage counts in n_trials: waited for; where one was given up meanwhile
                # (its process gone, or one that named none: the workers stopped while it counted), its retry is this
                # run's to train, so the workers start again. Workers that stopped with none given up stopped for
                # good (n_trials reached, or failing code)
                if wait_for_peers(study, settings, lambda: None):
                    retry_abandoned(study, settings.grace_period)
                if count_finished(study) >= settings.n_trials or _given_up(study) == before:
                    break
            return trial_records(study.get_trials(deepcopy=False))
        study.sampler = planner.sampler(study.sampler)
        self._since, self._stopped = datetime.datetime.now(), False
        # bstune's bar, as on parallel trials: Optuna's would name its best single value's trial, which
        # re-scoring may not recommend
        bar = progress_bar(settings.progress, "trials", total=settings.n_trials, unit="trial")

        def advance(study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> None:
            bar.update(count_finished(study) - bar.n)

        take = self._take = TakeLock(self._reopen_url())

        def taking(trial: Trial) -> float:
            take.let_go()  # the trial is stored as running: another process counting now counts it
            return objective(trial)

        with optuna_quiet(), bar:  # failed trials are logged once, by us, without Optuna's traceback
            lost: list[int] = []  # trials of ours that another process declared abandoned
            untold = Untold()
            objective = with_heartbeat(self._objective, settings.heartbeat_interval, lost, untold)
            bar.update(count_finished(study))
            while not self._stopped:
                take.take()
                try:
                    retry_abandoned(study, settings.grace_period)  # a dead peer's trial: failed, queued to run again
                    if taken(study, settings.grace_period) >= settings.n_trials:  # finished, or running in a peer
                        take.let_go()
                        if not wait_for_peers(study, settings, lambda: advance(study, None)):
                            break
                        continue
                    self._lower_ceiling(study)
                    with interrupts_kept(study, untold):
                        study.optimize(
                            taking,
                            n_trials=settings.n_trials - count_finished(study),
                            catch=(TrialFailure,),
                            callbacks=[self._after_trial, advance],
                            show_progress_bar=False,
                        )
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    if not lost:
                        raise
                    lost.clear()  # Optuna refused to tell a trial another process failed: its retry counts
                finally:
                    take.let_go()
        return trial_records(study.get_trials(deepcopy=False))

    def run_plans(self, plans: list[TrialPlan]) -> list[TrialOutcome]:
        spec = self._spec
        assert spec is not None
        settings = spec.settings
        if settings.workers == 1:
            return [spec.job.run(plan) for plan in plans]
        if len(plans) > 1:
            return run_plans_parallel(pickled(spec.job), plans, settings)
        # a trial's plan names the device of the worker that ran it: here, this process's device
        here = [
            p.on_devices((settings.main_device,) if p.data_parallel == 1 else worker_devices(settings)[0])
            for p in plans
        ]
        return [spec.job.run(plan) for plan in here]

    # -- in a trial worker process -----------------------------------------------------
    def work(self, spec: StudySpec, planner: TrialPlanner, *, worker: int, label: str, gate: Any, parent: int) -> None:
        """Run trials of the stored study ``spec`` names until ``n_trials`` have finished (a worker's loop).

        A trial is taken through ``gate`` (a :class:`~bstune.study._workers.TrialGate` shared by
        the workers) and only while the trials finished and running are fewer than
        ``n_trials``; it is running in the storage before the gate opens again (the objective
        opens it), so exactly ``n_trials`` finish. Stops, between trials, when process
        ``parent`` is gone.
        """
        settings = spec.settings
        if spec.worker_sampler is not None:
            sampler = spec.worker_sampler(worker)
        else:
            sampler = spec.sampler
            sampler.reseed_rng()
        self._spec, self._planner, self._worker = spec, planner, label
        self._since = datetime.datetime.now()
        assert self.storage is not None, "a trial worker opens the study's storage by its URL"
        with optuna_quiet():
            self._study = study = optuna.load_study(
                study_name=spec.name,
                storage=self.storage,
                sampler=planner.sampler(sampler),
                pruner=make_pruner(settings.pruner, settings.n_evals),
            )
            lost: list[int] = []
            untold = Untold()
            objective = with_heartbeat(self._objective, settings.heartbeat_interval, lost, untold)
            take = TakeLock(self._reopen_url())  # against other runs on this storage, as the gate is between workers
            while os.getppid() == parent:
                held = gate.take(worker)
                take.take()

                def let_go(trial: Trial) -> float:
                    nonlocal held
                    take.let_go()
                    if held:
                        held = False
                        gate.let_go()  # the trial is in the storage as running: the next worker may count it
                    return objective(trial)

                try:
                    retry_abandoned(study, settings.grace_period)
                    self._lower_ceiling(study)
                    if count_taken(study) >= settings.n_trials or self._gave_up(study):  # one read: see count_taken
                        break
                    with interrupts_kept(study, untold):
                        study.optimize(let_go, n_trials=1, catch=(TrialFailure,), show_progress_bar=False)
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    if not lost:
                        raise
                    lost.clear()  # Optuna refused to tell a trial another process failed: its retry counts
                finally:
                    take.let_go()
                    if held:
                        gate.let_go()

    def _objective(self, trial: Trial) -> float:
        planner, spec = self._planner, self._spec
        assert planner is not None and spec is not None
        plan = planner.plan(planner.sample(trial))
        for key, value in plan.attrs().items():
            trial.set_user_attr(key, value)
        if self._worker is not None:
            trial.set_user_attr("worker", self._worker)

        def on_milestone(index: int, value: float, record: EvalRecord) -> Decision:
            trial.report(value, index)
            # what it has trained so far: the outcome overwrites it, and a trial cut short by Ctrl-C keeps it,
            # so the samples it spent count in the study's total
            trial.set_user_attr("samples", record.samples)
            return Decision.STOP if trial.should_prune() else Decision.CONTINUE

        outcome = spec.job.run(plan, on_milestone)
        for key, value in outcome.attrs().items():
            trial.set_user_attr(key, value)
        config = plan.config
        if outcome.n_train is not None and outcome.n_train < planner.batch_cap:
            logger.warning(
                "trial %d: the training set has %d examples, fewer than the batch sizes the space allows (up to %d); "
                "batch sizes now capped at %d",
                trial.number,
                outcome.n_train,
                planner.batch_cap,
                planner.learn_data_size(outcome.n_train),
            )
        if outcome.status == TrialStatus.PRUNED:
            raise optuna.TrialPruned(outcome.message)
        if outcome.status == TrialStatus.COMPLETED:
            assert outcome.value is not None
            return outcome.value
        if outcome.status == TrialStatus.OOM:
            cap = planner.learn_oom(config.batch_size)
            trial.set_user_attr("batch_ceiling", cap)
            logger.warning(
                "trial %d ran out of memory at batch_size=%d; batch sizes now capped at %d",
                trial.number,
                config.batch_size,
                cap,
            )
        elif outcome.status == TrialStatus.DIVERGED:
            logger.info(
                "trial %d diverged at B=%d, lr=%.3g: %s", trial.number, config.batch_size, config.lr, outcome.message
            )
        else:
            logger.warning(
                "trial %d failed: %s%s",
                trial.number,
                outcome.message,
                " (its traceback is kept with the trial: 'traceback' in the storage and result.json)"
                if outcome.traceback
                else "",
            )
        raise TrialFailure(f"trial {trial.number} {outcome.status}: {outcome.message}")

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: take over peers' abandoned trials, share OOM ceilings, stop at ``n_trials``."""
        assert self._spec is not None
        if trial_lines.isEnabledFor(logging.INFO):
            trial_lines.info("%s", trial_line(trial, self._spec.settings.objective))
        retry_abandoned(study, self._spec.settings.grace_period)
        self._lower_ceiling(study)
        if self._take is not None:
            self._take.take()  # held until the next trial is stored as running (or the run stops)
        # trials running in other processes count: each finishes its own, and the study ends with n_trials
        if taken(study, self._spec.settings.grace_period) >= self._spec.settings.n_trials or self._gave_up(study):
            study.stop()

    def _gave_up(self, study: optuna.Study) -> bool:
        """Whether this run stops drawing trials because the study's code fails (:func:`give_up`), said once."""
        if self._stopped:
            return True
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        ours = sorted(
            (t for t in trials if t.datetime_start is not None and t.datetime_start >= self._since),
            key=lambda t: t.number,
        )
        reason = give_up(
            [(trial_record(t).status, bool(t.user_attrs.get(SYSTEMATIC_ATTR))) for t in ours],
            any_completed=any(t.state == TrialState.COMPLETE for t in trials),
        )
        if reason is None:
            return False
        assert self._spec is not None
        logger.warning(
            "study %r stops drawing trials: %s; trial %d: %s",
            self._spec.name,
            reason,
            ours[-1].number,
            ours[-1].user_attrs.get("message", ""),
        )
        self._stopped = True
        return True

    def _lower_ceiling(self, study: optuna.Study) -> None:
        """Apply batch-size ceilings that trials stored (this run's, a peer's or before a resume): below what
        ran out of memory, and at the size of a training function's training set."""
        planner, spec = self._planner, self._spec
        assert planner is not None and spec is not None
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED)):
            ceiling = t.user_attrs.get("batch_ceiling") if t.state == TrialState.FAIL else None
            if isinstance(ceiling, int) and ceiling < planner.batch_cap:
                planner.batch_cap = max(spec.batch_min, ceiling)
                logger.info("batch sizes capped at %d (trial %d ran out of memory)", planner.batch_cap, t.number)
            n_train = t.user_attrs.get("n_train")
            if isinstance(n_train, int) and n_train < planner.batch_cap:
                planner.learn_data_size(n_train)
                logger.info("batch sizes capped at %d (trial %d's training set)", planner.batch_cap, t.number)

    def _opened(self) -> optuna.Study:
        if self._study is None:
            raise BstuneError("OptunaBackend: open() the study first")
        return self._study


def work_on(url: str, spec: StudySpec, planner: TrialPlanner, **how: Any) -> None:
    """A trial worker process's loop: :meth:`OptunaBackend.work` on the storage at ``url``."""
    OptunaBackend(url).work(spec, planner, **how)
