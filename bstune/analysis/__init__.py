"""Analysis of a study's trials: steps to a target, the critical batch size, the
compute-optimal batch size, the learning-rate table and the generalization gap.

Pure functions over plain data (:class:`~bstune.records.TrialRecord` objects or their
``to_dict()``); no plotting, no I/O. The chain a report follows::

    target = choose_target(result.trials)                    # or your own
    points = steps_by_batch(result.trials, target)           # S(B), best lr per B
    fit = fit_critical_batch(points)                         # S_min, B_crit with intervals
    best = compute_optimal(fit, result.probe.throughput, n_workers=8,
                           throughput_spread=result.probe.throughput_iqr)
    table = lr_table(fit, best_batch, best_lr, [64, 128, 256])
    gap = generalization_gap(result.trials)
    schedule = recommend_batch_schedule(run.noise_trajectory, base_batch=..., base_lr=..., ...)

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training".
"""

from bstune.analysis._batch_schedule import BatchSchedule, ScheduleStage, recommend_batch_schedule
from bstune.analysis._compute import BatchChoice, ComputeOptimal, compute_optimal, throughput_at
from bstune.analysis._critical import STEP_NOISE, CriticalBatchFit, fit_critical_batch, step_noise_of
from bstune.analysis._direction import direction_doubt
from bstune.analysis._gap import GapSummary, GapTrend, TrialGap, barely_learned, generalization_gap, pruned_flat
from bstune.analysis._lr import lr_table
from bstune.analysis._target import (
    BatchPoint,
    TargetHit,
    bin_points,
    choose_target,
    nearby_targets,
    steps_by_batch,
    steps_to_target,
)

__all__ = [
    "STEP_NOISE",
    "BatchChoice",
    "BatchPoint",
    "BatchSchedule",
    "ComputeOptimal",
    "CriticalBatchFit",
    "GapSummary",
    "GapTrend",
    "ScheduleStage",
    "TargetHit",
    "TrialGap",
    "barely_learned",
    "bin_points",
    "choose_target",
    "compute_optimal",
    "direction_doubt",
    "fit_critical_batch",
    "generalization_gap",
    "lr_table",
    "nearby_targets",
    "pruned_flat",
    "recommend_batch_schedule",
    "step_noise_of",
    "steps_by_batch",
    "steps_to_target",
    "throughput_at",
]
