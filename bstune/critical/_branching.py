"""The critical batch size measured directly: branches from checkpoints of one reference run.

A tuning study's trials give S(B), the steps to a loss, only incidentally: they were not
tuned per batch size, seldom span both sides of B_crit, and ran at one seed. This module
measures S(B) on purpose, in the spirit of Merrill et al. 2025 ("Critical Batch Size
Revisited", arXiv 2505.23971), with McCandlish et al.'s (2018) model fitted to it:

1. **Reference.** The recommended config (B_ref, η_ref) trains at a constant learning
   rate for its budget, in segments between checkpoints (fractions of the budget,
   :attr:`BranchSettings.checkpoints`). Each segment starts from the state the previous
   one ended at; its target is the training loss the reference reached at the segment's
   end (eval mode, on a fixed subset of the training set), averaged over the segment's last
   quarter: one evaluation of a noisy run is a lucky or unlucky draw. A branch whose loss
   climbs above ten times its start (and the initial loss) has diverged.
2. **B_simple at every checkpoint** (:func:`bstune.measure_noise_scale`): the trajectory
   beside the direct measurement, and the centre of the batch-size ladder.
3. **Branches.** From each checkpoint, a copy of the model trains at each batch size of a
   ladder (powers of two, 4x apart, from a quarter of the smallest B_simple to sixteen times
   the largest, within the space's batch range and the training set), at
   :attr:`BranchSettings.seeds` seeds other than the reference's, until its training loss
   reaches the segment's target, or stops at ``max_cost`` times the segment's samples (then
   its count is a lower bound). The learning rate follows the rule under test,
   η(B) = η_ref·(s(B)/s(B_ref))^α with s(B) = 1/(1/B + 1/B_noise) (α = 1 for SGD, the
   space's ``adam_alpha`` for Adam-family optimizers), times a small search: the rule's
   rate and twice it, then, while the better end keeps improving, on that way by doublings
   (at most four). The factor found at one batch size is where the next one up starts (the
   rule's error carries up the ladder: the rate of a short segment is not the full run's).
   A later rate stops as soon as it has spent what the best so far needed (only the
   fewest samples count). The search runs at the first seed; the other seeds train at the
   rate it chose, so their scatter is the seed noise at that rate. The samples at which the loss crossed the target are
   interpolated between evaluations.
4. **The whole run.** The same ladder, seeds and search from initialisation to the
   reference's final loss (or ``target_loss``): S(B) as a sweep measures it, one constant
   rate per batch size. (Summing the segments' counts measures something else: every segment
   starts from the reference, so a branch at a lower rate than the reference's gains the drop
   that annealing gives once per segment; on the digits MLP small batches looked twice as
   fast as a sweep finds them.)
5. **Fits.** Per segment and for the whole run, S(B) = S_min(1 + B_crit/B) is fitted to every
   seed's points (:func:`bstune.analysis.fit_critical_batch`): the seeds' scatter is in the
   residuals, so the profile-likelihood interval accounts for it. The whole run's is the number
   a study's B_crit (steps from initialisation to a late target) compares with; the segments'
   are B_crit over training, each at its own best rates. Beside the fits, the *tolerance* batch
   size: the largest batch size of the ladder whose median sample cost stays within
   ``tolerance`` of the cheapest one's.

The reference is one run: each segment continues the previous one's optimizer state. An SGD
branch starts from the reference's momentum buffer at its checkpoint (in gradient units, it
suits any batch size; restarting it costs ~1/(1−m) steps of warm-up, a large share of a
large batch's few steps, and biased B_crit low by about 2x on the digits MLP). An Adam-family
branch starts fresh: the reference's second moment holds the reference batch's gradient
noise and would shrink a larger batch's steps for ~1/(1−β₂) steps.

Cost: with the defaults, a few tens of the reference's budgets (every figure is in
:attr:`CriticalBatchMeasurement.cost_samples`); it is an optional phase of a study
(``Study(..., critical_batch="measure")``), or run on its own (``bstune crit DIR``).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from bstune.analysis import BatchPoint, CriticalBatchFit, fit_critical_batch, step_noise_of
from bstune.critical._branches import (
    BranchRunner,
    batch_ladder,
    branch_ladder,
    branch_points,
    lr_rule,
    tolerance_batch,
    train_branch,
)
from bstune.critical._results import BranchRun, BranchSettings, CriticalBatchMeasurement, SegmentMeasurement
from bstune.errors import BstuneError, ConfigError, EstimationError
from bstune.noise import measure_noise_scale
from bstune.task import Task, has_batchnorm
from bstune.training import RunStatus, TrainConfig, train

__all__ = ["measure_critical_batch"]

logger = logging.getLogger(__name__)

_DIVERGED = 10.0  # a branch whose training loss exceeds this times its start (and the initial loss) has diverged
_SEED_STRIDE = 7919  # branch seeds: the reference's seed plus multiples of a prime, never the reference's own


def _fit_or_error(points: Sequence[BatchPoint], confidence: float) -> tuple[CriticalBatchFit | None, str | None]:
    try:
        return fit_critical_batch(points, confidence=confidence, step_noise=step_noise_of(points)), None
    except EstimationError as exc:
        return None, str(exc)


def measure_critical_batch(
    task: Task,
    config: TrainConfig,
    settings: BranchSettings | None = None,
    *,
    batch_min: int = 1,
    batch_max: int | None = None,
    b_noise: float | None = None,
    ladder: Sequence[int] | None = None,
    target_loss: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    runner: BranchRunner | None = None,
    progress: Callable[[str], None] | None = None,
) -> CriticalBatchMeasurement:
    """Measure the critical batch size directly, over training; see the module docstring.

    Args:
        task: the problem.
        config: the reference config (the study's recommendation): its ``batch_size``,
            ``lr``, ``max_samples`` (the budget), ``seed`` and the rest; the branches
            train at a constant rate (``schedule`` and ``warmup_samples`` are dropped).
        settings: checkpoints, seeds, ladder, search and tolerance.
        batch_min, batch_max: the batch sizes the ladder may use (the space's range; the
            training set caps ``batch_max``).
        b_noise: the B_noise of the LR rule; default: the geometric mean of the B_simple
            measured at the checkpoints.
        ladder: the batch sizes to branch at; default: powers of two around the B_simple
            measured at the checkpoints (see the module docstring).
        target_loss: the training loss the whole run is measured to (as a sweep's S(B) is): the reference
            trains until it reaches it (up to ``target_budget_factor`` times its budget), and the
            checkpoints are fractions of the samples it needed. Default: the reference trains for its
            budget and the target is its loss at the end.
        model_kwargs: the model factory's arguments (a search space's ``model.<name>`` parameters).
        runner: trains one branch (tests pass a closed-form one); default: bstune's trainer.
        progress: called with a line of text as each segment finishes.

    Raises:
        ConfigError: bad settings, or a batch range holding no power of two.
        EstimationError: the reference diverged, or reached no lower loss than it started
            with (nothing to measure).
    """
    settings = settings or BranchSettings()
    high = min(task.n_train, batch_max or task.n_train)
    if batch_min > high:
        raise ConfigError(f"batch_min {batch_min} is above the batch range's top {high}", source="critical")
    base = replace(
        config,
        schedule="constant",
        warmup_samples=0,
        eval_train_examples=settings.eval_examples or config.eval_train_examples,
        eval_at_start=True,
        track_noise=False,
        divergence_factor=None,  # from a late checkpoint one batch's loss can be 100x the first's; see _DIVERGED
    )
    alpha = settings.alpha
    if alpha is None:
        alpha = 1.0 if task.optimizer_spec.family == "sgd" else settings.adam_alpha
    budget = config.max_samples
    cost = 0
    notes: list[str] = []

    # 1. the reference: one run in chunks (each continues the last one's optimizer state), a snapshot after each,
    # until the budget is spent or, with a target, until the loss reaches it
    torch_state = torch.random.get_rng_state()
    model = task.make_model(seed=config.seed, **dict(model_kwargs or {}))
    chunk = max(config.batch_size, round(budget / settings.reference_chunks / config.batch_size) * config.batch_size)
    limit = budget if target_loss is None else math.ceil(settings.target_budget_factor * budget)
    snapshots: list[tuple[int, nn.Module, dict[str, Any] | None]] = [(0, copy.deepcopy(model), None)]
    chunk_losses: list[tuple[int, float]] = []  # (samples at the chunk's end, its training loss there)
    optimizer_state: dict[str, Any] | None = None
    start_loss = math.nan
    done = 0
    while done < limit:
        span = min(chunk, limit - done)
        run = train(
            task,
            replace(base, max_samples=span, seed=config.seed + len(chunk_losses), eval_every_samples=span),
            model=model,
            optimizer_state=optimizer_state,
        )
        if run.status is not RunStatus.COMPLETED or run.model is None:
            raise EstimationError(
                f"the reference run (batch {config.batch_size}, lr {config.lr:g}) ended {run.status.value} "
                f"after {done:,} samples: {run.message}"
            )
        if not chunk_losses:
            start_loss = run.history[0].train_loss
        done += run.samples
        cost += run.samples
        model, optimizer_state = run.model, run.optimizer_state
        chunk_losses.append((done, run.history[-1].train_loss))
        snapshots.append((done, copy.deepcopy(model), copy.deepcopy(optimizer_state)))
        if target_loss is not None and _smoothed(chunk_losses, done, settings.target_window) <= target_loss:
            break
    if target_loss is not None and _smoothed(chunk_losses, done, settings.target_window) > target_loss:
        raise EstimationError(
            f"the reference run (batch {config.batch_size}, lr {config.lr:g}) did not reach the target loss "
            f"{target_loss:.4g} in {done:,} samples ({settings.target_budget_factor:g}x its budget): its training "
            f"loss was {chunk_losses[-1][1]:.4g}; choose an easier target"
        )
    # the checkpoints: the snapshots nearest the fractions of the samples the reference ran
    picked = sorted(
        {min(range(len(snapshots) - 1), key=lambda i: abs(snapshots[i][0] - c * done)) for c in settings.checkpoints}
    )
    bounds = [snapshots[i][0] for i in picked] + [done]
    states = [snapshots[i][1] for i in picked]
    optimizer_states = [snapshots[i][2] for i in picked]
    snapshots.clear()  # the other copies: memory back
    # segment targets: the reference's loss at each cut, averaged over the segment's last part (one evaluation
    # of a noisy run is a lucky or unlucky draw); the last one is the target when one was given
    losses = [start_loss] + [
        _smoothed(chunk_losses, bounds[k + 1], settings.target_window, since=bounds[k]) for k in range(len(bounds) - 1)
    ]
    if target_loss is not None:
        losses[-1] = target_loss
    b_simple = [_b_simple(task, state, config.seed + k) for k, state in enumerate(states)]
    final_b_simple = _b_simple(task, model, config.seed + len(bounds))
    torch.random.set_rng_state(torch_state)
    if not losses[-1] < losses[0]:
        raise EstimationError(
            f"the reference run's training loss did not fall ({losses[0]:.4g} -> {losses[-1]:.4g}): nothing to measure"
        )
    cost += sum(extra for _, _, extra in b_simple) + final_b_simple[2]

    centers = [b for b, _, _ in b_simple] + [final_b_simple[0]]
    noise = b_noise if b_noise is not None else _geometric_mean(centers)
    rule = lr_rule(config.batch_size, config.lr, noise if noise is not None else math.inf, alpha)
    if ladder is None:
        ladder = batch_ladder(centers, config.batch_size, batch_min, high, settings.rung_factor, settings.max_rungs)
    else:
        ladder = sorted({int(b) for b in ladder})
        if len(ladder) < 3 or ladder[0] < 1 or ladder[-1] > task.n_train:
            raise ConfigError(
                f"needs >= 3 distinct batch sizes in [1, {task.n_train}] (the training set), got {ladder}",
                source="measure_critical_batch",
                field="ladder",
            )

    # 2. branches from every checkpoint: B_crit over training (each segment's own best rate)
    n_segments = len(bounds) - 1
    segments: list[SegmentMeasurement] = []
    all_runs: list[BranchRun] = []
    seeds = [config.seed + _SEED_STRIDE * (j + 1) for j in range(settings.seeds)]
    # SGD's momentum buffer (in gradient units) carries over to any batch size; Adam's second moment holds the
    # reference batch's noise and would shrink a larger batch's steps for ~1/(1-β2) steps: fresh
    sgd = task.optimizer_spec.family == "sgd"
    for k in range(n_segments):
        span = bounds[k + 1] - bounds[k]
        target = losses[k + 1]
        if not target < losses[k]:
            notes.append(f"segment {k}: the reference's loss did not fall ({losses[k]:.4g} -> {target:.4g})")
        runner_k = runner or train_branch(
            task, base, losses[k], max(_DIVERGED * losses[k], losses[0]), optimizer_states[k] if sgd else None
        )
        runs, caps = branch_ladder(runner_k, states[k], k, ladder, seeds, rule, target, span, settings)
        cost += sum(r.spent for r in runs)
        all_runs += runs
        points = list(branch_points(runs, caps.__getitem__).values())
        fit, error = _fit_or_error(points, settings.confidence)
        b, ci, _ = b_simple[k]
        segments.append(
            SegmentMeasurement(
                k,
                bounds[k],
                bounds[k + 1],
                losses[k],
                target,
                b,
                ci,
                points,
                fit,
                tolerance_batch(points, settings.tolerance),
                error,
            )
        )
        if progress is not None:
            progress(f"segment {k} ({bounds[k]:,}-{bounds[k + 1]:,} samples): " + (fit.summary if fit else str(error)))

    # 3. the whole run: branches from initialisation to the final loss, each at one rate (searched), as a sweep's
    # constant-rate runs. Summing the segments' counts instead measured something else: every segment starts
    # from the reference, so a branch at a lower rate than the reference's gains the drop that annealing gives,
    # once per segment, and small batches looked twice as fast as a sweep finds them (digits MLP)
    runner_w = runner or train_branch(task, base, losses[0], _DIVERGED * losses[0], None)
    runs, caps = branch_ladder(runner_w, states[0], n_segments, ladder, seeds, rule, losses[-1], done, settings)
    cost += sum(r.spent for r in runs)
    all_runs += runs
    whole_points = list(branch_points(runs, caps.__getitem__).values())
    if progress is not None:
        progress(f"whole run (0-{done:,} samples): {len(runs)} branches")
    whole, whole_error = _fit_or_error(whole_points, settings.confidence)
    return CriticalBatchMeasurement(
        reference={
            "batch_size": config.batch_size,
            "lr": config.lr,
            "budget_samples": budget,
            "seed": config.seed,
            "alpha": alpha,
            "b_noise_rule": noise,
        },
        ladder=list(ladder),
        segments=segments,
        whole=whole,
        whole_points=whole_points,
        final_loss=losses[-1],
        final_b_simple=final_b_simple[0],
        final_b_simple_ci=final_b_simple[1],
        branches=all_runs,
        cost_samples=int(cost),
        settings=settings,
        whole_error=whole_error,
        whole_b_tolerance=tolerance_batch(whole_points, settings.tolerance),
        notes=notes,
    )


def _b_simple(task: Task, model: nn.Module, seed: int) -> tuple[float, tuple[float, float], int]:
    """B_simple at ``model``'s parameters, its interval and the training examples it used; inf when it fails."""
    method = "micro_batch" if has_batchnorm(model) else "per_example"
    try:
        est = measure_noise_scale(
            task,
            copy.deepcopy(model),
            batch_size=min(64, task.n_train),
            method=method,  # type: ignore[arg-type]
            seed=seed,
            warn_if_imprecise=False,
        )
    except BstuneError as exc:
        logger.info("B_simple not measured at a checkpoint: %s", exc)
        return math.inf, (0.0, math.inf), 0
    return est.b_simple, est.ci, est.n_examples


def _smoothed(chunk_losses: Sequence[tuple[int, float]], at: int, window: float, since: int = 0) -> float:
    """The mean training loss of the chunks ending in the last ``window`` of (since, at]; at least the one at ``at``."""
    span = at - since
    tail = [loss for end, loss in chunk_losses if at - window * span <= end <= at and end > since]
    if not tail:
        tail = [loss for end, loss in chunk_losses if end <= at][-1:]
    return statistics.fmean(tail)


def _geometric_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in finite) / len(finite)) if finite else None
