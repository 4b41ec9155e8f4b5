"""End to end on a problem whose S(B) is measured directly: an exhaustive batch-size sweep.

Linear regression with an ill-conditioned input covariance (a 100× spread of
curvatures) and label noise, trained with :func:`bstune.train` at every power of two
from 2 to 512, each with its best learning rate found by a line search on a √2 grid.
Every run stops at the target (a train loss 1% of the way from the noise floor to the
initial loss), so all batch sizes reach it. The direct measurements the fit must agree
with: S_min ≈ the fewest steps measured, E_min ≈ the fewest samples measured, the
knee where S(B) = 2·S_min, and their ratio, B_crit's definition E_min/S_min.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import bstune
from bstune.analysis import fit_critical_batch, steps_by_batch, steps_to_target
from bstune.training import Decision

BATCHES = [2, 4, 8, 16, 32, 64, 128, 256, 512]
LR_GRID = 0.05 * 2 ** (np.arange(-4, 10) / 2)  # √2 apart, 0.0125 .. 1.13


def _task(d: int = 16, n: int = 8192, n_val: int = 512, sigma: float = 0.5) -> tuple[bstune.Task, float]:
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -1, d)  # input scales 1 .. 0.1: curvatures 1 .. 0.01
    x = torch.randn(n + n_val, d, generator=gen) * scales
    y = x @ torch.randn(d, 1, generator=gen) + sigma * torch.randn(n + n_val, 1, generator=gen)

    def model() -> torch.nn.Module:
        m = torch.nn.Linear(d, 1, bias=False)
        torch.nn.init.zeros_(m.weight)
        return m

    task = bstune.Task(model=model, train_data=(x[:n], y[:n]), val_data=(x[n:], y[n:]), loss=torch.nn.MSELoss())
    initial = float((y[:n] ** 2).mean())
    return task, sigma**2 + 0.01 * (initial - sigma**2)


def _sweep(task: bstune.Task, target: float) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []

    def run(b: int, k: int, cap: int) -> float:
        cfg = bstune.TrainConfig(
            batch_size=b,
            lr=float(LR_GRID[k]),
            max_samples=cap,
            eval_every_samples=max(b, 64),
            eval_train_examples=1024,
            seed=1,
        )
        result = bstune.train(task, cfg, callback=lambda r: Decision.STOP if r.train_loss <= target else None)
        history = [r.to_dict() for r in result.history]
        status = "pruned" if result.status is bstune.RunStatus.STOPPED else result.status.value
        trials.append({"number": len(trials), "batch_size": b, "lr": cfg.lr, "status": status, "history": history})
        hit = steps_to_target(history, b, target)
        return hit.steps if hit.reached else math.inf

    k_guess = 2
    for b in BATCHES:
        tried: dict[int, float] = {}
        cap = 200_000  # samples; shrinks to twice the best run so far: slower rates stop early

        def at(k: int, b: int = b, tried: dict[int, float] = tried) -> float:
            nonlocal cap
            if k not in tried and 0 <= k < len(LR_GRID):
                tried[k] = run(b, k, cap)
                if math.isfinite(tried[k]):
                    cap = min(cap, int(2 * tried[k] * b) + 64)
            return tried.get(k, math.inf)

        for k in (k_guess - 1, k_guess, k_guess + 1):
            at(k)
        while True:  # walk towards the better side until the best has a worse neighbour on each
            best = min(tried, key=lambda k: tried[k])
            if at(best - 1) >= tried[best] and at(best + 1) >= tried[best]:
                break
        k_guess = best + 2  # the optimal rate grows with B at most linearly: start a step ahead
    return trials


@pytest.mark.slow
def test_fit_agrees_with_a_directly_measured_sweep() -> None:
    torch.set_num_threads(1)
    task, target = _task()
    points = steps_by_batch(_sweep(task, target), target)
    assert [p.batch_size for p in points] == BATCHES and not any(p.censored for p in points)
    steps = np.array([p.steps for p in points])
    batch = np.array(BATCHES, dtype=float)
    assert steps[0] / steps[-1] > 10 and np.all(steps[1:] <= 1.15 * steps[:-1])  # S(B) falls, within noise

    fit = fit_critical_batch(points)
    assert fit.residual_rms < 0.2 and fit.edge == "inside"

    s_min, e_min = steps.min(), (batch * steps).min()  # direct, each from its own end of the sweep
    direct = e_min / s_min
    assert direct / 1.5 < fit.b_crit < direct * 1.5
    log_s, log_b = np.log(steps), np.log(batch)  # the knee S(B) = 2 S_min, interpolated log-log
    i = int(np.argmax(steps <= 2 * s_min))
    frac = (log_s[i - 1] - math.log(2 * s_min)) / (log_s[i - 1] - log_s[i])
    knee = math.exp(log_b[i - 1] + frac * (log_b[i] - log_b[i - 1]))
    assert knee / 2 < fit.b_crit < knee * 2
    assert fit.s_min == pytest.approx(s_min, rel=0.5) and fit.e_min == pytest.approx(e_min, rel=0.5)
    # best learning rates follow the rule: grow with B below B_crit, level off above
    lrs = {p.batch_size: p.lr or math.nan for p in points}
    assert lrs[2] < lrs[16] < lrs[128] and lrs[512] <= 2 * lrs[128]
