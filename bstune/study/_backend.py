"""The one seam between a study and what runs its trials.

:class:`~bstune.study.Study` does the work every backend shares, once: it checks the
settings, runs the probe, builds the prior and the trial planner, re-scores the best
trials and builds the result. A :class:`TrialBackend` does only what differs between
running trials in this process (:class:`~bstune.study.OptunaBackend`, the embedded
default) and on a Ray cluster (:class:`~bstune.study.RayBackend`): where the study's
state is kept and resumed from, where the probe and the trials run, and how trials are
drawn and stopped early.

What a trial *is* is the :class:`TrialJob` both backends are handed: a picklable object
that trains one :class:`~bstune.study._trial_plan.TrialPlan` and reports its milestones,
through bstune's trainer on a task (:class:`TaskJob`) or a user's own training function
(:class:`FunctionJob`); the backends cannot tell the two apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna

from bstune.metrics import Direction
from bstune.optim import OptimizerSpec
from bstune.records import ProbeResult, Rescored, TrialRecord
from bstune.study._settings import StudySettings
from bstune.study._trial import MilestoneHook, TrialOutcome, run_trial, task_runner
from bstune.study._trial_plan import TrialPlan, TrialPlanner
from bstune.task import Task
from bstune.training import Decision, EvalRecord, TrainConfig, TrainResult, TrialFunction, run_function

__all__ = ["FunctionJob", "Resumed", "StudySpec", "TaskJob", "TrialBackend", "TrialJob"]


def full_budget(*_: Any) -> Decision:
    """A milestone callback that never stops: re-scoring runs train their whole budget."""
    return Decision.CONTINUE


class TrialJob(ABC):
    """What one trial runs: bstune's trainer on a :class:`~bstune.task.Task` (:class:`TaskJob`) or
    a user's training function (:class:`FunctionJob`), judged on ``objective``.

    Picklable (the Ray backend ships it to its workers). ``run`` is the only thing a
    backend calls: train a plan, report each milestone's value to ``on_milestone`` (which
    answers whether to stop), and say what happened.
    """

    objective: str
    direction: Direction

    @abstractmethod
    def run(self, plan: TrialPlan, on_milestone: MilestoneHook = full_budget) -> TrialOutcome:
        """Train ``plan``; never raises for what the trial's code did (see :func:`run_trial`)."""


@dataclass(frozen=True)
class TaskJob(TrialJob):
    """A task trained by bstune's trainer."""

    task: Task
    objective: str
    direction: Direction

    def run(self, plan: TrialPlan, on_milestone: MilestoneHook = full_budget) -> TrialOutcome:
        runner = task_runner(self.task, plan.model_kwargs, plan.data_parallel, plan.devices)
        return run_trial(runner, plan, objective=self.objective, direction=self.direction, on_milestone=on_milestone)


@dataclass(frozen=True)
class FunctionJob(TrialJob):
    """A user's training function ``fn(ctx)`` (see :class:`~bstune.training.TrialContext`)."""

    fn: TrialFunction
    objective: str
    direction: Direction
    optimizer: OptimizerSpec

    def run(self, plan: TrialPlan, on_milestone: MilestoneHook = full_budget) -> TrialOutcome:
        def runner(config: TrainConfig, callback: Callable[[EvalRecord], Decision]) -> TrainResult:
            result, _ = run_function(
                self.fn,
                config,
                callback,
                params=plan.params_for_user(),
                objective=self.objective,
                optimizer=self.optimizer,
                fixed=frozenset(plan.fixed),
            )
            return result

        return run_trial(runner, plan, objective=self.objective, direction=self.direction, on_milestone=on_milestone)


@dataclass(frozen=True)
class StudySpec:
    """What a backend is told about the study it runs."""

    name: str
    settings: StudySettings
    fingerprint: dict[str, Any]  # the settings a resumed study must match
    job: TrialJob
    sampler: optuna.samplers.BaseSampler
    batch_min: int  # the space's smallest batch size: an out-of-memory cap never goes below it
    # the sampler of trial worker i (parallel trials), or None: the study's sampler, re-seeded from the OS
    worker_sampler: Callable[[int], optuna.samplers.BaseSampler] | None = None
    # for a stored study that already holds n trials: the sampler and worker samplers to draw on with
    # (not the first run's seeds, which would draw its configs again); None: a user's sampler, as given
    resumed_samplers: (
        Callable[[int], tuple[optuna.samplers.BaseSampler, Callable[[int], optuna.samplers.BaseSampler]]] | None
    ) = None


@dataclass
class Resumed:
    """What a backend's store already held when the study was opened (empty for a new study)."""

    probe: dict[str, Any] | None = None
    rescored: list[Rescored] = field(default_factory=list)
    critical: dict[str, Any] | None = None  # the direct measurement of B_crit (StudySettings.critical_batch)


class TrialBackend(ABC):
    """Runs a study's trials; :class:`~bstune.study.Study` calls these in order.

    ``open`` first (which may refuse a stored study run with other settings), then, in
    the prior mode, ``run_probe`` and ``keep_probe`` unless the store held a probe; then
    ``run_trials`` with the study's planner; then ``run_plans`` and ``keep_rescored``
    for each re-scored candidate.
    """

    name: str = ""

    @abstractmethod
    def open(self, spec: StudySpec) -> Resumed:
        """Open (or resume) the study's store; returns what it held."""

    @abstractmethod
    def run_probe(self, probe: Callable[..., ProbeResult], **kwargs: Any) -> ProbeResult:
        """``probe(**kwargs)`` where the trials will run (this process, or a worker like the trials')."""

    @abstractmethod
    def keep_probe(self, probe: ProbeResult) -> None:
        """Store the probe so a resumed study need not run it again."""

    def probing(self) -> AbstractContextManager[dict[str, Any] | None]:
        """Held while this process probes and records the probe's run, so that another process starting the
        same study meanwhile waits and takes the probe it stored (yielded, as a dict) instead of probing too;
        yields None where none was stored. This default shares nothing (each process probes)."""
        return nullcontext(None)

    def adopt(
        self,
        plan: TrialPlan,
        outcome: TrialOutcome,
        intermediate: dict[int, float],
        distributions: dict[str, optuna.distributions.BaseDistribution],
    ) -> bool:
        """Record a run trained outside the trial loop (the probe's trial-long run) as a finished trial, once.

        ``intermediate``: the best objective so far at each milestone index, as a pruner
        compares; ``distributions``: those the sampler draws ``plan.params`` from. Returns
        whether it is recorded (or was, by an earlier run of the study); a backend that
        cannot says False, and the run stays the probe's cost.
        """
        return False

    @abstractmethod
    def run_trials(self, planner: TrialPlanner) -> list[TrialRecord]:
        """Run trials drawn through ``planner`` until ``n_trials`` have finished; every trial's record."""

    @abstractmethod
    def run_plans(self, plans: list[TrialPlan]) -> list[TrialOutcome]:
        """Train each plan for its whole budget (no early stopping); their outcomes, in order."""

    @abstractmethod
    def keep_rescored(self, done: list[Rescored]) -> None:
        """Store the re-scoring done so far, so a resumed study does not redo it."""

    def keep_critical(self, measured: dict[str, Any]) -> None:  # noqa: B027 - optional: a backend may not keep it
        """Store the direct measurement of B_crit (``critical_batch="measure"``) so a resumed study keeps it."""

    def describe(self, metric_names: list[str], attrs: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Label the study where the backend's own tools show it (metric names, attributes); optional."""

    def handle(self) -> Any:
        """The backend's own study object, handed to the result (the embedded backend's ``optuna.Study``)."""
        return None
