"""The branches of the direct B_crit measurement (:mod:`bstune.critical._branching`): the ladder of
batch sizes, the learning rate each branch starts from (the rule under test), the small rate search
around it, and what the runs say: one point per batch size and seed, and the tolerance batch size."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from bstune.analysis import BatchPoint
from bstune.critical._results import BranchRun, BranchSettings
from bstune.errors import ConfigError
from bstune.task import Task
from bstune.training import Decision, EvalRecord, TrainConfig, train

__all__ = [
    "BranchRunner",
    "batch_ladder",
    "branch_ladder",
    "branch_points",
    "lr_rule",
    "tolerance_batch",
    "train_branch",
]

_MAX_EXTEND = 4  # the rate search walks past the factors tried at most this many doublings


# A branch runner: (segment, start model, batch, lr, seed, target loss, cap samples, samples between checks)
# -> (samples to the target or spent, samples spent, reached, status)
BranchRunner = Callable[[int, nn.Module, int, float, int, float, int, int], tuple[float, int, bool, str]]


def train_branch(
    task: Task, base: TrainConfig, start_loss: float, ceiling: float, optimizer_state: dict[str, Any] | None
) -> BranchRunner:
    """Branches trained by bstune's trainer, stopped when the training loss reaches the target, or
    passes ``ceiling`` (diverged: the rate fails)."""

    def run(
        segment: int, model: nn.Module, batch: int, lr: float, seed: int, target: float, cap: int, every: int
    ) -> tuple[float, int, bool, str]:
        config = replace(
            base, batch_size=batch, lr=lr, max_samples=cap, eval_every_samples=every, seed=seed, track_noise=False
        )
        last: list[EvalRecord] = []
        crossed: list[float] = []
        diverged: list[int] = []

        def on_eval(record: EvalRecord) -> Decision:
            if not record.train_loss < ceiling:  # blew up (or NaN): this rate fails
                diverged.append(record.samples)
                return Decision.STOP
            if record.train_loss <= target:
                s0, l0 = (last[-1].samples, last[-1].train_loss) if last else (0, start_loss)
                crossed.append(_crossing(s0, l0, record.samples, record.train_loss, target))
                return Decision.STOP
            last.append(record)
            return Decision.CONTINUE

        result = train(task, config, on_eval, model=copy.deepcopy(model), optimizer_state=optimizer_state)
        if crossed:
            return crossed[0], result.samples, True, result.status.value
        status = "diverged" if diverged else result.status.value
        return float(result.samples), result.samples, False, status

    return run


def _crossing(s0: float, l0: float, s1: float, l1: float, target: float) -> float:
    """Samples where the loss crossed ``target``, linear in log loss between two evaluations."""
    if not (l0 > target >= l1) or s1 <= s0:
        return float(s1)
    if l1 > 0 and target > 0:
        frac = (math.log(l0) - math.log(target)) / (math.log(l0) - math.log(l1))
    else:
        frac = (l0 - target) / (l0 - l1)
    return float(s0 + min(1.0, max(0.0, frac)) * (s1 - s0))


def batch_ladder(centers: Sequence[float], ref: int, low: int, high: int, factor: int, max_rungs: int) -> list[int]:
    """Powers of two ``factor`` apart around the B_simple values, within [low, high]; at least 3 when the range allows."""
    finite = [c for c in centers if math.isfinite(c) and c > 0] or [float(ref)]
    # B_crit runs from about B_simple/3 to several times it (McCandlish et al.; benchmarks/RESULTS.md), and
    # grows over training: the ladder reaches further up than down
    lo_want, hi_want = min(finite) / factor, max(finite) * factor * factor
    step = int(math.log2(factor))
    top = math.floor(math.log2(high))
    bottom = math.ceil(math.log2(max(1, low)))
    if bottom > top:
        raise ConfigError(f"no power of two lies in the batch range [{low}, {high}]", source="critical", field="batch")
    start = min(top, max(bottom, round(math.log2(max(1.0, lo_want)))))
    stop = max(bottom, min(top, round(math.log2(hi_want))))
    exps = list(range(start, stop + 1, step))
    for s in (step, max(1, step // 2), 1):  # too few rungs: spread over what the range allows
        if len(exps) >= 3:
            break
        exps = list(range(bottom, top + 1, s))
        if len(exps) > max_rungs:  # keep those nearest the wanted span's middle
            mid = (math.log2(max(1.0, lo_want)) + math.log2(hi_want)) / 2
            exps = sorted(sorted(exps, key=lambda e: abs(e - mid))[:max_rungs])
    while len(exps) > max_rungs:  # drop from the end farther from the middle of the wanted span
        mid = (math.log2(max(1.0, lo_want)) + math.log2(hi_want)) / 2
        exps = exps[1:] if mid - exps[0] > exps[-1] - mid else exps[:-1]
    return [2**e for e in exps]


def lr_rule(ref_batch: int, ref_lr: float, b_noise: float, alpha: float) -> Callable[[int], float]:
    """η(B) = η_ref·(s(B)/s(B_ref))^α with s(B) = 1/(1/B + 1/B_noise) (linear, then flat, for α = 1)."""

    def s(b: float) -> float:
        return 1.0 / (1.0 / b + (1.0 / b_noise if math.isfinite(b_noise) and b_noise > 0 else 0.0))

    return lambda b: ref_lr * (s(b) / s(ref_batch)) ** alpha


def _best_over_rates(
    runner: BranchRunner,
    model: nn.Module,
    *,
    segment: int,
    batch: int,
    rule_lr: float,
    seed: int,
    target: float,
    cap: int,
    every: int,
    factors: Sequence[float],
    search: bool = True,
) -> list[BranchRun]:
    """The factors of the rule's rate, then (``search``) one more step past the better end; each capped at the best so far."""
    runs: list[BranchRun] = []

    def best() -> BranchRun | None:
        hit = [r for r in runs if r.reached]
        return min(hit, key=lambda r: r.samples) if hit else None

    def go(factor: float) -> None:
        b = best()
        limit = cap if b is None else max(batch, min(cap, math.ceil(b.samples)))
        samples, spent, reached, status = runner(segment, model, batch, rule_lr * factor, seed, target, limit, every)
        runs.append(BranchRun(segment, batch, rule_lr * factor, factor, seed, samples, spent, reached, status))

    for f in factors:
        go(f)
    b = best()
    lo = min(factors)
    if not search:
        return runs
    if b is None:  # nothing reached: a lower rate may (the rule's may diverge at large B)
        go(lo / 2)
        return runs
    # the best at an end of the rates tried: walk on that way, doubling, while it keeps improving
    for _ in range(_MAX_EXTEND):
        tried = sorted({r.lr_factor for r in runs})
        b = best()
        if b is None or len(tried) < 2 or b.lr_factor not in (tried[0], tried[-1]):
            break
        go(tried[-1] * 2 if b.lr_factor == tried[-1] else tried[0] / 2)
        if best() is b:  # the new rate did no better: the optimum is bracketed
            break
    return runs


def branch_ladder(
    runner: BranchRunner,
    model: nn.Module,
    segment: int,
    ladder: Sequence[int],
    seeds: Sequence[int],
    rule: Callable[[int], float],
    target: float,
    span: int,
    settings: BranchSettings,
) -> tuple[list[BranchRun], dict[int, int]]:
    """Every batch size of the ladder at every seed from ``model`` to ``target``; the runs and each batch's cap.

    The rate search runs at the first seed, starting from the factor the batch size below found (the
    rule's error carries up the ladder); the other seeds train at the rate it chose.
    """
    caps = {b: max(b, math.ceil(settings.max_cost * span / b) * b) for b in ladder}
    runs: list[BranchRun] = []
    shift = 1.0
    for batch in ladder:
        every = max(batch, span // settings.checks_per_segment)
        factors: Sequence[float] = [f * shift for f in settings.lr_factors]
        for j, seed in enumerate(seeds):
            mine = _best_over_rates(
                runner,
                model,
                segment=segment,
                batch=batch,
                rule_lr=rule(batch),
                seed=seed,
                target=target,
                cap=caps[batch],
                every=every,
                factors=factors,
                search=j == 0,
            )
            runs += mine
            if j == 0:  # the other seeds train at the rate the first chose: their scatter is the seed noise
                hit = [r for r in mine if r.reached]
                factors = ((min(hit, key=lambda r: r.samples) if hit else mine[-1]).lr_factor,)
                if hit:
                    shift = factors[0]
    return runs, caps


def branch_points(runs: Sequence[BranchRun], cap_of: Callable[[int], int]) -> dict[tuple[int, int], BatchPoint]:
    """One point per (batch, seed): the fewest samples over its rates, or a lower bound at the cap."""
    points = {}
    for batch, seed in sorted({(r.batch_size, r.seed) for r in runs}):
        hit = [r for r in runs if r.batch_size == batch and r.seed == seed and r.reached]
        if hit:
            r = min(hit, key=lambda r: r.samples)
            points[batch, seed] = BatchPoint(batch, r.samples / batch, r.samples, r.lr)
        else:
            cap = cap_of(batch)
            points[batch, seed] = BatchPoint(batch, cap / batch, float(cap), None, lower_bound=True)
    return points


def tolerance_batch(points: Sequence[BatchPoint], tolerance: float) -> int | None:
    """The largest batch size whose median samples over seeds stay within (1 + tolerance) of the cheapest's."""
    by_batch: dict[int, list[float]] = {}
    for p in points:
        by_batch.setdefault(p.batch_size, []).append(math.inf if p.lower_bound else p.samples)
    medians = {b: statistics.median(v) for b, v in by_batch.items()}
    finite = [m for m in medians.values() if math.isfinite(m)]
    if not finite:
        return None
    cheapest = min(finite)
    within = [b for b, m in medians.items() if m <= (1 + tolerance) * cheapest]
    return max(within) if within else None
