"""Noise-scale accuracy: the estimators against the exact full-dataset B_simple at points of training.

For each problem a run at its ``noise_config`` (B, η) is taken to checkpoints at fractions of
the trial budget (0 = the initialization). At each checkpoint the exact value is computed
from every per-example gradient of the training set (``bstune.exact_noise_scale``; for
``linreg`` also the population closed form), and each estimator of
``bstune.measure_noise_scale`` (``per_example``, ``micro_batch``) is run ``repeats`` times
with different seeds **at its default budget** (batch 64, stop at a 10 % interval
half-width or 200 batches, 90 % Fieller interval). Reported: the median relative error
|estimate/exact − 1| and the fraction of 90 % intervals that hold the exact value.

Runs are deterministic for a seed with a constant learning rate, so the run to 10 % of the
budget is the first 10 % of the full run.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Any

import bstune
from benchmarks.problems import PROBLEMS, Problem, linreg_closed_form, linreg_data, task_of

log = logging.getLogger("benchmarks.noise_accuracy")

ESTIMATORS = ("per_example", "micro_batch")


def _checkpoint(problem: Problem, fraction: float) -> Any:
    task = task_of(problem.name)
    if fraction == 0:
        return task.make_model(seed=0)
    batch, lr = problem.noise_config
    cfg = problem.train_config(batch, lr, 0)
    samples = max(batch, int(fraction * problem.budget))
    run = bstune.train(
        task, bstune.TrainConfig.from_dict(cfg.to_dict() | {"max_samples": samples, "eval_every_samples": samples})
    )
    if run.status.value != "completed" or run.model is None:
        raise RuntimeError(f"{problem.name}: checkpoint run {run.status.value}: {run.message}")
    return run.model


def measure(problem: Problem, fractions: list[float], repeats: int) -> dict[str, Any]:
    task = task_of(problem.name)
    points = []
    for fraction in fractions:
        model = _checkpoint(problem, fraction)
        t0 = time.perf_counter()
        exact = bstune.exact_noise_scale(task, model)
        point: dict[str, Any] = {"fraction": fraction, "exact": exact.b_simple, "exact_s": time.perf_counter() - t0}
        if problem.name == "linreg":
            _, _, w_star = linreg_data()
            delta_sq = float(((model.weight.detach()[0] - w_star) ** 2).sum())
            point["closed_form"] = linreg_closed_form(delta_sq)
        for method in ESTIMATORS:
            ests = []
            t0 = time.perf_counter()
            for r in range(repeats):
                est = bstune.measure_noise_scale(task, model, method=method, seed=1000 + r, warn_if_imprecise=False)
                lo, hi = est.ci
                ests.append(
                    {
                        "b_simple": est.b_simple,
                        "ci": [lo, hi],
                        "n_batches": est.n_batches,
                        "rel_error": abs(est.b_simple / exact.b_simple - 1) if math.isfinite(est.b_simple) else None,
                        "covered": bool(lo <= exact.b_simple <= hi),
                    }
                )
            errors = [e["rel_error"] if e["rel_error"] is not None else math.inf for e in ests]
            point[method] = {
                "median_rel_error": statistics.median(errors),
                "coverage": sum(e["covered"] for e in ests) / len(ests),
                "median_n_batches": statistics.median(e["n_batches"] for e in ests),
                "seconds_per_measurement": (time.perf_counter() - t0) / repeats,
                "estimates": ests,
            }
        log.info(
            "noise %s at %.0f%%: exact %.4g; %s",
            problem.name,
            100 * fraction,
            exact.b_simple,
            "; ".join(
                f"{m} err {point[m]['median_rel_error']:.1%} cover {point[m]['coverage']:.0%}" for m in ESTIMATORS
            ),
        )
        points.append(point)
    pooled = {}
    for method in ESTIMATORS:
        errs = [
            e["rel_error"] if e["rel_error"] is not None else math.inf for p in points for e in p[method]["estimates"]
        ]
        cov = [e["covered"] for p in points for e in p[method]["estimates"]]
        pooled[method] = {"median_rel_error": statistics.median(errs), "coverage": sum(cov) / len(cov), "n": len(cov)}
    return {"points": points, "pooled": pooled, "repeats": repeats, "noise_config": list(problem.noise_config)}


def probe_b_simple(problem: Problem, seed: int = 0) -> dict[str, Any]:
    """B_simple as a study's probe measures it (what the prior is built from)."""
    from bstune.space import SearchSpace
    from bstune.study import ProbeSettings
    from bstune.study._probe import run_probe

    space = SearchSpace.coerce(problem.space)
    task = task_of(problem.name)
    import dataclasses

    task = dataclasses.replace(task, optimizer=space.optimizer, validate=False)
    probe = run_probe(
        task,
        ProbeSettings(),
        batch_min=space.batch_min,
        batch_max=min(space.batch_max or task.n_train, task.n_train),
        lr_min=space.lr_min,
        lr_max=space.lr_max,
        batch_round=space.prior.batch_round,
        seed=seed,
        device="cpu",
    )
    return {
        "b_simple": probe.b_simple if math.isfinite(probe.b_simple) else None,
        "b_simple_ci": [v if math.isfinite(v) else None for v in probe.b_simple_ci],
        "samples_used": probe.samples_used,
        "seed": seed,
    }


def run_all(names: list[str], fractions: list[float], repeats: int) -> dict[str, Any]:
    return {n: measure(PROBLEMS[n], fractions, repeats) for n in names}
