"""One trial run, independent of the backend that schedules it.

:func:`run_trial` trains one :class:`~bstune.study._trial_plan.TrialPlan` (drawn by the
:class:`~bstune.study._trial_plan.TrialPlanner`) and says what happened as a
:class:`TrialOutcome`, whose fields are what a store keeps per trial. The embedded backend
and the Ray backend both go through these, so a trial means the same thing whichever of
them ran it.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bstune.errors import BatchLargerThanDataError
from bstune.metrics import Direction
from bstune.records import TrialStatus
from bstune.study._records import clean_json
from bstune.study._status import trial_status
from bstune.study._trial_plan import TrialPlan
from bstune.study._trial_plan import TrialPlanner as TrialPlanner  # where Ray searcher states saved before pickled it
from bstune.task import Task
from bstune.training import (
    Decision,
    EvalRecord,
    TrainConfig,
    TrainResult,
    train,
    train_data_parallel,
    trained_before,
)

__all__ = [
    "Runner",
    "TrialOutcome",
    "build_model",
    "completed_outcome",
    "give_up",
    "milestone_index",
    "returned_early",
    "run_trial",
    "task_runner",
]


def build_model(task: Task, config: TrainConfig, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """The model a trial trains: the task's factory called with the ``model.*`` parameters, seeded by the config."""
    return task.make_model(seed=config.seed, **model_kwargs)


@dataclass
class TrialOutcome:
    """How a trial ended, in the fields a store keeps.

    ``status`` is ``completed``, ``pruned``, ``diverged``, ``oom`` or ``failed`` (user
    code raised; ``traceback`` holds it). ``value`` is the best objective over the
    trial's milestones (``None`` when it recorded no finite one).
    """

    status: TrialStatus
    value: float | None
    samples: int = 0
    steps: int = 0
    throughput: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    traceback: str | None = None
    n_train: int | None = None  # the training set's size, where the run learnt it (a training function's)
    # searched parameters the training function neither read nor had applied (TrainResult.unread_params)
    unread_params: list[str] = field(default_factory=list)
    other_optimizer: str | None = None  # how the loop's optimizer differed from the space's (TrainResult's)
    # a failure every trial repeats whatever its config: a training function that trained its whole
    # budget and never reported (see :func:`give_up`)
    systematic: bool = False

    def attrs(self) -> dict[str, Any]:
        out = {
            "status": self.status,
            "message": self.message,
            "samples": self.samples,
            "steps": self.steps,
            "throughput": self.throughput,
            "history": self.history,
            "best_value": self.value,
        }
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.n_train is not None:
            out["n_train"] = self.n_train
        if self.unread_params:
            out["unread_params"] = list(self.unread_params)
        if self.other_optimizer:
            out["other_optimizer"] = self.other_optimizer
        if self.systematic:
            out[SYSTEMATIC_ATTR] = True
        return clean_json(out)  # type: ignore[no-any-return]


def history_row(record: EvalRecord) -> dict[str, Any]:
    """One evaluation as a store keeps it."""
    return clean_json(  # type: ignore[no-any-return]
        {
            "milestone": record.milestone,
            "samples": record.samples,
            "step": record.step,
            "lr": record.lr,
            "train_loss": record.train_loss,
            "val_loss": record.val_loss,
            "gap": record.gap,
            **record.metrics,
        }
    )


def objective_value(record: EvalRecord, name: str) -> float:
    """The objective ``name`` (``val_loss``, ``train_loss`` or a metric) of one evaluation."""
    if name == "val_loss":
        return record.val_loss
    if name == "train_loss":
        return record.train_loss
    return record.metrics.get(name, math.nan)


MilestoneHook = Callable[[int, float, EvalRecord], Decision]


Runner = Callable[[TrainConfig, Callable[[EvalRecord], Decision]], TrainResult]
"""Trains one configuration, calling back at each milestone: bstune's trainer on a task, or a user's function."""


def task_runner(
    task: Task, model_kwargs: Mapping[str, Any], data_parallel: int = 1, devices: Sequence[str] = ()
) -> Runner:
    """bstune's trainer on ``task``, the model built with the plan's ``model.*`` parameters;
    data-parallel on ``data_parallel`` spawned processes (on ``devices``, or cuda:0... / the
    CPU) when more than one, the callback (the pruner) answered in this process."""

    def run(config: TrainConfig, callback: Callable[[EvalRecord], Decision]) -> TrainResult:
        if data_parallel > 1:
            return train_data_parallel(
                task,
                config,
                callback,
                nprocs=data_parallel,
                devices=list(devices) or None,
                model_kwargs=dict(model_kwargs),
                threads_per_rank=max(1, torch.get_num_threads() // data_parallel),
            )
        return train(task, config, callback, model=build_model(task, config, model_kwargs))

    return run


def milestone_index(milestone: int, eval_every: int) -> int:
    """Which of the study's equal-sample milestones (1, 2, ...) an evaluation at ``milestone`` samples is.

    Example:
        >>> [milestone_index(m, 1000) for m in (1000, 2000, 2500)]
        [1, 2, 3]
    """
    return -(-milestone // eval_every)


def completed_outcome(
    run: Mapping[str, Any], *, objective: str, direction: Direction | str, eval_every: int, message: str
) -> tuple[TrialOutcome, dict[int, float]] | None:
    """A completed run kept as plain data (``ProbeResult.run``: samples, steps, throughput, history rows)
    as a trial's outcome, with the best objective so far at each milestone index (what a pruner compares);
    None when it recorded no finite objective."""
    sign = Direction(direction).sign
    best, intermediate = math.inf, dict[int, float]()
    for row in run["history"]:
        value = row.get(objective)
        if value is not None and math.isfinite(value):
            best = min(best, sign * value)
        if math.isfinite(best):
            intermediate[milestone_index(int(row["milestone"]), eval_every)] = sign * best
    if not math.isfinite(best):
        return None
    outcome = TrialOutcome(
        status=TrialStatus.COMPLETED,
        value=sign * best,
        samples=int(run["samples"]),
        steps=int(run["steps"]),
        throughput=run.get("throughput"),
        history=list(run["history"]),
        message=message,
    )
    return outcome, intermediate


def run_trial(
    runner: Runner,
    plan: TrialPlan,
    *,
    objective: str,
    direction: Direction | str,
    on_milestone: MilestoneHook,
) -> TrialOutcome:
    """Train ``plan`` with ``runner`` and say how it ended; never raises for what the trial's code did.

    ``on_milestone(index, best_so_far, record)`` is called after each evaluation with
    the milestone's index (1, 2, ... of the study's equal-sample milestones) and the
    best objective so far (the value a pruner compares); it returns whether to go on.
    """
    sign = Direction(direction).sign
    best = math.inf
    eval_every = plan.config.eval_every
    seen: list[EvalRecord] = []  # what a trial whose code raises keeps of its evaluations

    def report(record: EvalRecord) -> Decision:
        nonlocal best
        seen.append(record)
        value = objective_value(record, objective)
        if math.isfinite(value):
            best = min(best, sign * value)
        return on_milestone(
            milestone_index(record.milestone, eval_every), sign * best if math.isfinite(best) else value, record
        )

    try:
        result = runner(plan.config, report)
    except Exception as exc:  # user code raised: keep the traceback with the trial, and what it trained
        samples, steps = trained_before(exc)
        return TrialOutcome(
            status=TrialStatus.FAILED,
            value=None,
            samples=samples,
            steps=steps,
            history=[history_row(r) for r in seen],
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            n_train=exc.n_examples if isinstance(exc, BatchLargerThanDataError) else None,
        )
    status = trial_status(result.status)
    value = sign * best if math.isfinite(best) else None
    systematic = False
    if status == TrialStatus.COMPLETED and 0 <= result.samples < plan.config.max_samples:
        # a loop over its own epochs, or one that returns on a bad loss (the config's doing): not systematic
        status, message = TrialStatus.FAILED, returned_early(result.samples, plan.config.max_samples)
    elif status == TrialStatus.COMPLETED and value is None:
        # its whole budget and no evaluation at all is the loop's doing; evaluations with no finite value may be
        # the config's
        status, message, systematic = TrialStatus.FAILED, _no_objective(result, objective), not result.history
    else:
        message = result.message
    return TrialOutcome(
        status=status,
        value=value,
        samples=result.samples,
        steps=result.steps,
        throughput=result.throughput if math.isfinite(result.throughput) else None,
        history=[history_row(r) for r in result.history],
        message=message,
        n_train=result.n_train,
        unread_params=list(result.unread_params),
        other_optimizer=result.other_optimizer,
        systematic=systematic,
    )


SYSTEMATIC_ATTR = "systematic"  # a trial's stored attribute: TrialOutcome.systematic
FAILURES_TO_GIVE_UP = 3  # failed trials, and none completed, after which a study stops


def give_up(finished: Sequence[tuple[TrialStatus, bool]], *, any_completed: bool) -> str | None:
    """Why a study should stop drawing trials, or None: its code fails, not its configs.

    ``finished``: the (status, systematic) of each trial this run of the study finished, in
    order; ``any_completed``: whether any trial of the study (a resumed one's included)
    completed. With none completed, one systematic failure (a training function that trained
    its budget and never reported: every trial does the same) or
    :data:`FAILURES_TO_GIVE_UP` failed trials (code that raised) end the study, rather than
    every one of its trials failing the same way. Diverged and out-of-memory trials are the
    config's doing and do not count; a pruned trial reported, so the code runs.

    Example:
        >>> failed = (TrialStatus.FAILED, False)
        >>> give_up([failed, failed], any_completed=False) is None
        True
        >>> give_up([failed] * 3, any_completed=False)
        'its first 3 trials failed and none completed'
        >>> give_up([(TrialStatus.PRUNED, False)] + [failed] * 3, any_completed=False) is None
        True
    """
    if any_completed or any(status == TrialStatus.PRUNED for status, _ in finished):
        return None
    failed = [systematic for status, systematic in finished if status == TrialStatus.FAILED]
    if any(failed):
        return "a trial failed in a way every trial would (the training function, not its config)"
    if len(failed) >= FAILURES_TO_GIVE_UP:
        return f"its first {len(failed)} trials failed and none completed"
    return None


def returned_early(samples: int, budget: int) -> str:
    """Why a training function's run that returned before its budget was spent is no finished trial: the
    trials are compared at equal training samples, and this one trained fewer (a loop over its own epochs).

    Example:
        >>> returned_early(1920, 10000)[:52]
        'the function returned after 1,920 of its 10,000 samp'
    """
    return (
        f"the function returned after {samples:,} of its {budget:,} samples; the trials are compared at equal "
        "samples, so loop over ctx.loader(...) to its end (it ends when the budget is spent) or while not ctx.done"
    )


def _no_objective(result: TrainResult, objective: str) -> str:
    """Why a run that completed has no value. A report without the objective is refused where it is
    made (``ctx.report``), and a task records every objective a study may choose, so what is left is
    a training function that never reported."""
    if not result.history:
        return f"recorded no evaluation; report {objective} with ctx.report({objective}=...) when ctx.at_milestone()"
    return f"recorded no finite {objective}"
