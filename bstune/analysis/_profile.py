"""The numerics of the critical-batch fit (:mod:`bstune.analysis._critical`): the residual sum of
squares of ln S(B) = ln S_min + ln(1 + B_crit/B), profiled over one parameter, and where a profile
crosses the interval's level (Bates & Watts 1988, §6.1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "GRID",
    "SPAN",
    "FloatArray",
    "crossing",
    "lazy_scipy",
    "log1p_ratio",
    "profile_rss",
    "rss_at",
    "s_min_interval",
]

FloatArray = NDArray[np.float64]

SPAN = math.log(1e4)  # the search over ln B_crit reaches this far beyond ln B of the data
GRID = 801  # grid points over that range: ~0.03 in ln B_crit apart before refinement


def lazy_scipy() -> Any:
    """SciPy with its ``stats`` and ``optimize`` loaded, when a fit first needs them (they take a second
    or more to import, which a process that never fits should not pay)."""
    import scipy.optimize
    import scipy.stats

    return scipy


def log1p_ratio(log_b: FloatArray | float, x: FloatArray) -> FloatArray:
    """ln(1 + B_crit/B) for ln B_crit (scalar or (G,)) against x = ln B (n,): shape (n,) or (G, n)."""
    return np.logaddexp(0.0, np.subtract.outer(log_b, x))


def profile_rss(log_b: FloatArray | float, x: FloatArray, y: FloatArray) -> FloatArray:
    """min over a of Σ (y − a − ln(1 + B_crit/B))²: the centred residuals' sum of squares."""
    r = y - log1p_ratio(log_b, x)
    return np.asarray(((r - r.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1), dtype=np.float64)


def rss_at(log_s: float, x: FloatArray, y: FloatArray, log_b_hi: float) -> float:
    """Profile over ln B_crit for fixed a = ln S_min: min over c of Σ (y − a − ln(1 + e^c/B))²."""
    grid = np.linspace(float(x.min()) - SPAN, log_b_hi, GRID // 4)  # coarser: Brent refines below
    rss = (((y - log_s) - log1p_ratio(grid, x)) ** 2).sum(axis=-1)
    i = int(np.argmin(rss))
    best = min(float(rss[i]), float(((y - log_s) ** 2).sum()))  # c → −∞: the constant model
    if 0 < i < len(grid) - 1:
        res = lazy_scipy().optimize.minimize_scalar(
            lambda c: float((((y - log_s) - log1p_ratio(c, x)) ** 2).sum()),
            bounds=(grid[i - 1], grid[i + 1]),
            method="bounded",
            options={"xatol": 1e-10},
        )
        best = min(best, float(res.fun))
    return best


def crossing(fun: Callable[[float], float], start: float, sign: float, level: float, limit: float) -> float | None:
    """First point past ``start`` (moving by ``sign``) where fun rises above level; None if not before limit."""
    prev, step = start, 0.05
    if fun(start) >= level:  # only from rounding: the optimum itself sits on the boundary
        return start
    while sign * (limit - prev) > 0:
        nxt = prev + sign * step
        if sign * (nxt - limit) > 0:
            nxt = limit
        if fun(nxt) > level:
            lo, hi = sorted((prev, nxt))
            return float(lazy_scipy().optimize.brentq(lambda z: fun(z) - level, lo, hi, xtol=1e-9))
        prev, step = nxt, step * 1.5
    return None


def s_min_interval(x: FloatArray, y: FloatArray, s_min: float, level: float) -> tuple[float, float]:
    """Profile interval of S_min: the range of ln S_min whose profile RSS stays below level."""
    z = y + x
    rss_inf = float(((z - z.mean()) ** 2).sum())  # ln S_min → −∞ with B_crit → ∞: the 1/B model
    hi_c = float(x.max()) + SPAN
    # at B_crit → ∞ (s_min = 0) start where the grid's largest B_crit puts S_min
    start = math.log(s_min) if s_min > 0 else float(z.mean()) - hi_c

    def rss_a(a: float) -> float:
        return rss_at(a, x, y, hi_c + SPAN + max(0.0, start - a))  # lower S_min needs larger B_crit

    up = crossing(rss_a, start, +1.0, level, start + 50.0)
    down = None if rss_inf <= level else crossing(rss_a, start, -1.0, level, start - 50.0)
    return (0.0 if down is None else math.exp(down), math.inf if up is None else math.exp(up))
