"""The two-batch estimator is exactly unbiased: checked by enumerating every possible batch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bstune.errors import ConfigError
from bstune.noise import two_batch_estimate


def _population(d: int = 7, dim: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(d, dim)) + np.array([0.5, -0.2, 0.1])  # per-example "gradients"


def _truth(g: np.ndarray) -> tuple[float, float]:
    mean = g.mean(0)
    return float(mean @ mean), float(((g - mean) ** 2).sum(1).mean())  # |G|², tr(Σ) with Σ normalised by D


def test_per_example_is_unbiased_over_all_batches() -> None:
    g = _population()
    grad_sq_true, trace_true = _truth(g)
    estimates = []
    for batch in itertools.combinations(range(len(g)), 3):
        rows = g[list(batch)]
        small = float((rows**2).sum(1).mean())  # mean |g_i|²
        big = float(rows.mean(0) @ rows.mean(0))  # |mean g_i|²
        estimates.append(two_batch_estimate(small, 1, big, 3, population=len(g)))
    grad_sq, trace = np.mean(estimates, axis=0)
    assert grad_sq == pytest.approx(grad_sq_true, rel=1e-12)
    assert trace == pytest.approx(trace_true, rel=1e-12)


def test_micro_batch_is_unbiased_over_all_batches_and_splits() -> None:
    g = _population(d=8)
    grad_sq_true, trace_true = _truth(g)
    estimates = []
    for batch in itertools.permutations(range(len(g)), 4):  # ordered: first two form micro-batch 1
        a, b = g[list(batch[:2])].mean(0), g[list(batch[2:])].mean(0)
        small = (a @ a + b @ b) / 2
        big = ((a + b) / 2) @ ((a + b) / 2)
        estimates.append(two_batch_estimate(small, 2, big, 4, population=len(g)))
    grad_sq, trace = np.mean(estimates, axis=0)
    assert grad_sq == pytest.approx(grad_sq_true, rel=1e-12)
    assert trace == pytest.approx(trace_true, rel=1e-12)


def test_unequal_micro_batches_use_the_harmonic_mean_size() -> None:
    g = _population(d=7)
    grad_sq_true, trace_true = _truth(g)
    estimates = []
    for batch in itertools.permutations(range(len(g)), 5):  # micro-batches of 2 and 3
        a, b = g[list(batch[:2])].mean(0), g[list(batch[2:])].mean(0)
        small = (a @ a + b @ b) / 2
        full = g[list(batch)].mean(0)
        harmonic = 2 / (1 / 2 + 1 / 3)
        estimates.append(two_batch_estimate(small, harmonic, full @ full, 5, population=len(g)))
    grad_sq, trace = np.mean(estimates, axis=0)
    assert grad_sq == pytest.approx(grad_sq_true, rel=1e-12)
    assert trace == pytest.approx(trace_true, rel=1e-12)


def test_without_the_finite_population_correction_the_estimate_is_biased() -> None:
    g = _population()
    grad_sq_true, _ = _truth(g)
    estimates = []
    for batch in itertools.combinations(range(len(g)), 3):
        rows = g[list(batch)]
        estimates.append(two_batch_estimate((rows**2).sum(1).mean(), 1, rows.mean(0) @ rows.mean(0), 3, None))
    grad_sq, _ = np.mean(estimates, axis=0)
    assert not math.isclose(grad_sq, grad_sq_true, rel_tol=1e-3)


def test_full_dataset_batch_gives_the_exact_gradient_norm() -> None:
    g = _population()
    grad_sq_true, trace_true = _truth(g)
    small = float((g**2).sum(1).mean())
    grad_sq, trace = two_batch_estimate(small, 1, grad_sq_true, len(g), population=len(g))
    assert float(grad_sq) == pytest.approx(grad_sq_true, rel=1e-12)
    assert float(trace) == pytest.approx(trace_true, rel=1e-12)


def test_per_step_estimates_may_be_negative_and_are_not_clamped() -> None:
    grad_sq, trace = two_batch_estimate(1.0, 1, 0.4, 2)  # |G_big|² < |G_small|²/B: negative |G|² estimate
    assert float(grad_sq) < 0
    assert float(trace) > 0


@pytest.mark.parametrize(
    ("small_size", "big_size", "population"), [(4, 4, None), (8, 4, None), (0, 4, None), (2, 16, 8)]
)
def test_degenerate_sizes_are_rejected(small_size: float, big_size: float, population: int | None) -> None:
    with pytest.raises(ConfigError, match=r"two_batch_estimate: (big_size|small_size)") as info:
        two_batch_estimate(1.0, small_size, 1.0, big_size, population)
    assert isinstance(info.value, ValueError)  # caught as before
