"""Tracking B_simple during training from the micro-batch gradients training already computes.

With gradient accumulation (or data parallelism) every optimizer step holds the
gradients of k micro-batches and of their mean, which is exactly what the two-batch
estimator needs (McCandlish et al. 2018, App. A.1): the only extra work is one norm
per micro-batch. The per-step estimates of |G|² and tr(Σ) are pooled over a window
of steps (the trainer closes a window at each evaluation milestone), ratio taken last.
Parameters move within a window, so its interval describes the window's average,
not one point; the model drifts slowly compared with a window of a few hundred steps.

Beside B_simple the tracker records the SGD temperature T = η/(B(1−m)) of the
window, since B_simple ∝ 1/T near a minimum (McCandlish et al. 2018, §2.2).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bstune.errors import EstimationError
from bstune.noise._estimate import summarize
from bstune.noise._two_batch import two_batch_estimate
from bstune.optim import temperature

__all__ = ["SEED_WINDOW", "NoiseTracker", "TrajectoryPoint", "seed_spread_interval"]


@dataclass(frozen=True)
class TrajectoryPoint:
    """B_simple over one window of training steps, ending at ``samples``."""

    samples: int
    step: int
    b_simple: float
    ci: tuple[float, float]
    grad_sq: float
    trace_sigma: float
    n_steps: int
    lr: float  # mean learning rate over the window
    temperature: float  # η/(B(1−m)) with the window's mean η

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = [v if math.isfinite(v) else None for v in self.ci]
        out["b_simple"] = self.b_simple if math.isfinite(self.b_simple) else None
        return out


class NoiseTracker:
    """Pools per-step two-batch estimates into a B_simple trajectory.

    Args:
        batch_size: examples per optimizer step (B).
        population: training-set size (batches are drawn without replacement).
        momentum: SGD momentum, for the temperature.
        confidence: level of each window's interval.

    Example:
        >>> tracker = NoiseTracker(batch_size=4, population=None)
        >>> for small, big in [(5.0, 3.0), (5.2, 2.9), (4.9, 3.1)]:
        ...     tracker.update(small, small_size=1, big_sq_norm=big, lr=0.1)
        >>> point = tracker.flush(step=3, samples=12)
        >>> round(point.b_simple, 2), point.n_steps
        (1.17, 3)
    """

    def __init__(self, batch_size: int, population: int | None, momentum: float = 0.0, confidence: float = 0.9) -> None:
        self.batch_size = batch_size
        self.population = population
        self.momentum = momentum
        self.confidence = confidence
        self.trajectory: list[TrajectoryPoint] = []
        self._grad_sq: list[float] = []
        self._trace: list[float] = []
        self._lrs: list[float] = []
        self.skipped_steps = 0

    def update(self, small_sq_norm: float, small_size: float, big_sq_norm: float, lr: float) -> None:
        """Add one step: mean |G_j|² over its micro-batches, and |G|² of their mean."""
        if not (math.isfinite(small_sq_norm) and math.isfinite(big_sq_norm)):
            self.skipped_steps += 1  # e.g. an AMP step with overflowing gradients, skipped by the scaler
            return
        g, t = two_batch_estimate(small_sq_norm, small_size, big_sq_norm, self.batch_size, self.population)
        self._grad_sq.append(float(g))
        self._trace.append(float(t))
        self._lrs.append(lr)

    def flush(self, step: int, samples: int) -> TrajectoryPoint | None:
        """Close the current window; ``None`` if it holds fewer than two measured steps."""
        if len(self._grad_sq) < 2:
            return None
        try:
            est = summarize(
                self._grad_sq,
                self._trace,
                batch_size=self.batch_size,
                micro_batch_size=1,
                method="training",
                confidence=self.confidence,
                population=self.population,
            )
        except EstimationError:
            return None
        finally:
            lr = sum(self._lrs) / len(self._lrs) if self._lrs else 0.0
            n = len(self._grad_sq)
            self._grad_sq, self._trace, self._lrs = [], [], []
        point = TrajectoryPoint(
            samples=samples,
            step=step,
            b_simple=est.b_simple,
            ci=est.ci,
            grad_sq=est.grad_sq,
            trace_sigma=est.trace_sigma,
            n_steps=n,
            lr=lr,
            temperature=temperature(lr, self.batch_size, self.momentum),
        )
        self.trajectory.append(point)
        return point


SEED_WINDOW = 2.0
"""Trajectory points within this factor of the measurement's sample count (either side) enter
:func:`seed_spread_interval`'s spread."""


def seed_spread_interval(
    b_simple: float,
    ci: tuple[float, float],
    points: Sequence[tuple[int, float | None, Sequence[float | None] | None]],
    at_samples: int,
    confidence: float = 0.9,
    window: float = SEED_WINDOW,
    min_points: int = 3,
    subtract_sampling: bool = False,
) -> tuple[tuple[float, float], float | None]:
    """``ci`` (a sampling interval at one point of parameter space) widened by the variation a
    second seed would see, and the log-scale spread used (``None``: too few points, ``ci`` as it was).

    A measurement at fixed parameters is precise about those parameters only: another seed
    (another initialisation and data order) reaches other parameters, whose B_simple differs
    by more than the sampling interval says. The variation of the same run's trajectory near
    the measurement stands in for that. ``points`` are the trajectory's ``(samples, b_simple,
    ci)``; those within a factor ``window`` of ``at_samples`` count, or the ``min_points``
    nearest to it (in log samples) where fewer are that near (a short run evaluates a few
    times only); at least two. s² is the variance of their log B_simple. A trajectory
    window is short, and its own sampling noise counts as variation too, which errs wide;
    ``subtract_sampling`` takes the mean of the windows' sampling variances (read off their
    intervals, at ``confidence``) out of s², leaving out the windows whose interval is open.
    benchmarks/b_simple_seeds.py measured both: on the benchmark problems most windows are
    unresolved, and the subtracted spread left the intervals nearly as narrow as the
    sampling ones (a second seed's estimate inside 33-43% of them), the raw one 73-97%; so
    the raw spread is the default. Each side's half-width in log space becomes
    √(h² + z²s²), z the normal quantile at ``confidence``; an open side (0 or ``inf``) stays open.

    Example:
        >>> pts = [(1000, 80.0, None), (2000, 100.0, None), (3000, 125.0, None), (9000, 900.0, None)]
        >>> (lo, hi), s = seed_spread_interval(100.0, (90.0, 111.0), pts, at_samples=2000)  # 9000 is too far
        >>> round(s, 3), round(lo), round(hi)
        (0.223, 68, 146)
    """
    if not (math.isfinite(b_simple) and b_simple > 0):
        return ci, None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    usable = []
    for samples, b, point_ci in points:
        if b is None or not math.isfinite(b) or b <= 0:
            continue
        var = 0.0
        if subtract_sampling and point_ci is not None:
            plo, phi = point_ci
            if plo is None or phi is None or not (0 < plo <= phi < math.inf):
                continue  # an open interval: the window did not resolve |G|²
            var = (math.log(phi / plo) / (2 * z)) ** 2
        usable.append((abs(math.log(max(samples, 1) / max(at_samples, 1))), math.log(b), var))
    usable.sort()
    near = [(v, var) for k, (dist, v, var) in enumerate(usable) if dist <= math.log(window) or k < min_points]
    if len(near) < 2:
        return ci, None
    mean = sum(v for v, _ in near) / len(near)
    total = sum((v - mean) ** 2 for v, _ in near) / (len(near) - 1)
    spread = math.sqrt(max(total - sum(var for _, var in near) / len(near), 0.0))
    center = math.log(b_simple)
    lo, hi = ci
    if lo > 0 and math.isfinite(lo):
        lo = math.exp(center - math.hypot(max(center - math.log(lo), 0.0), z * spread))
    if math.isfinite(hi) and hi > 0:
        hi = math.exp(center + math.hypot(max(math.log(hi) - center, 0.0), z * spread))
    return (min(lo, ci[0]), max(hi, ci[1])), spread
