"""The noise-scale estimate and its confidence interval.

B_simple = tr(Σ)/|G|² is a ratio of two means. Given n independent per-batch
estimates (T_k, G_k) of tr(Σ) and |G|², the point estimate is mean(T)/mean(G), and
the default interval is Fieller's (Fieller 1954): the set of R for which
mean(T) − R·mean(G) is not significantly different from zero at the chosen level,

    (T̄ − R Ḡ)² ≤ t²/n · (s_TT − 2R s_TG + R² s_GG),

a quadratic inequality in R. Unlike the delta method or the jackknife it follows the
skew of a ratio whose denominator is noisy, and when Ḡ itself is not distinguishable
from zero the honest answer is an unbounded interval, which we return (upper = inf).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from bstune.errors import ConfigError, EstimationError

__all__ = ["CIMethod", "NoiseScaleEstimate", "fieller_interval", "ratio_interval", "summarize"]

CIMethod = Literal["fieller", "jackknife"]


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """A measured gradient noise scale with confidence intervals.

    Attributes:
        b_simple: tr(Σ)/|G|², the simple noise scale (McCandlish et al. 2018, eq. 2.8).
        ci: confidence interval for ``b_simple`` at level ``confidence``; the upper
            end is ``inf`` when |G|² is not resolved from zero.
        trace_sigma: tr(Σ), trace of the per-example gradient covariance.
        grad_sq: |G|², squared norm of the true gradient.
        trace_sigma_ci, grad_sq_ci: t-intervals for those two means.
        n_batches: independent batches the estimate averages.
        n_examples: examples whose gradients were computed.
        batch_size, micro_batch_size: the two batch sizes of the estimator
            (micro_batch_size 1 for per-example gradients).
        method: ``"per_example"``, ``"micro_batch"``, ``"exact"`` or ``"training"``.
        confidence: level of the intervals (0.9 means a 90% interval).
        population: dataset size used for the finite-population correction.
        preconditioned: gradients were divided by √v̂ of an Adam-family optimizer.

    Example:
        >>> est = summarize([1.0, 1.2, 0.9, 1.1], [50.0, 61.0, 47.0, 55.0], batch_size=64,
        ...                 micro_batch_size=1, method="per_example")
        >>> round(est.b_simple, 1), est.ci[0] < est.b_simple < est.ci[1]
        (50.7, True)
    """

    b_simple: float
    ci: tuple[float, float]
    trace_sigma: float
    grad_sq: float
    trace_sigma_ci: tuple[float, float]
    grad_sq_ci: tuple[float, float]
    n_batches: int
    n_examples: int
    batch_size: int
    micro_batch_size: int
    method: str
    confidence: float = 0.9
    population: int | None = None
    preconditioned: bool = False
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def rel_half_width(self) -> float:
        """Half the interval's width relative to the estimate (inf if unbounded)."""
        lo, hi = self.ci
        if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(self.b_simple)) or self.b_simple <= 0:
            return math.inf
        return (hi - lo) / (2.0 * self.b_simple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite bounds become ``None``)."""
        out = asdict(self)
        for key in ("ci", "trace_sigma_ci", "grad_sq_ci"):
            out[key] = [v if math.isfinite(v) else None for v in out[key]]
        out["b_simple"] = self.b_simple if math.isfinite(self.b_simple) else None
        return out

    def __str__(self) -> str:
        lo, hi = self.ci
        return (
            f"B_simple = {self.b_simple:.4g}  ({self.confidence:.0%} CI {lo:.4g} .. {hi:.4g}; "
            f"{self.method}, {self.n_batches} batches, {self.n_examples} examples)"
        )


@functools.lru_cache(maxsize=256)
def _t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile (cached: scipy's ppf costs ~0.1 ms, and a trainer closing a
    noise window at every evaluation asks for the same few). SciPy's stats take a second or more to
    import: a process that never closes an interval (a trial without noise tracking) does not load them."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return (-math.inf, math.inf)
    half = float(_t_quantile(confidence, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return (mean - half, mean + half)


def ratio_interval(
    trace: ArrayLike, grad_sq: ArrayLike, confidence: float = 0.9, method: CIMethod = "fieller"
) -> tuple[float, tuple[float, float]]:
    """Point estimate mean(trace)/mean(grad_sq) and its confidence interval.

    Example:
        >>> r, (lo, hi) = ratio_interval([10, 12, 9, 11, 10], [1.0, 1.1, 0.9, 1.0, 1.0])
        >>> round(r, 2), lo < r < hi
        (10.4, True)
    """
    if method not in ("fieller", "jackknife"):  # checked first: a zero signal returns before either is used
        raise ConfigError(
            f"unknown interval method {method!r}; use 'fieller' or 'jackknife'", source="ratio_interval", field="method"
        )
    t_arr, g_arr = np.asarray(trace, dtype=np.float64), np.asarray(grad_sq, dtype=np.float64)
    n = len(t_arr)
    if n != len(g_arr) or n < 2:
        raise EstimationError(f"need at least 2 paired batch estimates, got {n} and {len(g_arr)}")
    if not (np.isfinite(t_arr).all() and np.isfinite(g_arr).all()):
        raise EstimationError("non-finite per-batch estimate (overflowing gradients?)")
    t_bar, g_bar = float(t_arr.mean()), float(g_arr.mean())
    # tr(Σ)'s estimate is unbiased, so it can fall below 0 where the noise is not resolved: B_simple is then 0, as
    # its interval's lower end is (a noise scale is never negative)
    raw = t_bar / g_bar if g_bar > 0 else math.inf
    ratio = max(raw, 0.0)
    tq = _t_quantile(confidence, n - 1)
    if g_bar <= 0:
        return ratio, (0.0, math.inf)  # no signal resolved: any B_simple above 0 is consistent
    if method == "jackknife":
        loo = (n * t_bar - t_arr) / (n * g_bar - g_arr)  # leave-one-batch-out ratios
        if not np.isfinite(loo).all() or (n * g_bar - g_arr <= 0).any():
            return ratio, (0.0, math.inf)
        pseudo = n * raw - (n - 1) * loo
        center = float(pseudo.mean())
        half = tq * float(pseudo.std(ddof=1)) / math.sqrt(n)
        return ratio, (max(center - half, 0.0), max(center + half, 0.0))  # a noise scale is never negative
    cov = np.cov(np.vstack([t_arr, g_arr]), ddof=1) / n
    return ratio, fieller_interval(t_bar, g_bar, float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1]), tq)


def fieller_interval(
    t_bar: float, g_bar: float, var_t: float, cov_tg: float, var_g: float, quantile: float
) -> tuple[float, float]:
    """Fieller's interval for t_bar/g_bar from the (co)variances of the two means themselves.

    The set of R with (T̄ − R Ḡ)² ≤ quantile² · (var_t − 2R cov_tg + R² var_g); what
    :func:`ratio_interval` computes from paired samples, for estimators whose variance
    comes from elsewhere (a U-statistic's jackknife, several independent sources summed).
    ``(0, inf)`` or ``(lower, inf)`` when Ḡ is not resolved above zero; never below 0.

    Example:
        >>> fieller_interval(1.0, 1.0, var_t=4.0, cov_tg=0.0, var_g=0.01, quantile=1.645)[0]  # T̄ within noise of 0
        0.0
    """
    if g_bar <= 0:
        return (0.0, math.inf)
    q = quantile * quantile
    a = g_bar * g_bar - q * var_g
    b = t_bar * g_bar - q * cov_tg
    c = t_bar * t_bar - q * var_t
    disc = b * b - a * c
    if a > 0 and disc >= 0:  # bounded; cut at 0 where T̄ is not resolved above zero (a noise scale is never negative)
        root = math.sqrt(disc)
        return (max((b - root) / a, 0.0), max((b + root) / a, 0.0))
    # Ḡ is not significantly above zero: the confidence set is unbounded.
    if disc > 0 and a < 0:
        r1, r2 = sorted(((b - math.sqrt(disc)) / a, (b + math.sqrt(disc)) / a))
        lower = 0.0 if r1 > 0 else max(r2, 0.0)
    else:
        lower = 0.0
    return (lower, math.inf)


def summarize(
    grad_sq: ArrayLike,
    trace_sigma: ArrayLike,
    *,
    batch_size: int,
    micro_batch_size: int,
    method: str,
    confidence: float = 0.9,
    population: int | None = None,
    n_examples: int | None = None,
    preconditioned: bool = False,
    ci_method: CIMethod = "fieller",
) -> NoiseScaleEstimate:
    """Combine per-batch estimates into a :class:`NoiseScaleEstimate`."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"must be in (0, 1), got {confidence}", source="summarize", field="confidence")
    g_arr, t_arr = np.asarray(grad_sq, dtype=np.float64), np.asarray(trace_sigma, dtype=np.float64)
    ratio, ci = ratio_interval(t_arr, g_arr, confidence, ci_method)
    return NoiseScaleEstimate(
        b_simple=ratio,
        ci=ci,
        trace_sigma=float(t_arr.mean()),
        grad_sq=float(g_arr.mean()),
        trace_sigma_ci=_t_interval(t_arr, confidence),
        grad_sq_ci=_t_interval(g_arr, confidence),
        n_batches=len(g_arr),
        n_examples=n_examples if n_examples is not None else len(g_arr) * batch_size,
        batch_size=batch_size,
        micro_batch_size=micro_batch_size,
        method=method,
        confidence=confidence,
        population=population,
        preconditioned=preconditioned,
    )
