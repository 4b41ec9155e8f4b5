"""The curvature-aware noise scale B_noise = tr(HΣ)/(GᵀHG) against its exact value on linear regression.

For y ≈ w·x + b with the mean squared error, the loss is quadratic: H = 2·mean_i [x_i;1][x_i;1]ᵀ
at every parameter, and the per-example gradients g_i = 2 r_i [x_i;1] (r_i the residual) give G
and Σ (normalised by D) over the whole training set exactly. With a non-isotropic input
covariance and the parameters off the optimum along a middle direction, B_noise is ~2.6x B_simple.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bstune
from bstune.errors import ConfigError, EstimationError
from bstune.noise import CURVATURE_MAX_PARAMS, curvature_skip_reason, measure_curvature_noise_scale

Exact = dict[str, float]


def _regression(
    scales: list[float], delta: list[float], sigma: float, n: int = 4096, seed: int = 0
) -> tuple[bstune.Task, Exact]:
    """A linear-regression task with its model at w* + delta, and the exact values there (numpy, float64):
    b_noise, b_simple, trace_h_sigma = tr(HΣ), g_h_g = GᵀHG."""
    gen = torch.Generator().manual_seed(seed)
    d = len(scales)
    x = torch.randn(n, d, generator=gen) * torch.tensor(scales)
    w_star = torch.ones(d)
    y = x @ w_star + sigma * torch.randn(n, generator=gen)
    w = w_star + torch.tensor(delta)

    def model() -> torch.nn.Module:
        lin = torch.nn.Linear(d, 1)
        with torch.no_grad():
            lin.weight.copy_(w[None])
            lin.bias.zero_()
        return lin

    task = bstune.Task(model=model, train_data=(x, y[:, None]), val_data=(x[:8], y[:8, None]), loss=torch.nn.MSELoss())
    xs = np.hstack([x.double().numpy(), np.ones((n, 1))])
    residual = xs[:, :d] @ w.double().numpy() - y.double().numpy()
    g = 2 * residual[:, None] * xs  # every per-example gradient
    big_g, sigma_mat, hessian = g.mean(0), np.cov(g.T, ddof=0), 2 * xs.T @ xs / n
    trace, signal = float(np.trace(hessian @ sigma_mat)), float(big_g @ hessian @ big_g)
    exact = {"b_noise": trace / signal, "b_simple": float(np.trace(sigma_mat) / (big_g @ big_g))}
    return task, exact | {"trace_h_sigma": trace, "g_h_g": signal}


@pytest.fixture(scope="module")
def anisotropic() -> tuple[bstune.Task, Exact]:
    # input variances 4, 1, 1/4; off the optimum along the middle one: B_noise ~ 19, B_simple ~ 7.4
    return _regression([2.0, 1.0, 0.5], [0.0, 1.0, 0.0], sigma=0.1)


def test_the_exact_values_differ_clearly(anisotropic: tuple[bstune.Task, Exact]) -> None:
    _, exact = anisotropic
    assert exact["b_noise"] > 2 * exact["b_simple"]  # what makes the tests below able to tell H from the identity


def test_estimate_covers_the_exact_b_noise_and_not_b_simple(anisotropic: tuple[bstune.Task, Exact]) -> None:
    task, exact = anisotropic
    b_noise, b_simple = exact["b_noise"], exact["b_simple"]
    est = measure_curvature_noise_scale(task, n_examples=256, seed=0)
    assert est.resolved
    assert est.ci[0] <= b_noise <= est.ci[1]
    assert est.b_noise == pytest.approx(b_noise, rel=0.3)
    assert not est.ci[0] <= b_simple <= est.ci[1]  # dropping H would land here
    assert est.b_simple_ci[0] <= b_simple <= est.b_simple_ci[1]  # the same examples' B_simple, beside it
    assert est.n_examples == 256 and est.n_hessian_examples == 256 and est.population == 4096


def test_interval_coverage_over_seeds(anisotropic: tuple[bstune.Task, Exact]) -> None:
    """90% intervals: 30 independent subsamples (fixed seeds, so deterministic); P(≤ 23 of 30) ≈ 3% at 90%."""
    task, exact = anisotropic
    b_noise = exact["b_noise"]
    covered = [
        (lambda e: e.ci[0] <= b_noise <= e.ci[1])(measure_curvature_noise_scale(task, n_examples=128, seed=s))
        for s in range(30)
    ]
    assert sum(covered) >= 24


def test_both_estimates_are_unbiased(anisotropic: tuple[bstune.Task, Exact]) -> None:
    """Small subsamples, where GᵀHG without its bias correction (ḡᵀHḡ) would be ~60% too large."""
    task, exact = anisotropic
    ests = [measure_curvature_noise_scale(task, n_examples=32, seed=s) for s in range(60)]
    signal = np.array([e.g_h_g for e in ests])
    trace = np.array([e.trace_h_sigma for e in ests])
    se_signal = signal.std(ddof=1) / math.sqrt(len(ests))
    se_trace = trace.std(ddof=1) / math.sqrt(len(ests))
    assert exact["trace_h_sigma"] / 32 > 4 * se_signal  # the bias ḡᵀHḡ carries: large enough to be seen here
    assert abs(signal.mean() - exact["g_h_g"]) < 3 * se_signal
    assert abs(trace.mean() - exact["trace_h_sigma"]) < 3 * se_trace


def test_isotropic_hessian_gives_b_simple() -> None:
    """H ∝ I (white inputs): B_noise = B_simple, and the estimate of one is the other's."""
    task, exact = _regression([1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 0.5, 0.0], sigma=0.5)
    b_noise = exact["b_noise"]
    assert b_noise == pytest.approx(exact["b_simple"], rel=0.05)
    est = measure_curvature_noise_scale(task, n_examples=256, seed=1)
    assert est.ci[0] <= b_noise <= est.ci[1]
    assert est.b_noise == pytest.approx(est.b_simple, rel=0.15)


def test_unresolved_signal_is_an_open_interval_never_negative() -> None:
    """At the least-squares optimum G = 0: GᵀHG is not resolved above zero, so the interval is open above."""
    task, _ = _regression([2.0, 1.0, 0.5], [0.0, 0.0, 0.0], sigma=1.0)
    x, y = task.train_dataset.tensors  # type: ignore[attr-defined]
    xs = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.lstsq(xs, y.double()).solution[:, 0].float()

    def at_optimum() -> torch.nn.Module:
        lin = torch.nn.Linear(3, 1)
        with torch.no_grad():
            lin.weight.copy_(sol[None, :3])
            lin.bias.copy_(sol[3:])
        return lin

    task.model = at_optimum
    for seed in range(5):
        est = measure_curvature_noise_scale(task, n_examples=64, seed=seed)
        assert not est.resolved and est.ci[1] == math.inf
        assert est.b_noise >= 0 and est.ci[0] >= 0
        assert est.to_dict()["ci"][1] is None


def test_expensive_or_batchnorm_models_are_refused_with_the_reason(anisotropic: tuple[bstune.Task, Exact]) -> None:
    task, _ = anisotropic
    bn = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    assert "BatchNorm" in (curvature_skip_reason(bn) or "")
    with pytest.raises(ConfigError, match="BatchNorm"):
        measure_curvature_noise_scale(task, bn)
    assert curvature_skip_reason(task.make_model(), max_params=3) is not None
    with pytest.raises(ConfigError, match="4 trainable parameters, more than the 3"):
        measure_curvature_noise_scale(task, max_params=3)
    assert CURVATURE_MAX_PARAMS >= 20_000  # the benchmark problems' models (char_lm: 19,902) qualify


def test_a_time_limit_stops_it_after_a_few_hvps(anisotropic: tuple[bstune.Task, Exact]) -> None:
    task, _ = anisotropic
    with pytest.raises(EstimationError, match=r"would take about \d+s, more than the 0s allowed"):
        measure_curvature_noise_scale(task, n_examples=64, max_seconds=1e-9)
    assert measure_curvature_noise_scale(task, n_examples=64, max_seconds=600).n_examples == 64
