"""The embedded backend: Optuna in this process, on an in-memory, SQLite or journal storage.

Every trial reports its objective at the same *sample* milestones (multiples of
``budget_samples / n_evals``), as Optuna step 1, 2, ..., so pruners compare trials at
equal compute whatever their batch sizes. A trial that diverges, runs out of memory or
raises is recorded with what happened (and the traceback), and the study goes on.
Several processes may run one study on one storage: each trial carries its owner and a
heartbeat (:mod:`bstune.study._liveness`), and only trials whose owner is dead are
failed and run again.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import Trial, TrialState

from bstune._keys import PROBE_ATTR, RESCORED_ATTR
from bstune.errors import BstuneError
from bstune.metrics import Direction
from bstune.records import ProbeResult, Rescored, TrialRecord, TrialStatus, clean_json
from bstune.study._backend import Resumed, StudySpec, TrialBackend
from bstune.study._liveness import count_finished, retry_abandoned, with_heartbeat
from bstune.study._pruners import make_pruner
from bstune.study._records import trial_record
from bstune.study._resume import check_settings
from bstune.study._storage import open_storage
from bstune.study._trial import TrialOutcome, TrialPlan, TrialPlanner
from bstune.training import Decision, EvalRecord

__all__ = ["OptunaBackend", "TrialFailure"]

logger = logging.getLogger(__name__)


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


class OptunaBackend(TrialBackend):
    """Trials one after the other in this process, drawn and pruned by Optuna.

    ``storage``: ``None`` (in memory), ``"sqlite:///runs/x.db"`` or any SQLAlchemy URL,
    or a journal file (``"journal:runs/x.log"``); opened (and refused with a reason) at
    once. The sampler and pruner are the study's. ``Study(task, space,
    storage="sqlite:///x.db")`` is ``Study(task, space, backend=OptunaBackend("sqlite:///x.db"))``.

    Example:
        >>> OptunaBackend("not a url")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: storage: 'not a url' is neither a database URL (sqlite:///runs/study.db) nor a journal file (journal:runs/study.log, or a path ending in .log or .jsonl)
    """

    name = "optuna"

    def __init__(self, storage: str | Path | BaseStorage | None = None) -> None:
        self.storage = open_storage(storage)
        self._spec: StudySpec | None = None
        self._study: optuna.Study | None = None
        self._planner: TrialPlanner | None = None

    # -- the store ---------------------------------------------------------------------
    def open(self, spec: StudySpec) -> Resumed:
        settings = spec.settings
        self._spec = spec
        with optuna_quiet():  # no "A new study created" / "Using an existing study" lines on the user's terminal
            self._study = study = optuna.create_study(
                storage=self.storage,
                sampler=spec.sampler,
                pruner=make_pruner(settings.pruner, settings.n_evals),
                study_name=spec.name,
                direction=Direction(settings.direction).value,
                load_if_exists=True,
            )
        check_settings(study, spec.fingerprint)
        retry_abandoned(study, settings.grace_period)  # left running by a dead process: fail it, run its config again
        return Resumed(
            probe=study.user_attrs.get(PROBE_ATTR),
            rescored=[Rescored.from_dict(d) for d in study.user_attrs.get(RESCORED_ATTR, [])],
        )

    def run_probe(self, probe: Any, **kwargs: Any) -> ProbeResult:
        result: ProbeResult = probe(**kwargs)
        return result

    def keep_probe(self, probe: ProbeResult) -> None:
        self._opened().set_user_attr(PROBE_ATTR, clean_json(probe.to_dict()))

    def keep_rescored(self, done: list[Rescored]) -> None:
        self._opened().set_user_attr(RESCORED_ATTR, [r.to_dict() for r in done])

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
    def run_trials(self, planner: TrialPlanner) -> list[TrialRecord]:
        study, spec = self._opened(), self._spec
        assert spec is not None
        self._planner = planner
        settings = spec.settings
        with optuna_quiet():  # failed trials are logged once, by us, without Optuna's traceback
            lost: list[int] = []  # trials of ours that another process declared abandoned
            objective = with_heartbeat(self._objective, settings.heartbeat_interval, lost)
            while (remaining := settings.n_trials - count_finished(study)) > 0:
                self._lower_ceiling(study)
                try:
                    study.optimize(
                        objective,
                        n_trials=remaining,
                        catch=(TrialFailure,),
                        callbacks=[self._after_trial],
                        show_progress_bar=settings.progress,
                    )
                    break
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    if not lost:
                        raise
                    lost.clear()  # Optuna refused to tell a trial another process failed: its retry counts
        return [trial_record(t) for t in study.get_trials(deepcopy=False)]

    def run_plans(self, plans: list[TrialPlan]) -> list[TrialOutcome]:
        assert self._spec is not None
        return [self._spec.job.run(plan) for plan in plans]

    def _objective(self, trial: Trial) -> float:
        planner, spec = self._planner, self._spec
        assert planner is not None and spec is not None
        plan = planner.plan(planner.sample(trial))
        for key, value in plan.attrs().items():
            trial.set_user_attr(key, value)

        def on_milestone(index: int, value: float, record: EvalRecord) -> Decision:
            trial.report(value, index)
            return Decision.STOP if trial.should_prune() else Decision.CONTINUE

        outcome = spec.job.run(plan, on_milestone)
        for key, value in outcome.attrs().items():
            trial.set_user_attr(key, value)
        config = plan.config
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
                "trial %d failed: %s (its traceback is kept with the trial: 'traceback' in the storage and result.json)",
                trial.number,
                outcome.message,
            )
        raise TrialFailure(f"trial {trial.number} {outcome.status}: {outcome.message}")

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: take over peers' abandoned trials, share OOM ceilings, stop at ``n_trials``."""
        assert self._spec is not None
        retry_abandoned(study, self._spec.settings.grace_period)
        self._lower_ceiling(study)
        if count_finished(study) >= self._spec.settings.n_trials:
            study.stop()

    def _lower_ceiling(self, study: optuna.Study) -> None:
        """Apply batch-size ceilings that out-of-memory trials stored (this run's, a peer's or before a resume)."""
        planner, spec = self._planner, self._spec
        assert planner is not None and spec is not None
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            ceiling = t.user_attrs.get("batch_ceiling")
            if isinstance(ceiling, int) and ceiling < planner.batch_cap:
                planner.batch_cap = max(spec.batch_min, ceiling)
                logger.info("batch sizes capped at %d (trial %d ran out of memory)", planner.batch_cap, t.number)

    def _opened(self) -> optuna.Study:
        if self._study is None:
            raise BstuneError("OptunaBackend: open() the study first")
        return self._study
