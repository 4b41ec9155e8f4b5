"""Steps to a target: when each trial reached a loss, and the fewest steps per batch size.

McCandlish et al. 2018 (§2.2) measure, for each batch size B, the number of optimizer
steps S(B) the best-tuned run needs to reach a fixed target loss; S(B) is the input of
the critical-batch fit (:mod:`bstune.analysis._critical`). Here:

- :func:`steps_to_target` reads one learning curve. Between the two evaluations around
  the crossing, log(metric) is taken as linear in steps (loss curves are closer to
  exponential than to linear over a short stretch), so the crossing is interpolated,
  not rounded up to the next evaluation. Steps are samples / B, on the record's
  ``samples`` (the trainer counts them exactly).
- :func:`choose_target` picks a default target from the trials themselves.
- :func:`steps_by_batch` keeps, for each batch size, its best learning rate's count.

Censoring is kept, not hidden: a run that never reached the target says only that it
needs *more* steps than it ran (``lower_bound``); a run already at the target at its
first evaluation says only that it needed *at most* that many (``upper_bound``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from bstune._validate import check_count
from bstune.analysis._trials import (
    Direction,
    History,
    TrialLike,
    batch_size_of,
    field_of,
    metric_values,
)
from bstune.errors import ConfigError, EstimationError
from bstune.records import TrialStatus

__all__ = [
    "BatchPoint",
    "TargetHit",
    "bin_points",
    "choose_target",
    "nearby_targets",
    "steps_by_batch",
    "steps_to_target",
]

# A run that never reached the target still bounds S(B) from below while it was on
# track; a diverged/oom/failed run was not, so it counts only if it got there first.
_BOUNDING_STATUSES = frozenset({TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.RUNNING})


@dataclass(frozen=True)
class TargetHit:
    """When one run reached the target.

    Attributes:
        reached: the metric reached the target at some evaluation.
        steps: optimizer steps to the target (samples / batch size). When not
            reached, the steps the run recorded: a lower bound.
        samples: training samples to the target (or the last recorded, when not reached).
        upper_bound: reached already at the first evaluation, so ``steps`` is only an
            upper bound (nothing before it to interpolate from).
    """

    reached: bool
    steps: float
    samples: float
    upper_bound: bool = False

    @property
    def lower_bound(self) -> bool:
        """Not reached: ``steps`` is a lower bound on what the run would need."""
        return not self.reached


def steps_to_target(
    history: History,
    batch_size: int,
    target: float,
    metric: str = "train_loss",
    *,
    direction: Direction | str = Direction.MINIMIZE,
) -> TargetHit:
    """First point where ``metric`` reaches ``target``, interpolated between evaluations.

    With ``direction="minimize"`` (losses) the crossing is linear in log(metric) vs
    steps when the values and the target are positive, linear in the metric
    otherwise; with ``"maximize"`` (accuracies) it is linear in the metric. Entries
    whose metric is missing or non-finite are skipped.

    Example:
        >>> hist = [{"samples": 100, "train_loss": 1.0}, {"samples": 200, "train_loss": 0.25}]
        >>> steps_to_target(hist, batch_size=10, target=0.5)  # halfway in log(loss)
        TargetHit(reached=True, steps=15.0, samples=150.0, upper_bound=False)
    """
    direction = Direction.coerce(direction, source="steps_to_target")
    check_count(batch_size, source="steps_to_target", field="batch_size")
    if not math.isfinite(target):
        raise ConfigError(f"must be finite, got {target!r}", source="steps_to_target", field="target")
    points = metric_values(history, metric, batch_size)
    for i, (samples, value) in enumerate(points):
        if not direction.reached(value, target):
            continue
        if i == 0:
            return TargetHit(True, samples / batch_size, samples, upper_bound=True)
        s0, v0 = points[i - 1]
        if direction is Direction.MINIMIZE and min(v0, value, target) > 0:
            frac = (math.log(v0) - math.log(target)) / (math.log(v0) - math.log(value))
        else:  # v0 and value lie on either side of the target, v0 strictly: no division by 0
            frac = (v0 - target) / (v0 - value)
        hit = s0 + frac * (samples - s0)
        return TargetHit(True, hit / batch_size, hit)
    last = points[-1][0] if points else 0.0
    return TargetHit(False, last / batch_size, last)


def _best_values(trials: Iterable[TrialLike], metric: str, direction: Direction) -> dict[int, float]:
    """Best ``metric`` each batch size reached over all its trials' histories."""
    best: dict[int, float] = {}
    for trial in trials:
        b = batch_size_of(trial)
        if b is None:
            continue
        values = [v for _, v in metric_values(field_of(trial, "history") or [], metric, b)]
        if values:
            best[b] = direction.best([*values, best[b]]) if b in best else direction.best(values)
    return best


_TARGET_CANDIDATES = 200  # recorded values tried when the default target is too easy to time


def choose_target(
    trials: Iterable[TrialLike],
    metric: str = "train_loss",
    *,
    reach_fraction: float = 2 / 3,
    direction: Direction | str = Direction.MINIMIZE,
) -> float:
    """The hardest target that at least ``reach_fraction`` of the batch sizes reach.

    Each distinct batch size is represented by the best value any of its trials
    recorded (its best learning rate). With k batch sizes the target is the
    m-th best of those k values, m = max(⌈reach_fraction·k⌉, min(3, k)): at least m
    batch sizes, and never fewer than the 3 a fit needs, reach it, and no harder
    target has that property. Why "hardest": B_crit grows as training proceeds
    (McCandlish et al. 2018, §3.3), so a late target describes the regime a user
    trains in, while an easy one is reached in the first evaluations, where steps
    are censored. Why not every batch size: at an equal sample budget the largest
    batches take the fewest steps and may not get there; they still enter the fit
    as lower bounds. Where that target leaves fewer than 3 batch sizes that reach
    it after their first evaluation (a study that pruned most batch sizes at the
    first rung: their best value is what every longer run reaches by its first
    evaluation too, so their steps are only bounds), the target is instead the
    recorded value that the most batch sizes reach after their first evaluation,
    the harder of equals. Pass your own target to override.

    Example:
        >>> trials = [{"batch_size": b, "history": [{"samples": 10, "train_loss": v}]}
        ...           for b, v in [(8, 0.1), (16, 0.2), (32, 0.3), (64, 0.9)]]
        >>> choose_target(trials)  # 3 of the 4 batch sizes reach 0.3
        0.3
    """
    direction = Direction.coerce(direction, source="choose_target")
    trials = list(trials)
    if not 0 < reach_fraction <= 1:
        raise ConfigError(f"must be in (0, 1], got {reach_fraction!r}", source="choose_target", field="reach_fraction")
    best = _best_values(trials, metric, direction)
    if not best:
        raise EstimationError(f"no trial recorded a finite {metric!r} with a batch size: no target to choose")
    ranked = sorted(best.values(), key=lambda v: direction.sign * v)  # best first
    k = len(ranked)
    m = max(math.ceil(reach_fraction * k - 1e-9), min(3, k))
    target = ranked[m - 1]
    timed = target, _timed(trials, target, metric, direction) if k >= 3 else 0
    if k < 3 or timed[1] >= 3:
        return target
    # Too easy to time: the batch sizes whose only trials were pruned at the first rung hold their
    # first evaluation as their best, so the m-th best is what longer runs reach by their first
    # evaluation too, and the fit gets upper bounds instead of points. Then take the value, of all
    # those recorded, that the most batch sizes reach after their first evaluation (the harder on a tie).
    recorded = {
        v
        for trial in trials
        if (b := batch_size_of(trial)) is not None
        for _, v in metric_values(field_of(trial, "history") or [], metric, b)
    }
    ordered = sorted(recorded, key=lambda v: direction.sign * v)  # hardest first
    step = max(1, len(ordered) // _TARGET_CANDIDATES)  # a long study: every step-th value, still in order
    for value in ordered[::step]:
        n = _timed(trials, value, metric, direction)
        if n > timed[1]:
            timed = value, n
    return timed[0]


def nearby_targets(
    trials: Iterable[TrialLike],
    target: float,
    metric: str = "train_loss",
    *,
    direction: Direction | str = Direction.MINIMIZE,
) -> list[float]:
    """The targets next to ``target`` at which one batch size fewer, or one more, reaches it.

    Each batch size's best recorded value is where it stops reaching a target: the
    nearest such value harder than ``target`` and the nearest easier one (where they
    exist) are the smallest changes of target that change which batch sizes enter the
    fit. A verdict on B_crit that flips between them depends on the target, not the data.

    Example:
        >>> trials = [{"batch_size": b, "history": [{"samples": 10, "train_loss": v}]}
        ...           for b, v in [(8, 0.1), (16, 0.2), (32, 0.3), (64, 0.9)]]
        >>> nearby_targets(trials, 0.3)  # harder: 8 and 16 reach 0.2; easier: all four reach 0.9
        [0.2, 0.9]
        >>> nearby_targets(trials, 0.25)  # 8 and 16 reach it: 8 alone reaches 0.1, 8, 16 and 32 reach 0.3
        [0.1, 0.3]
    """
    direction = Direction.coerce(direction, source="nearby_targets")
    sign = direction.sign
    ranked = sorted(_best_values(list(trials), metric, direction).values(), key=lambda v: sign * v)  # hardest first
    reach = sum(1 for v in ranked if sign * v <= sign * target)  # batch sizes that reach the target
    out = []
    if reach >= 1:  # the easiest target that the hardest-reaching one of them misses: the others still reach it
        harder = [v for v in ranked if sign * v < sign * ranked[reach - 1]]
        if harder:
            out.append(harder[-1])
    if reach < len(ranked):  # the hardest target one more batch size reaches
        out.append(ranked[reach])
    return out


def _timed(trials: list[TrialLike], target: float, metric: str, direction: Direction) -> int:
    """Batch sizes that reach ``target`` after their first evaluation: points a fit can use."""
    return sum(1 for p in bin_points(steps_by_batch(trials, target, metric, direction=direction)) if not p.censored)


@dataclass(frozen=True)
class BatchPoint:
    """S(B) at one batch size: the fewest steps to the target over its trials.

    Attributes:
        batch_size: B.
        steps: steps to the target of the best trial at B (a bound when censored).
        samples: the same in training samples.
        lr: learning rate of that trial.
        lower_bound: no trial at B reached the target; ``steps`` is what the
            longest-running one recorded (the best learning rate needs at least that,
            if the shorter, pruned runs would not have overtaken it).
        upper_bound: the best trial was at the target at its first evaluation.
        trial: number of that trial, when the trials carry one.
        n_trials: trials at B that entered the comparison.
    """

    batch_size: int
    steps: float
    samples: float
    lr: float | None
    lower_bound: bool = False
    upper_bound: bool = False
    trial: int | None = None
    n_trials: int = 1

    @property
    def censored(self) -> bool:
        return self.lower_bound or self.upper_bound


def steps_by_batch(
    trials: Iterable[TrialLike],
    target: float,
    metric: str = "train_loss",
    *,
    direction: Direction | str = Direction.MINIMIZE,
) -> list[BatchPoint]:
    """One :class:`BatchPoint` per distinct batch size, ordered by batch size.

    Every trial that reached the target competes on steps, whatever its status (a
    run that diverged after reaching it did reach it). If none at a batch size did,
    its completed, pruned or running trials give a lower bound; a batch size with
    only diverged/oom/failed trials that never reached it is left out.
    """
    hits: dict[int, list[tuple[TargetHit, TrialLike]]] = defaultdict(list)
    for trial in trials:
        b = batch_size_of(trial)
        if b is None:
            continue
        hit = steps_to_target(field_of(trial, "history") or [], b, target, metric, direction=direction)
        if hit.reached or field_of(trial, "status") in _BOUNDING_STATUSES:
            hits[b].append((hit, trial))
    points = []
    for b in sorted(hits):
        reached = [(h, t) for h, t in hits[b] if h.reached]
        if reached:
            hit, trial = min(reached, key=lambda ht: ht[0].steps)
        else:
            hit, trial = max(hits[b], key=lambda ht: ht[0].steps)
        number = field_of(trial, "number")
        points.append(
            BatchPoint(
                batch_size=b,
                steps=hit.steps,
                samples=hit.samples,
                lr=field_of(trial, "lr"),
                lower_bound=not hit.reached,
                upper_bound=hit.upper_bound,
                trial=number if isinstance(number, int) else None,
                n_trials=len(hits[b]),
            )
        )
    return points


BIN_OCTAVES = 0.5  # batch-size bins half an octave wide


def bin_points(points: list[BatchPoint]) -> list[BatchPoint]:
    """Per half-octave of batch size, the point that reached the target in fewest steps.

    Batch sizes a few percent apart measure the same S(B); one point per bin keeps a
    search that crowded a region from weighting the fit there. A reached point beats
    a bound that never reached the target; of bounds alone, the one that ran the most
    steps without reaching it says the most (``S(B) > steps``), as within a batch size
    (:func:`steps_by_batch`).

    Example:
        >>> pts = [BatchPoint(64, 100.0, 6400.0, 0.1), BatchPoint(70, 90.0, 6300.0, 0.1), BatchPoint(256, 40.0, 1e4, 0.1)]
        >>> [(p.batch_size, p.steps) for p in bin_points(pts)]
        [(70, 90.0), (256, 40.0)]
        >>> never = [BatchPoint(97, 310.0, 30090.0, 0.1, lower_bound=True), BatchPoint(104, 33.0, 3432.0, 0.2, lower_bound=True)]
        >>> [(p.batch_size, p.steps) for p in bin_points(never)]  # a full run that missed, not one pruned early
        [(97, 310.0)]
    """
    bins: dict[int, BatchPoint] = {}
    for p in points:
        key = round(math.log2(p.batch_size) / BIN_OCTAVES)
        held = bins.get(key)
        better = (
            held is None
            or (held.lower_bound and not p.lower_bound)
            or (not held.lower_bound and not p.lower_bound and p.steps < held.steps)
            or (held.lower_bound and p.lower_bound and p.steps > held.steps)
        )
        if better:
            bins[key] = p
    return [bins[k] for k in sorted(bins)]
