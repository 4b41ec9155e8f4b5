"""Study: probe, prior-shaped search and early stopping of one task, on a backend.

:class:`Study` does, once, what every backend shares: it checks the settings against
the task and the space, runs the probe and builds the prior (the prior mode), plans
trials, re-scores the best ones and builds the result. Where the trials run is a
:class:`~bstune.study.TrialBackend`: Optuna in this process
(:class:`~bstune.study.OptunaBackend`, the default) or Ray Tune on a cluster
(:class:`~bstune.study.RayBackend`).
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage

from bstune._keys import DESCRIPTION_ATTR, DIRECTIONS_ATTR
from bstune._progress import progress_bar
from bstune.analysis import direction_doubt
from bstune.errors import ConfigError, StorageError
from bstune.metrics import Direction, infer_direction
from bstune.optim import OptimizerSpec
from bstune.records import ProbeResult, Rescored, TrialRecord, TrialStatus
from bstune.space import SearchSpace
from bstune.study._backend import FunctionJob, StudySpec, TaskJob, TrialBackend, TrialJob
from bstune.study._checks import check_budget, check_factory
from bstune.study._critical import measure_study_critical_batch
from bstune.study._optuna_backend import OptunaBackend, TrialFailure
from bstune.study._prior import Prior
from bstune.study._probe import probe_space
from bstune.study._probe_function import probe_function
from bstune.study._probe_plan import probe_cost
from bstune.study._ray import RayBackend, RaySettings
from bstune.study._recommend import StudyFailedError, handed_over, handed_over_to_function, recommend
from bstune.study._records import StudyResult, clean_dict
from bstune.study._rescore import candidates, rescore_seeds, run_rescoring
from bstune.study._samplers import make_sampler, parallel_sampler, resumed_samplers
from bstune.study._settings import StudySettings
from bstune.study._storage import storage_error, storage_failure
from bstune.study._trial import completed_outcome
from bstune.study._trial_plan import TrialPlanner
from bstune.study._workers import worker_devices
from bstune.task import Task
from bstune.training import TrialFunction

__all__ = ["Study", "StudyFailedError", "TrialFailure"]

logger = logging.getLogger(__name__)


class Study:
    """A batch-size / learning-rate study of one task.

    Args:
        task: the problem.
        space: a :class:`~bstune.space.SearchSpace`, a path to its YAML file, or a dict.
            Its ``optimizer`` section (family and fixed settings) is what trials train
            with, in place of the task's.
        settings: a :class:`~bstune.study.StudySettings` (budget, trials, mode, pruner,
            objective, re-scoring, ...); keyword arguments named after its fields
            (``n_trials=40, budget_samples=300_000``) change single ones.
        backend: where trials run: ``"optuna"`` (default: in this process), ``"ray"``
            (Ray Tune on a cluster, with ASHA early stopping on training samples; needs
            the ``ray`` extra), or a :class:`~bstune.study.TrialBackend`.
        storage: the embedded backend's store: ``None`` (in memory), ``"sqlite:///runs/x.db"``
            or a journal file path (see :class:`~bstune.study.OptunaBackend`).
        ray: the Ray backend's settings (:class:`~bstune.study.RaySettings`).
        sampler: the Optuna sampler that draws trials (both backends; Ray wraps it in its
            ``OptunaSearch``). Default: multivariate TPE seeded with ``seed``.

    Raises:
        ConfigError: a setting that is out of range, or that does not fit the task or
            the space (an objective the task does not record, a batch size larger than
            its training set), named with the field.

    Example:
        >>> import torch, bstune
        >>> x = torch.randn(512, 4); y = (x[:, 0] + x[:, 1] > 0).long()
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=(x, y),
        ...                    val_data=(x[:128], y[:128]), loss=torch.nn.CrossEntropyLoss())
        >>> space = {"name": "tiny", "batch_size": {"max": 128}, "lr": {"min": 1e-3, "max": 10.0}}
        >>> study = bstune.Study(task, space=space,
        ...                      n_trials=3, budget_samples=2048, progress=False)
        >>> result = study.run()
        >>> sorted(result.best_config)[:3], len(result.trials)
        (['batch_size', 'lr', 'momentum'], 3)
    """

    def __init__(
        self,
        task: Task | TrialFunction,
        space: SearchSpace | str | Path | dict[str, Any],
        settings: StudySettings | None = None,
        *,
        backend: Literal["optuna", "ray"] | TrialBackend = "optuna",
        storage: str | Path | BaseStorage | None = None,
        ray: RaySettings | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        **changes: Any,
    ) -> None:
        self.settings = settings = StudySettings.build(settings, **changes)
        self.space = SearchSpace.coerce(space)
        self.task: Task | None = None
        self.function: TrialFunction | None = None
        self.name: str = ""
        self.n_train: int | None = None  # a training function's data are known when it runs
        if isinstance(task, Task):
            self._init_task(task)
        elif callable(task):
            self._init_function(task)
        else:
            raise ConfigError(
                f"expected a bstune.Task or a training function train(ctx), got {type(task).__name__}",
                source="Study",
                field="task",
            )
        settings = self.settings
        check_budget(settings.budget_samples, settings.n_evals, self.batch_cap, data_known=self.task is not None)
        self.study_name = settings.study_name or f"bstune-{self.name}"
        self.backend = _backend(backend, storage, ray, settings)
        self.sampler = sampler if sampler is not None else make_sampler(settings.seed, settings.n_trials)
        # parallel trials: worker i draws with the default TPE seeded seed + i; a user's sampler is re-seeded
        self._worker_sampler = partial(parallel_sampler, settings.seed, settings.n_trials) if sampler is None else None
        self.probe: ProbeResult | None = None
        self.prior: Prior | None = None

    def _init_task(self, task: Task) -> None:
        """A task trained by bstune's trainer: its metrics, factory and training set are checked here."""
        settings = self.settings
        if not self.space.optimizer_named:  # the space names none: the task's trains, as bstune train runs it
            try:
                self.space = dataclasses.replace(self.space, optimizer=task.optimizer_spec)
            except ConfigError as exc:  # e.g. a searched momentum, which the task's Adam has not
                raise ConfigError(
                    f"{exc.reason}; the space names no optimizer, so the task's ({task.optimizer_spec.family}) trains: "
                    "name one in the space's optimizer section, or leave out what the task's optimizer has not",
                    source=exc.source,
                    field=exc.field,
                ) from exc
        elif task.optimizer_spec != self.space.optimizer:
            (logger.warning if task.optimizer_spec != OptimizerSpec() else logger.info)(
                "the search space's optimizer (%s) replaces the task's (%s) in this study",
                self.space.optimizer,
                task.optimizer_spec,
            )
        # The space's optimizer section holds the settings the search keeps fixed: trials use it.
        self.task = dataclasses.replace(task, optimizer=self.space.optimizer, validate=False)
        self.name, self.n_train = task.name, task.n_train
        self.optimizer_spec = self.task.optimizer_spec  # the space's, which trials train with
        check_factory(task.model, self.space)
        metric_names = {f"{split}_{m}" for split in ("train", "val") for m in task.metrics}
        if settings.objective not in {"val_loss", "train_loss", *metric_names}:
            raise ConfigError(
                f"{settings.objective!r} is not recorded; choose val_loss, train_loss or one of {sorted(metric_names)}",
                source="Study",
                field="objective",
            )
        declared = task.directions[settings.objective]
        if settings.direction is None:
            self.settings = dataclasses.replace(settings, direction=declared)
        elif settings.direction is not declared:
            raise ConfigError(
                f"{str(settings.direction)!r} contradicts the objective {settings.objective!r}, which the task "
                f"declares {declared.value!r}; leave direction unset, or declare the metric with "
                "bstune.Metric(fn, direction=...)",
                source="Study",
                field="direction",
            )
        self.direction: Direction = declared
        self.directions = dict(task.directions)
        self.batch_cap = min(self.space.batch_max or task.n_train, task.n_train)
        if self.space.batch_min > self.batch_cap:
            raise ConfigError(
                f"batch_size.min ({self.space.batch_min}) exceeds the training set ({task.n_train} examples)",
                source=self.space.source,
                field="batch_size.min",
            )

    def _init_function(self, fn: TrialFunction) -> None:
        """A user's training function: what it reports is known only when it runs, so the objective's
        direction is the declared one or read from its name, and the space must bound the batch size."""
        settings = self.settings
        self.function = fn
        self.name = getattr(fn, "__name__", "train").strip("<>") or "train"
        self.n_train = None
        self.optimizer_spec = self.space.optimizer
        declared = Direction(settings.direction) if settings.direction is not None else None
        named = infer_direction(settings.objective)
        # refused only against whole words (val_accuracy): a name read from a part of a word (lossless_ratio) is the
        # heuristic's guess, and the user's own direction stands
        settled = infer_direction(settings.objective, whole_words=True)
        if declared is not None and settled is not None and declared is not settled:
            raise ConfigError(
                f"{declared.value!r} contradicts the objective {settings.objective!r}, whose name says "
                f"{settled.value!r}; leave direction unset",
                source="Study",
                field="direction",
            )
        direction = declared or named
        if direction is None:
            raise ConfigError(
                f"bstune cannot tell from its name whether {settings.objective!r} is better low or high; "
                "say direction='minimize' or direction='maximize' (bstune run: --direction minimize or maximize)",
                source="Study",
                field="direction",
            )
        self.direction = direction
        self.settings = dataclasses.replace(settings, direction=direction)
        self.directions = {"val_loss": Direction.MINIMIZE, "train_loss": Direction.MINIMIZE}
        self.directions[settings.objective] = self.direction
        if self.space.batch_max is None:
            raise ConfigError(
                "a training function's data are not known before it runs: give the space a batch_size.max",
                source=self.space.source,
                field="batch_size.max",
            )
        self.batch_cap = self.space.batch_max
        if settings.critical_batch == "measure":
            raise ConfigError(
                "the direct measurement trains branches with bstune's trainer, so it needs a bstune.Task; "
                "for a training function keep critical_batch='fit' (the report fits B_crit to the trials)",
                source="Study",
                field="critical_batch",
            )
        if settings.devices_per_trial > 1:
            raise ConfigError(
                "a training function runs in one process per trial; data-parallel trials are a Task's "
                "(or start DDP inside the function yourself)",
                source="Study",
                field="devices_per_trial",
            )

    def _job(self) -> TrialJob:
        """What each trial runs, on either backend."""
        s = self.settings
        if self.task is not None:
            return TaskJob(self.task, s.objective, self.direction)
        assert self.function is not None
        return FunctionJob(self.function, s.objective, self.direction, self.space.optimizer)

    @property
    def storage(self) -> BaseStorage | None:
        """The embedded backend's storage; ``None`` in memory or on another backend."""
        return self.backend.storage if isinstance(self.backend, OptunaBackend) else None

    # -- the settings that must match when a stored study is resumed ------------------
    def _fingerprint(self) -> dict[str, Any]:
        s = self.settings
        return clean_dict(
            {
                "mode": s.mode,
                "budget_samples": s.budget_samples,
                "seed": s.seed,
                "n_evals": s.n_evals,
                "objective": s.objective,
                "space": self.space.to_dict(),
                "task": self.name,
                "n_train": self.n_train,
                "pruner": s.pruner_name,
            }
        )

    # -- the whole study ---------------------------------------------------------------
    def run(self) -> StudyResult:
        """Probe (prior mode), then run trials until ``n_trials`` have finished, then re-score.

        Resumes a study found under the same name in the backend's store (the embedded
        backend's storage; the Ray backend's ``storage_path``): the probe is not
        repeated, finished trials and re-scoring are kept, and a trial left running by a
        killed process is run again (once). With the embedded backend, other processes
        may run the same study on the same storage at the same time: a trial counts as
        abandoned only when its owner process is gone (same host) or silent for
        ``grace_period`` (another host). ``n_trials`` counts the trials that ran to
        their end, across all processes. A ``KeyboardInterrupt`` (Ctrl-C) leaves the
        running trial as a kill does, marked ``interrupted`` and queued to run again on
        resume, and goes on up.

        With ``parallel_trials > 1`` (or ``devices``), that many trials run at once, each in
        a worker process of its own pinned to its device (``devices="all"``: one per GPU),
        on the same storage (with none, a temporary journal file); the probe and the
        re-scoring's bookkeeping stay in this process, and the re-scoring runs side by side
        on the workers' devices. Each worker draws with its own sampler (the default TPE
        seeded ``seed + i``, with Optuna's constant liar), so the configs drawn depend on
        the order in which trials finish: a parallel study is not reproducible trial for
        trial. Each trial records its worker (``TrialRecord.worker``). A worker process that
        dies is started again once and its trial run again; Ctrl-C leaves every running
        trial ``interrupted``, and no worker process behind.

        Raises:
            StorageError: the embedded backend's storage failed mid-study (a full disk, a
                read-only file); what it recorded before is kept, and the study resumes.
        """
        try:
            return self._run()
        except Exception as exc:
            backend = self.backend
            reason = None if isinstance(exc, StorageError) else storage_failure(exc)
            if reason is None or not isinstance(backend, OptunaBackend):
                raise
            raise storage_error(reason, backend.storage_name()) from exc

    def _run(self) -> StudyResult:
        s = self.settings
        spec = StudySpec(
            self.study_name,
            s,
            self._fingerprint(),
            self._job(),
            self.sampler,
            self.space.batch_min,
            self._worker_sampler,
            # a user's sampler is theirs to seed; the defaults move on past a stored study's draws
            partial(resumed_samplers, s.seed, s.n_trials) if self._worker_sampler is not None else None,
        )
        resumed = self.backend.open(spec)
        spent: int | None = None  # what a training function's probe spent, warned about once known
        # a second start of the study meanwhile waits for this one's probe and its run's trial, and takes them
        probing = self.backend.probing() if s.mode == "prior" and resumed.probe is None else nullcontext(None)
        with probing as stored:
            if s.mode == "prior":
                spent = self._probe(spec, resumed.probe or stored)
            self.backend.describe(
                [s.objective], {DIRECTIONS_ATTR: self._directions(), DESCRIPTION_ATTR: self._describe()}
            )
            planner = self._planner()
            adopted = self._adopt_probe_run(planner)
        if spent is not None:
            self._warn_probe_cost(spent=spent - (adopted or 0), adopted=adopted is not None)
        trials = self.backend.run_trials(planner)
        doubt = direction_doubt(trials, s.objective, self.direction)
        if doubt is not None:
            logger.warning("study %r: %s", self.study_name, doubt)
        rescored = self._rescore(trials, resumed.rescored)
        result = self._result(trials, self.backend.handle(), rescored)
        used = {(r.trial, tuple(r.seeds)) for r in rescored}
        # re-scoring an earlier run stored for candidates (or seeds) this one does not use: spent all the same
        result.samples_rescore_unused = sum(
            r.samples for r in resumed.rescored if (r.trial, tuple(r.seeds)) not in used
        )
        if s.critical_batch == "measure":
            result.critical_measured = self._measure_critical(result, resumed.critical)
        return result

    def _measure_critical(self, result: StudyResult, kept: dict[str, Any] | None) -> dict[str, Any]:
        """B_crit measured directly from the recommended config (``critical_batch="measure"``), kept in the store."""
        assert self.task is not None, "critical_batch='measure' is refused for training functions in __init__"
        s = self.settings
        measured = measure_study_critical_batch(
            self.task,
            result.trials,
            result.best_trial,
            batch_min=self.space.batch_min,
            batch_max=self.batch_cap,
            device=s.main_device,
            adam_alpha=self.space.prior.adam_alpha,
            kept=kept,
            progress=(lambda line: logger.info("critical batch: %s", line)),
        )
        self.backend.keep_critical(measured)
        return measured

    def _probe(self, spec: StudySpec, stored: dict[str, Any] | None) -> int | None:
        """Take the ``stored`` probe, or run the probe and store it; then build the prior. Returns the samples a
        training function's probe spent (known only once it ran), else None."""
        s = self.settings
        if stored is not None:
            self.probe = ProbeResult.from_dict(stored)
            logger.info("resuming: probe taken from the %s backend's store", self.backend.name)
            self._make_prior(self.probe)
            return None
        if self.task is not None:
            self._warn_probe_cost()
        probe, subject = (
            (probe_space, {"task": self.task}) if self.task is not None else (probe_function, {"job": spec.job})
        )
        self.probe = self.backend.run_probe(
            probe,
            **subject,
            space=self.space,
            settings=s.probe,
            batch_cap=self.batch_cap,
            seed=s.seed,
            device=s.main_device,
            progress=s.progress,
            # the probe's training run: one trial (a task's; a function's when no longer than its own rule)
            budget_samples=s.budget_samples,
            eval_every_samples=s.eval_every,
            num_workers=s.num_workers,
        )
        self.backend.keep_probe(self.probe)
        self._make_prior(self.probe)
        return self.probe.samples_used if self.task is None else None  # a function's: known now

    def _adopt_probe_run(self, planner: TrialPlanner) -> int | None:
        """The probe's trial-long run (a trial's budget, milestones and seed) as the study's first trial.

        It trained at the probe batch and a quarter of the LR ceiling, a config the sampler
        could have drawn: recorded as a finished trial, it counts towards ``n_trials``, so
        the probe costs one trial less. Not where the run could not be a trial: a space with
        other parameters (the probe trains them at their defaults), a config outside the
        search, a backend that cannot record it, a probe without one. Both backends record
        it: the embedded one in its Optuna storage, Ray's as its searcher's trial 0. Returns the
        run's samples where it was recorded (now or by the stored study this one resumes).
        """
        run = self.probe.run if self.probe is not None else None
        if run is None or run.get("status") != TrialStatus.COMPLETED:
            return None
        plan = planner.plan_at(int(run["batch_size"]), float(run["lr"]))
        if plan is None:
            logger.info("the probe's run is not a trial the search could draw; it stays the probe's cost")
            return None
        s = self.settings
        done = completed_outcome(
            run,
            objective=s.objective,
            direction=self.direction,
            eval_every=s.eval_every,
            message="the probe's trial-long run, recorded as a trial",
        )
        if done is None:
            return None
        outcome, intermediate = done
        distributions: dict[str, optuna.distributions.BaseDistribution] = {
            name: optuna.distributions.FloatDistribution(low, high)
            for name, (low, high) in planner.prior_coordinates().items()
        }
        if not self.backend.adopt(plan, outcome, intermediate, distributions):
            return None
        logger.info(
            "the probe's run (B=%s, lr=%.3g) is the study's first trial: %s=%.4g",
            run["batch_size"],
            run["lr"],
            s.objective,
            outcome.value,
        )
        return outcome.samples

    def _make_prior(self, probe: ProbeResult) -> None:
        """The prior from the probe; lowers the batch cap to what the probe found fits."""
        if self.task is None and probe.n_train is not None:  # a training function's data, seen by its probe
            self.n_train = probe.n_train
            if probe.n_train < self.batch_cap:
                logger.info("the training set has %d examples: batch sizes capped there", probe.n_train)
        self.batch_cap = probe.search_cap(self.batch_cap)
        self.prior = prior = Prior.for_space(probe, self.space, self.batch_cap)
        if probe.lr_ceiling_at_max:
            logger.warning(
                "the LR range test at B=%d reached the space's lr.max (%.3g) with the loss still falling: the LR "
                "ceiling, and the lr rule anchored on it, are lower bounds; raise lr.max to let the probe find it",
                probe.batch_size,
                probe.lr_ceiling,
            )
        logger.info(
            "prior: B in [%d, %d] around B_noise=%.4g; lr rule eta*(%d)=%.3g",
            prior.batch_low,
            prior.batch_high,
            prior.b_noise,
            prior.b_ref,
            prior.lr_rule(prior.b_ref),
        )

    def _planner(self) -> TrialPlanner:
        s = self.settings
        return TrialPlanner(
            space=self.space,
            mode=s.mode,
            prior=self.prior,
            batch_cap=self.batch_cap,
            budget_samples=s.budget_samples,
            eval_every=s.eval_every,
            seed=s.seed,
            device=s.main_device,
            default_momentum=self.optimizer_spec.momentum,
            num_workers=s.num_workers,
            data_parallel=s.devices_per_trial,
            # this process's trials' devices (each worker process gets its own; Ray's trials, where they run)
            trial_devices=worker_devices(s)[0] if isinstance(self.backend, OptunaBackend) else (),
        )

    def _rescore(self, trials: list[TrialRecord], kept: list[Rescored]) -> list[Rescored]:
        """Re-score the best completed trials (see ``rescore_top``); what the store kept is not redone."""
        s = self.settings
        if s.rescore_top == 0 or s.rescore_seeds == 0:
            return []
        seeds = rescore_seeds(s.seed, s.rescore_seeds)
        done = {r.trial: r for r in kept if r.seeds == seeds}
        out = []
        best = candidates(trials, s.rescore_top, self.direction)
        todo = len(seeds) * sum(1 for t in best if t.number not in done)
        bar = progress_bar(s.progress and todo > 0, "re-scoring", total=todo, unit="run")
        for trial in best:
            if trial.number not in done:
                logger.info("re-scoring trial %d at seeds %s", trial.number, seeds)
                (done[trial.number],) = run_rescoring(
                    [trial],
                    seeds,
                    run=self.backend.run_plans,
                    objective=s.objective,
                    on_done=bar.update,
                    fixed=tuple(sorted(self.space.fixed)),
                )
                # what an earlier run re-scored at other seeds stays stored: its samples were spent
                self.backend.keep_rescored([*done.values(), *(r for r in kept if r.seeds != seeds)])
            out.append(done[trial.number])
        bar.close()
        return out

    def _warn_probe_cost(self, spent: int | None = None, *, adopted: bool = False) -> None:
        """Warn when the probe costs more than all the trials together.

        A task's probe is warned about before it runs, from its least cost (:func:`probe_cost`:
        the task's data size is known). A training function shows its data only when it runs,
        and a small training set caps the throughput ladder far below the space's batch sizes,
        so its warning comes after the probe, from the samples it ``spent`` (less its run where the
        study recorded that as its first trial: ``adopted``).
        """
        s = self.settings
        besides = ""
        if spent is not None:  # less the probe's run where the study recorded it as a trial (``adopted``)
            probe, what = spent, "the probe trained on %s samples%s"
            besides = " besides its run, which is the first trial" if adopted else ""
        else:
            probe = probe_cost(
                self.task,
                s.probe,
                batch_min=self.space.batch_min,
                batch_max=self.batch_cap,
                batch_round=self.space.prior.batch_round,
                budget_samples=s.budget_samples,
            )
            what = "the probe will train on at least %s samples%s"
            if self.task is not None and not self.space.params:
                probe -= s.budget_samples  # its trial-long run will be one of the trials (_adopt_probe_run)
                besides = " besides its run, which is the first trial"
        trials = s.n_trials * s.budget_samples
        if probe > trials:
            logger.warning(
                what + ", %.1fx what the trials may use in all "
                "(%d trials x budget_samples %s = %s): the study %s; raise budget_samples "
                "or the number of trials, or use mode 'baseline' (no probe)",
                f"{probe:,}",
                besides,
                probe / trials,
                s.n_trials,
                f"{s.budget_samples:,}",
                f"{trials:,}",
                "would mostly measure" if spent is None else "mostly measures",
            )

    def _describe(self) -> str:
        """What a dashboard user needs to read the study: what its params are, where B and eta are.

        In the prior mode TPE searches fixed-range coordinates (``batch_coord``, ``lr_coord``),
        not B and eta, so the dashboard's params are not the batch size and learning rate:
        each trial keeps those as the user attributes ``batch_size`` and ``lr`` (the dashboard's
        trial table lists them, and its plots can take them as targets).
        """
        s = self.settings
        every = f"{self.direction} the best {s.objective} over {s.n_evals} evaluations"
        if self.prior is not None:
            v_low, v_high = self.prior.v_range
            b_low, b_high = self.prior.batch_range
            params = (
                f"the params batch_coord in [0, 1] and lr_coord in [{v_low:.3g}, {v_high:.3g}] are the prior's "
                f"coordinates (B log-uniform from {b_low} to {b_high}; lr_coord is log(eta / the eta(B) rule)); "
                f"the first trials, and a share decaying as {self.prior.weight:g}/(n+1) after, are drawn from the "
                f"band B in [{self.prior.batch_low}, {self.prior.batch_high}] below B_noise {self.prior.b_noise:.4g}, "
                "the rest by the sampler"
            )
        else:
            params = "the params batch_size and lr are B and eta as sampled (log-uniform)"
        return (
            f"bstune {s.mode}-mode study of {'task' if self.task is not None else 'training function'} {self.name}: {params}. Each trial's batch size B and "
            f"learning rate eta are its user attributes batch_size and lr (temperature: eta/(B(1-m))). "
            f"Objective: {every} of a trial's {s.budget_samples} samples."
        )

    def _directions(self) -> dict[str, str]:
        """What the records store: whether each recorded quantity is minimized or maximized."""
        return {name: direction.value for name, direction in self.directions.items()}

    def _result(
        self,
        trials: list[TrialRecord],
        optuna_study: optuna.Study | None = None,
        rescored: list[Rescored] | None = None,
    ) -> StudyResult:
        best, best_value = recommend(trials, rescored or [], self.direction, self.study_name)
        return StudyResult(
            study_name=self.study_name,
            mode=self.settings.mode,
            objective=self.settings.objective,
            direction=self.direction,
            best_config=(
                handed_over(best, self.optimizer_spec, self.space.optimizer)
                if self.task is not None
                else handed_over_to_function(best, self.space.optimizer)
            ),
            best_value=best_value,
            optimizer=self.space.optimizer.family,
            optimizer_spec=dataclasses.asdict(self.space.optimizer) if self.task is None else None,
            subject="task" if self.task is not None else "function",
            best_trial=best.number,
            trials=trials,
            probe=self.probe,
            prior=self.prior,
            budget_samples=self.settings.budget_samples,
            # the probe's run recorded as a trial counts as the trial's, not twice
            samples_probe=(self.probe.samples_used - sum(t.samples for t in trials if t.from_probe))
            if self.probe
            else 0,
            optuna_study=optuna_study,
            rescored=list(rescored or []),
            directions=self._directions(),
            pruner=pruner if isinstance(pruner := self.settings.pruner, str) else type(pruner).__name__,
        )


def _backend(
    backend: Literal["optuna", "ray"] | TrialBackend,
    storage: str | Path | BaseStorage | None,
    ray: RaySettings | None,
    settings: StudySettings,
) -> TrialBackend:
    """The backend a study runs on, its settings checked against each other."""

    def bad(name: str, reason: str) -> ConfigError:
        return ConfigError(reason, source="Study", field=name)

    if isinstance(backend, TrialBackend):
        if storage is not None or ray is not None:
            raise bad("backend", "a backend object carries its own settings; leave storage and ray unset")
        chosen = backend
    elif backend == "ray":
        if storage is not None:
            raise bad("storage", "the Ray backend keeps its results under storage_path; leave storage unset")
        chosen = RayBackend(ray)
    elif backend == "optuna":
        if ray is not None:
            raise bad("ray", "ray= holds the settings of backend='ray'")
        chosen = OptunaBackend(storage)
    else:
        raise bad("backend", f"must be 'optuna' (embedded), 'ray' or a TrialBackend, got {backend!r}")
    if isinstance(chosen, RayBackend) and not isinstance(settings.pruner, str):
        raise bad("pruner", "the Ray backend takes a pruner by name (its schedulers stand in for Optuna's)")
    if isinstance(chosen, OptunaBackend):
        worker_devices(settings)  # refuses, now, more devices than the machine has
    if isinstance(chosen, OptunaBackend) and settings.workers > 1:
        chosen.worker_url()  # refuses, now, a storage object the worker processes could not open
    elif not isinstance(chosen, OptunaBackend) and settings.workers > 1:
        raise bad(
            "devices" if settings.devices is not None else "parallel_trials",
            "trial worker processes are the embedded backend's; the Ray backend runs trials at once by itself "
            "(ray=RaySettings(resources_per_trial=..., max_concurrent=...))",
        )
    return chosen
