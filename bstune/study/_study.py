"""Study: probe, prior-shaped search and early stopping on the embedded default (Optuna in-process).

One trial = one :func:`bstune.train` run. Every trial reports its validation loss at the
same *sample* milestones (multiples of ``budget_samples / n_evals``), as Optuna step
1, 2, ..., so pruners compare trials at equal compute whatever their batch sizes.
A trial that diverges, runs out of memory or raises is recorded with what happened
(and the traceback), and the study goes on. Several processes may run one study on
one storage: each trial carries its owner and a heartbeat (:mod:`bstune.study._liveness`),
and only trials whose owner is dead are failed and run again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import Trial, TrialState

from bstune.errors import BstuneError, ConfigError
from bstune.space import SearchSpace
from bstune.study._liveness import count_finished, retry_abandoned, with_heartbeat
from bstune.study._prior import Prior
from bstune.study._probe import ProbeResult, ProbeSettings, run_probe
from bstune.study._pruners import make_pruner
from bstune.study._ray import RaySettings
from bstune.study._recommend import StudyFailedError, handed_over, recommend
from bstune.study._records import Rescored, StudyResult, TrialRecord, clean_dict, clean_json, trial_record
from bstune.study._rescore import candidates, rescore_seeds, run_rescoring
from bstune.study._resume import check_settings
from bstune.study._storage import open_storage
from bstune.study._trial import TrialOutcome, TrialPlan, TrialPlanner, run_trial
from bstune.task import Task
from bstune.training import Decision, EvalRecord

__all__ = ["Study", "StudyFailedError", "TrialFailure"]

logger = logging.getLogger(__name__)

Mode = Literal["prior", "baseline"]
_RESCORED_ATTR = "bstune_rescored"  # the study's user attribute holding what re-scoring found


def make_sampler(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE (it models B and eta jointly), after a few random startup trials."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(3, n_trials // 4)))


class TrialFailure(BstuneError):
    """A trial ended without a result (diverged, out of memory, or raised); the study goes on."""


class Study:
    """A batch-size / learning-rate study of one task.

    Args:
        task: the problem.
        space: a :class:`~bstune.space.SearchSpace`, a path to its YAML file, or a dict.
            Its ``optimizer`` section (family and fixed settings) is what trials train
            with, in place of the task's.
        n_trials: trials to finish (completed, pruned or failed), counting those a
            resumed storage already holds.
        budget_samples: training samples of a full trial; pruned trials use less.
        seed: seeds the sampler, the probe and every trial's model init and data order
            (the same for all trials, so they differ only in their hyperparameters).
        storage: ``None`` (in memory), ``"sqlite:///runs/x.db"`` or a journal file path.
        study_name: name inside the storage; default ``"bstune-<task.name>"``.
        mode: ``"prior"`` searches around the probe's noise scale and the eta/B rule;
            ``"baseline"`` searches plain log-uniform (B, eta) over the space's ranges
            with everything else equal, to measure what the prior is worth.
        pruner: ``"hyperband"`` (default), ``"median"``, ``"successive_halving"``,
            ``"none"`` or an Optuna pruner; it sees milestone indices as steps. On the Ray
            backend the name picks a Ray scheduler on training samples: ASHA for
            ``"hyperband"`` and ``"successive_halving"``, the median stopping rule for
            ``"median"``, FIFO (no early stopping) for ``"none"``.
        n_evals: evaluations (and pruning decisions) per full trial; the default 9 puts
            Hyperband's rungs (1, 3, 9 with reduction factor 3) at a ninth, a third and
            the end of the budget. A stop at the last milestone is ignored (the trainer
            treats it so): a trial that has spent its whole budget completes.
        objective: the record field to optimise: ``"val_loss"`` (default), ``"train_loss"``
            or a metric such as ``"val_accuracy"``.
        direction: ``"minimize"`` or ``"maximize"``.
        probe: settings of the probe (the prior mode only).
        device: trial device; ``"auto"`` picks CUDA when available.
        progress: show a progress bar over trials.
        backend: ``"optuna"`` (default: in this process) or ``"ray"`` (Ray Tune on a
            cluster, with ASHA early stopping on training samples; needs the ``ray`` extra).
        address, resources_per_trial, max_concurrent, storage_path, max_failures:
            settings of the Ray backend (see :class:`bstune.study.RaySettings`).
        rescore_top, rescore_seeds: before recommending, the ``rescore_top`` best completed
            trials are trained again at ``rescore_seeds`` other seeds (full budget, no
            pruning), and the one with the best mean is recommended: one seed moves a
            config's loss by several percent, so the best single trial is partly the
            luckiest seed. ``0`` turns it off. Its samples count in the study's total;
            a resumed study keeps what it re-scored.
        heartbeat_interval: seconds between the heartbeats a running trial writes to the
            storage, so that other processes on the study can tell it is alive.
        grace_period: seconds without a heartbeat after which a running trial whose
            owner is on another host counts as abandoned and is run again (an owner on
            this host is checked directly: its trial is taken over as soon as its process
            is gone). At least twice ``heartbeat_interval``; hosts' clocks must agree to
            well within it.

    Example:
        >>> import torch, bstune
        >>> x = torch.randn(512, 4); y = (x[:, 0] + x[:, 1] > 0).long()
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=(x, y),
        ...                    val_data=(x[:128], y[:128]), loss=torch.nn.CrossEntropyLoss())
        >>> study = bstune.Study(task, space={"name": "tiny", "lr": {"min": 1e-3, "max": 10.0}},
        ...                      n_trials=3, budget_samples=2048, progress=False)
        >>> result = study.run()
        >>> sorted(result.best_config)[:3], len(result.trials)
        (['batch_size', 'lr', 'momentum'], 3)
    """

    def __init__(
        self,
        task: Task,
        space: SearchSpace | str | Path | Mapping[str, Any],
        *,
        n_trials: int = 40,
        budget_samples: int = 300_000,
        seed: int = 0,
        storage: str | Path | BaseStorage | None = None,
        study_name: str | None = None,
        mode: Mode = "prior",
        pruner: str | optuna.pruners.BasePruner = "hyperband",
        n_evals: int = 9,
        objective: str = "val_loss",
        direction: Literal["minimize", "maximize"] = "minimize",
        probe: ProbeSettings | None = None,
        device: str = "auto",
        progress: bool = True,
        backend: Literal["optuna", "ray"] = "optuna",
        address: str | None = None,
        resources_per_trial: Mapping[str, float] | None = None,
        max_concurrent: int | None = None,
        storage_path: str | Path | None = None,
        max_failures: int = 2,
        heartbeat_interval: float = 30.0,
        grace_period: float = 600.0,
        rescore_top: int = 3,
        rescore_seeds: int = 2,
    ) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="Study", field=name)

        self.space = SearchSpace.coerce(space)
        if task.optimizer_spec != self.space.optimizer:
            logger.info(
                "the search space's optimizer (%s) replaces the task's (%s) in this study",
                self.space.optimizer,
                task.optimizer_spec,
            )
        # The space's optimizer section holds the settings the search keeps fixed: trials use it.
        self.task = dataclasses.replace(task, optimizer=self.space.optimizer, validate=False)
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials <= 0:
            raise bad("n_trials", f"must be a positive integer, got {n_trials!r}")
        if isinstance(budget_samples, bool) or not isinstance(budget_samples, int) or budget_samples <= 0:
            raise bad("budget_samples", f"must be a positive integer, got {budget_samples!r}")
        if mode not in ("prior", "baseline"):
            raise bad("mode", f"must be 'prior' or 'baseline', got {mode!r}")
        if not isinstance(n_evals, int) or not 1 <= n_evals <= budget_samples:
            raise bad("n_evals", f"must be an integer in [1, budget_samples], got {n_evals!r}")
        if direction not in ("minimize", "maximize"):
            raise bad("direction", f"must be 'minimize' or 'maximize', got {direction!r}")
        if not _is_positive(heartbeat_interval):
            raise bad("heartbeat_interval", f"must be a positive number of seconds, got {heartbeat_interval!r}")
        if not _is_positive(grace_period) or grace_period < 2 * heartbeat_interval:
            raise bad(
                "grace_period",
                f"must be at least twice heartbeat_interval ({heartbeat_interval!r} s), got {grace_period!r}",
            )
        for name, value in (("rescore_top", rescore_top), ("rescore_seeds", rescore_seeds)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, f"must be a non-negative integer, got {value!r}")
        metric_names = {f"{split}_{m}" for split in ("train", "val") for m in task.metrics}
        if objective not in {"val_loss", "train_loss", *metric_names}:
            raise bad(
                "objective",
                f"{objective!r} is not recorded; choose val_loss, train_loss or one of {sorted(metric_names)}",
            )
        self.batch_cap = min(self.space.batch_max or task.n_train, task.n_train)
        if self.space.batch_min > self.batch_cap:
            raise ConfigError(
                f"batch_size.min ({self.space.batch_min}) exceeds the training set ({task.n_train} examples)",
                source=self.space.source,
                field="batch_size.min",
            )
        self.n_trials, self.budget_samples, self.seed, self.mode = n_trials, budget_samples, seed, mode
        self.n_evals, self.objective, self.direction = n_evals, objective, direction
        # ceil: exactly n_evals milestones, the last one the full budget (TrainConfig adds max_samples)
        self.eval_every = max(1, -(-budget_samples // n_evals))
        if backend not in ("optuna", "ray"):
            raise bad("backend", f"must be 'optuna' (embedded) or 'ray', got {backend!r}")
        self.backend = backend
        self.ray: RaySettings | None = None
        if backend == "ray":
            if storage is not None:
                raise bad("storage", "the Ray backend keeps its results under storage_path; leave storage unset")
            self.ray = RaySettings(
                address=address,
                resources_per_trial=resources_per_trial,
                max_concurrent=max_concurrent,
                storage_path=str(storage_path) if storage_path is not None else None,
                max_failures=max_failures,
            )
        elif address is not None or resources_per_trial is not None or storage_path is not None:
            raise bad("backend", "address, resources_per_trial and storage_path are settings of backend='ray'")
        self.storage = open_storage(storage)
        self.study_name = study_name or f"bstune-{task.name}"
        if backend == "ray" and not isinstance(pruner, str):
            raise bad("pruner", "the Ray backend takes a pruner by name (its schedulers stand in for Optuna's)")
        self.pruner_name = pruner if isinstance(pruner, str) else type(pruner).__name__
        self.pruner = make_pruner(pruner, n_evals)
        self.probe_settings = probe or ProbeSettings()
        self.device = device
        self.progress = progress
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.rescore_top, self.rescore_seeds = rescore_top, rescore_seeds
        self.probe: ProbeResult | None = None
        self.prior: Prior | None = None
        self.planner: TrialPlanner | None = None

    # -- the settings that must match when a stored study is resumed ------------------
    def _fingerprint(self) -> dict[str, Any]:
        return clean_dict(
            {
                "mode": self.mode,
                "budget_samples": self.budget_samples,
                "seed": self.seed,
                "n_evals": self.n_evals,
                "objective": self.objective,
                "space": self.space.to_dict(),
                "task": self.task.name,
                "n_train": self.task.n_train,
            }
        )  # type: ignore[no-any-return]

    def _open(self) -> optuna.Study:
        study = optuna.create_study(
            storage=self.storage,
            sampler=make_sampler(self.seed, self.n_trials),
            pruner=self.pruner,
            study_name=self.study_name,
            direction=self.direction,
            load_if_exists=True,
        )
        check_settings(study, self._fingerprint())
        retry_abandoned(study, self.grace_period)  # left running by a dead process: fail it, run its config again
        return study

    def _setup_prior(self, study: optuna.Study) -> None:
        if self.mode != "prior":
            return
        stored = study.user_attrs.get("bstune_probe")
        if stored is not None:
            self.probe = ProbeResult.from_dict(stored)
            logger.info("resuming: probe taken from the storage")
        else:
            self.probe = run_probe(
                self.task,
                self.probe_settings,
                batch_min=self.space.batch_min,
                batch_max=self.batch_cap,
                lr_min=self.space.lr_min,
                lr_max=self.space.lr_max,
                batch_round=self.space.prior.batch_round,
                seed=self.seed,
                device=self.device,
            )
            study.set_user_attr("bstune_probe", clean_json(self.probe.to_dict()))
        self._make_prior()

    def _make_prior(self) -> None:
        """The prior from ``self.probe`` (prior mode); lowers the batch cap to what the probe found fits."""
        if self.mode != "prior":
            return
        assert self.probe is not None
        if self.probe.batch_ceiling is not None:
            self.batch_cap = min(self.batch_cap, self.probe.batch_ceiling)
        self.prior = Prior.for_space(self.probe, self.space, self.batch_cap)
        logger.info(
            "prior: B in [%d, %d] around B_noise=%.4g; lr rule eta*(%d)=%.3g",
            self.prior.batch_low,
            self.prior.batch_high,
            self.prior.b_noise,
            self.prior.b_ref,
            self.prior.lr_rule(self.prior.b_ref),
        )

    # -- one trial -------------------------------------------------------------------
    def _planner(self) -> TrialPlanner:
        return TrialPlanner(
            space=self.space,
            mode=self.mode,
            prior=self.prior,
            batch_cap=self.batch_cap,
            budget_samples=self.budget_samples,
            eval_every=self.eval_every,
            seed=self.seed,
            device=self.device,
            default_momentum=self.task.optimizer_spec.momentum,
        )

    def _objective(self, trial: Trial) -> float:
        planner = self.planner
        assert planner is not None
        plan = planner.plan(planner.sample(trial))
        for key, value in plan.attrs().items():
            trial.set_user_attr(key, value)

        def on_milestone(index: int, value: float, record: EvalRecord) -> Decision:
            trial.report(value, index)
            return Decision.STOP if trial.should_prune() else Decision.CONTINUE

        outcome = run_trial(
            self.task, plan, objective=self.objective, direction=self.direction, on_milestone=on_milestone
        )
        for key, value in outcome.attrs().items():
            trial.set_user_attr(key, value)
        config = plan.config
        if outcome.status == "pruned":
            raise optuna.TrialPruned(outcome.message)
        if outcome.status == "completed":
            assert outcome.value is not None
            return outcome.value
        if outcome.status == "oom":
            cap = planner.learn_oom(config.batch_size)
            trial.set_user_attr("batch_ceiling", cap)
            logger.warning(
                "trial %d ran out of memory at batch_size=%d; batch sizes now capped at %d",
                trial.number,
                config.batch_size,
                cap,
            )
        elif outcome.status == "diverged":
            logger.info(
                "trial %d diverged at B=%d, lr=%.3g: %s", trial.number, config.batch_size, config.lr, outcome.message
            )
        else:
            logger.warning("trial %d failed: %s (traceback kept with the trial)", trial.number, outcome.message)
        raise TrialFailure(f"trial {trial.number} {outcome.status}: {outcome.message}")

    # -- the whole study ---------------------------------------------------------------
    def run(self) -> StudyResult:
        """Probe (prior mode), then run trials until ``n_trials`` have finished.

        Resumes a study found under the same name in the storage (the Ray backend: under
        ``storage_path``): the probe is not repeated, finished trials are kept, and a
        trial left running by a killed process is run again (once). With the embedded
        backend, other processes may run the same study on the same storage at the same
        time: a trial counts as abandoned only when its owner process is gone (same
        host) or silent for ``grace_period`` (another host). ``n_trials`` counts the
        trials that ran to their end, across all processes.
        """
        if self.backend == "ray":
            from bstune.study._ray import run_on_ray

            assert self.ray is not None
            trials, rescored = run_on_ray(self, self.ray)
            return self._result(trials, None, rescored)
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged once, below, without traceback
        try:
            study = self._open()
            self._setup_prior(study)
            self.planner = self._planner()
            lost: list[int] = []  # trials of ours that another process declared abandoned
            objective = with_heartbeat(self._objective, self.heartbeat_interval, lost)
            while (remaining := self.n_trials - count_finished(study)) > 0:
                self._lower_ceiling(study)
                try:
                    study.optimize(
                        objective,
                        n_trials=remaining,
                        catch=(TrialFailure,),
                        callbacks=[self._after_trial],
                        show_progress_bar=self.progress,
                    )
                    break
                except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                    if not lost:
                        raise
                    lost.clear()  # Optuna refused to tell a trial another process failed: its retry counts
            trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
            rescored = self._rescore(trials, study)
        finally:
            optuna.logging.set_verbosity(previous)
        return self._result(trials, study, rescored)

    def _rescore(
        self,
        trials: list[TrialRecord],
        study: optuna.Study | None = None,
        run: Callable[[list[TrialPlan]], list[TrialOutcome]] | None = None,
        kept: list[Rescored] | None = None,
        keep: Callable[[list[Rescored]], None] | None = None,
    ) -> list[Rescored]:
        """Re-score the best completed trials (see ``rescore_top``); what a storage kept is not redone."""
        if self.rescore_top == 0 or self.rescore_seeds == 0:
            return []
        seeds = rescore_seeds(self.seed, self.rescore_seeds)
        if study is not None:
            kept = [Rescored.from_dict(d) for d in study.user_attrs.get(_RESCORED_ATTR, [])]
        done = {r.trial: r for r in kept or [] if r.seeds == seeds}
        out = []
        for trial in candidates(trials, self.rescore_top, self.direction):
            if trial.number not in done:
                logger.info("re-scoring trial %d at seeds %s", trial.number, seeds)
                (done[trial.number],) = run_rescoring(
                    self.task, [trial], seeds, objective=self.objective, direction=self.direction, run=run
                )
                stored = [r.to_dict() for r in done.values()]
                if study is not None:
                    study.set_user_attr(_RESCORED_ATTR, stored)
                if keep is not None:
                    keep(list(done.values()))
            out.append(done[trial.number])
        return out

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: take over peers' abandoned trials, share OOM ceilings, stop at ``n_trials``."""
        retry_abandoned(study, self.grace_period)
        self._lower_ceiling(study)
        if count_finished(study) >= self.n_trials:
            study.stop()

    def _lower_ceiling(self, study: optuna.Study) -> None:
        """Apply batch-size ceilings that out-of-memory trials stored (this run's, a peer's or before a resume)."""
        planner = self.planner
        assert planner is not None
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            ceiling = t.user_attrs.get("batch_ceiling")
            if isinstance(ceiling, int) and ceiling < planner.batch_cap:
                planner.batch_cap = max(self.space.batch_min, ceiling)
                logger.info("batch sizes capped at %d (trial %d ran out of memory)", planner.batch_cap, t.number)

    def _result(
        self,
        trials: list[TrialRecord],
        optuna_study: optuna.Study | None = None,
        rescored: list[Rescored] | None = None,
    ) -> StudyResult:
        best, best_value = recommend(trials, rescored or [], self.direction, self.study_name)
        return StudyResult(
            study_name=self.study_name,
            mode=self.mode,
            objective=self.objective,
            direction=self.direction,
            best_config=handed_over(best, self.task.optimizer_spec, self.space.optimizer),
            best_value=best_value,
            best_trial=best.number,
            trials=trials,
            probe=self.probe,
            prior=self.prior,
            budget_samples=self.budget_samples,
            samples_probe=self.probe.samples_used if self.probe else 0,
            optuna_study=optuna_study,
            rescored=list(rescored or []),
        )


def _is_positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
