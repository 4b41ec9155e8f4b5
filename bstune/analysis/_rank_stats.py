"""Rank statistics for a handful of trials: Spearman's ρ, partial ρ, Holm's adjustment, exact where few.

A study has a dozen completed trials, often fewer, so p-values come from every ordering of
the data up to :data:`EXACT_N` trials (the t approximation gave p = 0 for 4 trials in perfect
order) and from scipy's t approximation above. Used by the generalization gap's trends
(:mod:`bstune.analysis._gap`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["EXACT_N", "holm", "p_text", "partial", "partial_exact", "spearman"]

FloatArray = NDArray[np.float64]


def p_text(p: float) -> str:
    """``=0.012``, ``<0.001`` or ``=nan``, to follow a "p"."""
    return "=nan" if not math.isfinite(p) else f"={p:.2g}" if p >= 0.001 else "<0.001"


def _stats() -> Any:
    """``scipy.stats``, imported when first needed (it takes a second or more to load)."""
    from scipy import stats

    return stats


EXACT_N = 8  # up to this many trials the p-value counts every ordering (8! = 40,320); above, scipy's t approximation


def spearman(a: Sequence[float], b: Sequence[float], *, with_p: bool = True) -> tuple[float, float]:
    """Spearman's ρ and its two-sided p (NaN unless ``with_p``); exact (by permutations) for small samples,
    where the t approximation gave p = 0 for 4 trials in perfect order (exactly 2/24 = 0.083).

    Example:
        >>> rho, p = spearman([1, 2, 3, 4], [10, 20, 30, 40])
        >>> rho, round(p, 3)
        (1.0, 0.083)
    """
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties and small n: the numbers are still the right ones to report
        res = _stats().spearmanr(a, b)
    rho = float(res.statistic)
    if not with_p:
        return rho, math.nan
    if len(a) > EXACT_N:
        return rho, float(res.pvalue)
    return rho, float(np.mean(np.abs(_orderings_rho(a, b)) >= abs(rho) - 1e-12))


def _orderings_rho(x: Sequence[float], y: Sequence[float]) -> FloatArray:
    """Spearman's ρ of every ordering of ``x`` against ``y`` held fixed (n! values)."""
    rx, ry = _stats().rankdata(x), _stats().rankdata(y)
    orders = np.array(list(itertools.permutations(rx)))
    co, cy = orders - orders.mean(axis=1, keepdims=True), ry - ry.mean()
    out: FloatArray = co @ cy / (np.linalg.norm(co, axis=1) * np.linalg.norm(cy))
    return out


def partial(r_xy: float, r_xz: float, r_yz: float, n: int) -> tuple[float, float]:
    """Partial correlation of x and y given z, and its two-sided p (t with n−3 dof)."""
    denom = (1 - r_xz**2) * (1 - r_yz**2)
    if n < 4 or not all(math.isfinite(r) for r in (r_xy, r_xz, r_yz)) or denom <= 0:
        return math.nan, math.nan
    r = max(-1.0, min(1.0, (r_xy - r_xz * r_yz) / math.sqrt(denom)))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * math.sqrt((n - 3) / (1 - r**2))
    return r, float(2 * _stats().t.sf(abs(t), n - 3))


def partial_exact(x: Sequence[float], y: Sequence[float], z: Sequence[float], r: float, r_yz: float) -> float:
    """The partial Spearman ρ's two-sided p by every ordering of ``x`` against (``y``, ``z``) held together:
    the t approximation gave p = 0 for 4 trials in perfect order."""
    r_xy, r_xz = _orderings_rho(x, y), _orderings_rho(x, z)  # the same orderings, in the same order
    with np.errstate(divide="ignore", invalid="ignore"):
        partial = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    partial = np.nan_to_num(partial, nan=0.0)
    return float(np.mean(np.abs(partial) >= abs(r) - 1e-12))


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``ps`` (each p times the number of those not smaller, kept monotone).

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [1.0] * len(ps)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = running
    return out
