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
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import Trial, TrialState

from bstune.errors import BstuneError, ConfigError
from bstune.optim import temperature
from bstune.space import SearchSpace
from bstune.study._liveness import count_finished, retry_abandoned, with_heartbeat
from bstune.study._prior import Prior
from bstune.study._probe import ProbeResult, ProbeSettings, run_probe
from bstune.study._pruners import make_pruner
from bstune.study._records import StudyResult, TrialRecord, clean_dict, clean_json
from bstune.study._storage import open_storage
from bstune.task import Task
from bstune.training import Decision, EvalRecord, RunStatus, TrainConfig, TrainResult, train

__all__ = ["Study", "StudyFailedError", "TrialFailure"]

logger = logging.getLogger(__name__)

Mode = Literal["prior", "baseline"]


class TrialFailure(BstuneError):
    """A trial ended without a result (diverged, out of memory, or raised); the study goes on."""


class StudyFailedError(BstuneError):
    """Every trial of a study failed: there is no configuration to recommend."""


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
            ``"none"`` or an Optuna pruner; it sees milestone indices as steps.
        n_evals: evaluations (and pruning decisions) per full trial; the default 9 puts
            Hyperband's rungs (1, 3, 9 with reduction factor 3) at a ninth, a third and
            the end of the budget, so no trial is pruned just before it finishes.
        objective: the record field to optimise: ``"val_loss"`` (default), ``"train_loss"``
            or a metric such as ``"val_accuracy"``.
        direction: ``"minimize"`` or ``"maximize"``.
        probe: settings of the probe (the prior mode only).
        device: trial device; ``"auto"`` picks CUDA when available.
        progress: show a progress bar over trials.
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
        heartbeat_interval: float = 30.0,
        grace_period: float = 600.0,
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
        self.storage = open_storage(storage)
        self.study_name = study_name or f"bstune-{task.name}"
        self.pruner = make_pruner(pruner, n_evals)
        self.probe_settings = probe or ProbeSettings()
        self.device = device
        self.progress = progress
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.probe: ProbeResult | None = None
        self.prior: Prior | None = None

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
        sampler = optuna.samplers.TPESampler(
            seed=self.seed,
            multivariate=True,
            n_startup_trials=min(10, max(3, self.n_trials // 4)),
        )
        study = optuna.create_study(
            storage=self.storage,
            sampler=sampler,
            pruner=self.pruner,
            study_name=self.study_name,
            direction=self.direction,
            load_if_exists=True,
        )
        stored = study.user_attrs.get("bstune_settings")
        mine = self._fingerprint()
        if stored is None:
            study.set_user_attr("bstune_settings", mine)
        elif stored != mine:
            diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
            raise ConfigError(
                f"study {self.study_name!r} in this storage was run with different settings ({', '.join(diff)}); "
                "use the same settings to resume, or another study_name/storage",
                source="Study",
                field="storage",
            )
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
        if self.probe.batch_ceiling is not None:
            self.batch_cap = min(self.batch_cap, self.probe.batch_ceiling)
        settings = self.space.prior
        self.prior = Prior.from_probe(
            self.probe,
            family=self.space.optimizer.family,
            adam_alpha=settings.adam_alpha,
            batch_width=settings.batch_width,
            lr_width=settings.lr_width,
            batch_min=self.space.batch_min,
            batch_cap=self.batch_cap,
            lr_min=self.space.lr_min,
            lr_max=self.space.lr_max,
            momentum_ref=self.space.optimizer.momentum,
            batch_round=settings.batch_round,
        )
        logger.info(
            "prior: B in [%d, %d] around B_noise=%.4g; lr rule eta*(%d)=%.3g",
            self.prior.batch_low,
            self.prior.batch_high,
            self.prior.b_noise,
            self.prior.b_ref,
            self.prior.lr_rule(self.prior.b_ref),
        )

    # -- one trial -------------------------------------------------------------------
    def _suggest(self, trial: Trial) -> tuple[TrainConfig, dict[str, Any]]:
        extras: dict[str, Any] = {}
        for spec in self.space.params:
            extras[spec.name] = trial._suggest(spec.name, spec.to_optuna())
        momentum = extras.get("momentum")
        if self.mode == "prior":
            assert self.prior is not None
            u = trial.suggest_float("batch_coord", 0.0, 1.0)
            v = trial.suggest_float("lr_coord", *self.prior.v_range)
            batch = min(self.prior.batch_at(u), self.batch_cap)
            lr = self.prior.lr_at(batch, v, momentum)
        else:
            batch = min(trial.suggest_int("batch_size", self.space.batch_min, self.batch_cap, log=True), self.batch_cap)
            lr = trial.suggest_float("lr", self.space.lr_min, self.space.lr_max, log=True)
        model_kwargs = {k.removeprefix("model."): v for k, v in extras.items() if k.startswith("model.")}
        train_kwargs = {k: v for k, v in extras.items() if not k.startswith("model.")}
        warmup = train_kwargs.pop("warmup_fraction", 0.0)
        config = TrainConfig(
            batch_size=batch,
            lr=lr,
            max_samples=self.budget_samples,
            eval_every_samples=self.eval_every,
            warmup_samples=int(warmup * self.budget_samples),
            seed=self.seed,
            device=self.device,
            **train_kwargs,
        )
        return config, model_kwargs

    def _objective(self, trial: Trial) -> float:
        config, model_kwargs = self._suggest(trial)
        m = config.momentum if config.momentum is not None else self.task.optimizer_spec.momentum
        trial.set_user_attr("batch_size", config.batch_size)
        trial.set_user_attr("lr", config.lr)
        trial.set_user_attr("temperature", temperature(config.lr, config.batch_size, m))
        trial.set_user_attr("config", clean_json(config.to_dict() | {"model_kwargs": model_kwargs}))
        sign = 1.0 if self.direction == "minimize" else -1.0
        best = [math.inf]

        def report(record: EvalRecord) -> Decision:
            value = _objective_value(record, self.objective)
            if math.isfinite(value):
                best[0] = min(best[0], sign * value)
            step = -(-record.milestone // self.eval_every)  # milestone index 1..n_evals
            trial.report(sign * best[0] if math.isfinite(best[0]) else value, step)
            return Decision.STOP if trial.should_prune() else Decision.CONTINUE

        try:
            model = self.task.make_model(seed=config.seed, **model_kwargs)
            result = train(self.task, config, report, model=model)
        except Exception as exc:  # user code raised: keep the traceback with the trial
            logger.warning(
                "trial %d raised %s: %s (traceback kept with the trial)", trial.number, type(exc).__name__, exc
            )
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("message", f"{type(exc).__name__}: {exc}")
            trial.set_user_attr("traceback", traceback.format_exc())
            raise TrialFailure(f"trial {trial.number} raised {type(exc).__name__}: {exc}") from exc
        self._record(trial, result)
        best_value = sign * best[0]
        trial.set_user_attr("best_value", best_value if math.isfinite(best_value) else None)
        if result.status is RunStatus.STOPPED:
            raise optuna.TrialPruned(result.message)
        if result.status is RunStatus.DIVERGED:
            logger.info(
                "trial %d diverged at B=%d, lr=%.3g: %s", trial.number, config.batch_size, config.lr, result.message
            )
            raise TrialFailure(f"trial {trial.number} diverged: {result.message}")
        if result.status is RunStatus.OOM:
            logger.warning(
                "trial %d ran out of memory at batch_size=%d; batch sizes now capped at %d",
                trial.number,
                config.batch_size,
                self.batch_cap,
            )
            raise TrialFailure(f"trial {trial.number} ran out of memory at batch_size={config.batch_size}")
        if not math.isfinite(best_value):
            raise TrialFailure(f"trial {trial.number} recorded no finite {self.objective}")
        return best_value

    def _record(self, trial: Trial, result: TrainResult) -> None:
        status = "pruned" if result.status is RunStatus.STOPPED else result.status.value
        trial.set_user_attr("status", status)
        trial.set_user_attr("message", result.message)
        trial.set_user_attr("samples", result.samples)
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("throughput", result.throughput if math.isfinite(result.throughput) else None)
        trial.set_user_attr(
            "history",
            clean_json(
                [
                    {
                        "milestone": r.milestone,
                        "samples": r.samples,
                        "step": r.step,
                        "lr": r.lr,
                        "train_loss": r.train_loss,
                        "val_loss": r.val_loss,
                        "gap": r.gap,
                        **r.metrics,
                    }
                    for r in result.history
                ]
            ),
        )
        if result.status is RunStatus.OOM:  # halve the ceiling for the rest of the study; stored for resume and report
            self.batch_cap = max(self.space.batch_min, min(self.batch_cap, result.config.batch_size // 2))
            trial.set_user_attr("batch_ceiling", self.batch_cap)

    # -- the whole study ---------------------------------------------------------------
    def run(self) -> StudyResult:
        """Probe (prior mode), then run trials until ``n_trials`` have finished.

        Resumes a study found under the same name in the storage: the probe is not
        repeated, finished trials are kept, and a trial left running by a killed
        process is run again (once). Other processes may run the same study on the
        same storage at the same time: a trial counts as abandoned only when its owner
        process is gone (same host) or silent for ``grace_period`` (another host).
        ``n_trials`` counts the trials that ran to their end, across all processes.
        """
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged once, below, without traceback
        try:
            study = self._open()
            self._setup_prior(study)
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
        finally:
            optuna.logging.set_verbosity(previous)
        return self._result(study)

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: take over peers' abandoned trials, share OOM ceilings, stop at ``n_trials``."""
        retry_abandoned(study, self.grace_period)
        self._lower_ceiling(study)
        if count_finished(study) >= self.n_trials:
            study.stop()

    def _lower_ceiling(self, study: optuna.Study) -> None:
        """Apply batch-size ceilings that out-of-memory trials stored (this run's, a peer's or before a resume)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            ceiling = t.user_attrs.get("batch_ceiling")
            if isinstance(ceiling, int) and ceiling < self.batch_cap:
                self.batch_cap = max(self.space.batch_min, ceiling)
                logger.info("batch sizes capped at %d (trial %d ran out of memory)", self.batch_cap, t.number)

    def _result(self, study: optuna.Study) -> StudyResult:
        trials = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)]
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not complete:
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            first = next((t for t in trials if t.message and t.status != "pruned"), None)
            raise StudyFailedError(
                f"none of the {len(trials)} trials of study {self.study_name!r} completed "
                f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
                + (f"; the first: trial {first.number}: {first.message}" if first else "")
                + "; each trial's message and traceback are kept in the storage"
            )
        best = study.best_trial
        config = dict(best.user_attrs["config"])
        best_config = {
            "batch_size": config["batch_size"],
            "lr": config["lr"],
            "momentum": config["momentum"] if config["momentum"] is not None else self.task.optimizer_spec.momentum,
            "weight_decay": (
                config["weight_decay"] if config["weight_decay"] is not None else self.task.optimizer_spec.weight_decay
            ),
            "warmup_samples": config["warmup_samples"],
            "schedule": config["schedule"],
            "temperature": best.user_attrs["temperature"],
            "optimizer": self.space.optimizer.family,
            **({"betas": list(self.space.optimizer.betas)} if self.space.optimizer.family != "sgd" else {}),
            **{f"model.{k}": v for k, v in config["model_kwargs"].items()},
        }
        return StudyResult(
            study_name=self.study_name,
            mode=self.mode,
            objective=self.objective,
            direction=self.direction,
            best_config=best_config,
            best_value=float(best.values[0]),
            trials=trials,
            probe=self.probe,
            prior=self.prior,
            budget_samples=self.budget_samples,
            samples_probe=self.probe.samples_used if self.probe else 0,
            optuna_study=study,
        )


def _is_positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _objective_value(record: EvalRecord, name: str) -> float:
    if name == "val_loss":
        return record.val_loss
    if name == "train_loss":
        return record.train_loss
    return record.metrics.get(name, math.nan)
