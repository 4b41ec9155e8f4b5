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
from dataclasses import asdict, dataclass
from typing import Any

from bstune.errors import EstimationError
from bstune.noise._estimate import summarize
from bstune.noise._two_batch import two_batch_estimate
from bstune.optim import temperature

__all__ = ["NoiseTracker", "TrajectoryPoint"]


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
