"""Unbiased estimates of |G|² and tr(Σ) from gradient norms at two batch sizes.

McCandlish et al. 2018, App. A.1. For a batch of size B drawn from the data,
E|G_B|² = |G|² + tr(Σ)/B. Two batch sizes give two equations in the two unknowns.

Finite population. When each batch is drawn *without replacement* from a dataset of
D examples, the variance of the batch mean shrinks by (D − B)/(D − 1), so

    E|G_b|² = |G|² + c·(1/b − 1/D),      c = D/(D − 1) · tr(Σ)

with Σ the population covariance of the D per-example gradients (normalised by D,
the noise SGD sees when it samples with replacement). Writing v(b) = 1/b − 1/D:

    c      ≈ (|G_small|² − |G_big|²) / (v(b_small) − v(b_big))
    |G|²   ≈ (v(b_small)·|G_big|² − v(b_big)·|G_small|²) / (v(b_small) − v(b_big))

Both are unbiased when |G_small|² is the mean over the micro-batches of one big
batch (each micro-batch is itself a uniform draw of b_small examples). Micro-batches
of unequal sizes b_j work too, with b_small their harmonic mean: then
v(b_small) = mean_j v(b_j), which is what the mean of |G_j|² needs. With
b_small = 1 the micro-batches are single examples and this is the per-example
(U-statistic) estimator. With D = ∞ it reduces to the paper's formulas.

Per-batch estimates are noisy and can be negative. They are averaged as they are;
the ratio B_simple = tr(Σ)/|G|² is taken only after averaging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bstune.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["per_example_estimate", "two_batch_estimate"]


def _v(b: float, population: int | None) -> float:
    return 1.0 / b - (0.0 if population is None else 1.0 / population)


def two_batch_estimate(
    small_sq_norm: ArrayLike,
    small_size: float,
    big_sq_norm: ArrayLike,
    big_size: float,
    population: int | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-measurement unbiased estimates ``(grad_sq, trace_sigma)``.

    Args:
        small_sq_norm: mean of |G_j|² over the equal-size micro-batches of each big
            batch (one value per measurement, or an array of them).
        small_size: micro-batch size b_small (1 for per-example gradients); the
            harmonic mean of the sizes when they differ.
        big_sq_norm: |G_big|² of the big batch (the mean of the micro-batch gradients).
        big_size: b_big, the number of examples in the big batch.
        population: D, the dataset size when batches are drawn without replacement
            from it; ``None`` for an infinite stream (no correction).

    Returns:
        ``(grad_sq, trace_sigma)``: estimates of |G|² and tr(Σ), Σ normalised by D.

    Example:
        >>> g, t = two_batch_estimate(6.0, 1, 3.0, 4)  # E|G_b|² = |G|² + tr(Σ)/b = 2 + 4/b
        >>> float(g), float(t)
        (2.0, 4.0)
    """
    src = "two_batch_estimate"
    if not big_size > small_size:
        raise ConfigError(
            f"the big batch must hold more examples than a micro-batch, got {small_size=} and {big_size=}",
            source=src,
            field="big_size",
        )
    if small_size < 1:
        raise ConfigError(f"must be >= 1, got {small_size}", source=src, field="small_size")
    if population is not None and big_size > population:
        raise ConfigError(f"big_size ({big_size}) exceeds the population ({population})", source=src, field="big_size")
    small = np.asarray(small_sq_norm, dtype=np.float64)
    big = np.asarray(big_sq_norm, dtype=np.float64)
    v_small, v_big = _v(small_size, population), _v(big_size, population)
    denom = v_small - v_big
    c = (small - big) / denom
    grad_sq = (v_small * big - v_big * small) / denom
    shrink = 1.0 if population is None else (population - 1) / population
    trace_sigma = c * shrink
    return grad_sq, trace_sigma


def per_example_estimate(
    sq_norms: Tensor, batch_grad_sq: float, population: int | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unbiased ``(grad_sq, trace_sigma)`` of one step from :meth:`~bstune.noise.PerExampleNorms.sq_norms`.

    With g_i := B·c_i and G_B := Σ_i c_i (``batch_grad_sq`` = |G_B|², e.g.
    :attr:`~bstune.noise.PerExampleNorms.batch_grad_sq`), this is the two-batch estimator at
    b_small = 1 (:func:`two_batch_estimate`), the finite-population
    correction included when batches are drawn without replacement from ``population``
    examples. For a mean-reduced loss the results are |G|² and tr(Σ) of the per-example
    gradients; for a sum-reduced loss both are B² times larger, and their ratio
    B_simple is the same.

    Example:
        >>> import torch
        >>> c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]) / 4  # c_i, mean loss
        >>> g, t = per_example_estimate(c.pow(2).sum(1), float(c.sum(0).pow(2).sum()), None)
        >>> round(float(g), 4), round(float(t), 4)
        (1.0, 1.0)
    """
    batch = sq_norms.shape[0]
    mean_per_example_sq = float(sq_norms.double().mean()) * batch * batch  # mean_i |g_i|²
    return two_batch_estimate(mean_per_example_sq, 1, batch_grad_sq, batch, population)
