"""The compute-optimal batch size: device time to the target, from S(B) and throughput(B).

With S(B) = S_min (1 + B_crit/B) steps to the target (:mod:`bstune.analysis._critical`)
and a measured throughput(B) in samples/s (the probe's ladder), the device time to
the target on one worker is

    T(B) = S(B) · B / throughput(B) = E(B) / throughput(B).

E(B) grows with B (statistical efficiency falls past B_crit) while throughput rises and
then saturates, so T has a minimum: this is Pollux's goodput (Qiao et al., OSDI'21)
with McCandlish's efficiency E_min/E(B) = B_crit/(B_crit + B) in place of the
B_noise-based one. With N data-parallel workers each step runs B/N examples per
worker, so the wall time is S(B) · (B/N) / throughput(B/N) and the device time is N
times that. Assumed: perfect data-parallel scaling (no communication or
synchronisation cost, identical workers) and a throughput that does not depend on
anything but the per-worker batch.

Intervals. The choice of B depends on S(B) only through B_crit (T(B) ∝ (B + B_crit)/throughput(B)
for one worker), and a larger B_crit never moves it to a smaller B, so its interval is the
choices at the ends of B_crit's interval (an open end: the choice as B_crit → 0 or ∞). The
steps and seconds at the chosen B take the fit's interval of S(B) there
(:meth:`CriticalBatchFit.steps_ci`).

The throughput carries an error of its own: on a shared machine one rung's few timed steps can
make it look faster than its neighbour, and the choice flips between them. Given each measured
batch size's spread (``throughput_spread``: the interquartile range of its per-step rates, about
a 90% interval for the median of the probe's 7 timed steps), the intervals also take the
throughputs at their spreads' ends: for each split of the ladder, the batches below it at their
fastest and those above at their slowest, and the reverse (the choice moves most when the ladder
tilts), each at either end of B_crit's interval. On simulated ladders of 7 timed steps with a
per-step spread of 10-30% (``tests/analysis/test_compute.py``), the choice's interval held the true
optimum 96-97% of the time, against 45-67% without the throughput's error; at 3 timed steps (the
probe's fewest, on a tight budget) a quartile is a rougher bound, and coverage fell to about 80%. The spread of
a rung's steps is not the drift between two runs: on a busy machine a later run may measure
another throughput altogether.

Throughput is interpolated linearly in log B–log throughput between measured batch
sizes and never extrapolated: per-worker batches are searched only inside the measured
range (and inside ``batch_range`` if given). S(B) is the fit's, which *is* extrapolated
past the batch sizes it was fitted on; each choice says so in ``extrapolated``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bstune._validate import check_count
from bstune.analysis._critical import CriticalBatchFit
from bstune.errors import ConfigError

__all__ = ["BatchChoice", "ComputeOptimal", "compute_optimal", "throughput_at"]

FloatArray = NDArray[np.float64]

_MAX_CANDIDATES = 1 << 20  # every integer batch size up to this many; a log grid beyond


def _check_throughput(throughput: Mapping[int, float]) -> tuple[FloatArray, FloatArray]:
    if not throughput:
        raise ConfigError("needs at least one measured batch size", source="compute_optimal", field="throughput")
    items = sorted((int(b), float(v)) for b, v in throughput.items())
    for b, v in items:
        if b <= 0 or not (math.isfinite(v) and v > 0):
            raise ConfigError(
                f"batch sizes and samples/s must be positive and finite, got {b}: {v}",
                source="compute_optimal",
                field="throughput",
            )
    return np.log([b for b, _ in items]), np.log([v for _, v in items])


def _check_spread(
    throughput: Mapping[int, float], spread: Mapping[int, tuple[float, float]]
) -> dict[int, tuple[float, float]]:
    checked: dict[int, tuple[float, float]] = {}
    for b, pair in spread.items():
        lo, hi = (float(v) for v in pair)
        if int(b) not in throughput or not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ConfigError(
                f"must map measured batch sizes to (low, high) samples/s with 0 < low <= high, got {b}: {pair}",
                source="compute_optimal",
                field="throughput_spread",
            )
        checked[int(b)] = (lo, hi)
    return checked


def throughput_at(throughput: Mapping[int, float], batch_size: float | FloatArray) -> FloatArray:
    """Samples/s at ``batch_size``: log-log interpolation, held at the nearest measured end outside.

    Example:
        >>> round(float(throughput_at({16: 100.0, 64: 400.0}, 32.0)), 9)  # a power law between points
        200.0
    """
    log_b, log_v = _check_throughput(throughput)
    return np.asarray(np.exp(np.interp(np.log(batch_size), log_b, log_v)), dtype=np.float64)


@dataclass(frozen=True)
class BatchChoice:
    """One batch size and what it costs to reach the target.

    Attributes:
        batch_size: global batch size B (all workers together).
        per_worker_batch: B / n_workers.
        n_workers: data-parallel workers.
        steps: S(B), from the fit.
        samples: B·S(B).
        seconds: wall-clock time to the target.
        device_seconds: n_workers × seconds.
        at_range_edge: the optimum is at an end of the range searched; the true
            optimum may lie beyond it.
        extrapolated: B is outside the batch sizes the fit saw.
        batch_size_ci: the choice at either end of B_crit's interval (the fit's confidence).
        steps_ci, seconds_ci: intervals of ``steps`` and ``seconds`` at ``batch_size``.
    """

    batch_size: int
    per_worker_batch: int
    n_workers: int
    steps: float
    samples: float
    seconds: float
    device_seconds: float
    at_range_edge: bool
    extrapolated: bool
    batch_size_ci: tuple[int, int]
    steps_ci: tuple[float, float]
    seconds_ci: tuple[float, float]


@dataclass(frozen=True)
class ComputeOptimal:
    """The batch size that minimises device time, and the one that minimises wall time on N workers.

    Attributes:
        device: one worker, minimum device time (= wall time) to the target.
        wall: ``n_workers`` workers, minimum wall time (equal to ``device`` when n_workers is 1).
        n_workers: workers of the ``wall`` choice.
        fit: the S(B) fit used.
        throughput: the measured samples/s per batch size.
        throughput_spread: the (low, high) samples/s the intervals took at each batch size ({}: none).
    """

    device: BatchChoice
    wall: BatchChoice
    n_workers: int
    fit: CriticalBatchFit
    throughput: dict[int, float]
    throughput_spread: dict[int, tuple[float, float]] = field(default_factory=dict)

    def device_seconds(self, batch_size: float, n_workers: int = 1) -> float:
        """Device time to the target at global batch B on ``n_workers`` workers."""
        return n_workers * self.wall_seconds(batch_size, n_workers)

    def wall_seconds(self, batch_size: float, n_workers: int = 1) -> float:
        """S(B) · (B/N) / throughput(B/N)."""
        per = batch_size / n_workers
        return float(self.fit.predict_steps(float(batch_size)) * per / throughput_at(self.throughput, per))

    @property
    def summary(self) -> str:
        d, w = self.device, self.wall
        pct = f"{100 * self.fit.confidence:g}%"
        text = (
            f"least device time at B={d.batch_size} ({pct} interval {_span(d.batch_size_ci)}): {d.steps:.3g} steps "
            f"({_span(d.steps_ci, '.3g')}), {d.samples:.3g} samples, {d.seconds:.3g} s on one worker "
            f"({_span(d.seconds_ci, '.3g')})"
        )
        if self.n_workers > 1:
            text += (
                f"; least wall time on {self.n_workers} workers at B={w.batch_size} ({w.per_worker_batch} each; "
                f"{pct} interval {_span(w.batch_size_ci)}): {w.seconds:.3g} s ({_span(w.seconds_ci, '.3g')}; "
                f"{w.device_seconds:.3g} device-seconds)"
            )
        return text


def _span(pair: tuple[float, float], spec: str = "d") -> str:
    return f"{pair[0]:{spec}}–{pair[1]:{spec}}"


def _candidates(lo: int, hi: int) -> FloatArray:
    if hi - lo + 1 <= _MAX_CANDIDATES:
        return np.arange(lo, hi + 1, dtype=np.float64)
    return np.unique(np.round(np.geomspace(lo, hi, _MAX_CANDIDATES // 16)))


def _best_at(b_crit: float, batch: FloatArray, seconds_per_sample: FloatArray) -> int:
    """Index of the least wall time when S(B) ∝ 1 + B_crit/B (B_crit 0 or inf included)."""
    if math.isinf(b_crit):  # S ∝ 1/B: a fixed number of samples, so the least time per sample
        return int(np.argmin(seconds_per_sample))
    return int(np.argmin((batch + b_crit) * seconds_per_sample))  # S·B ∝ B + B_crit


def _tilted(throughput: Mapping[int, float], spread: Mapping[int, tuple[float, float]]) -> list[dict[int, float]]:
    """The ladder as measured, and tilted within each rung's spread: for each split, the rungs below it at their
    fastest and those above at their slowest, and the reverse (a rung without a spread stays as measured)."""
    rungs = sorted(throughput)
    # a spread is samples/s (low, high) around the measured rate; one that leaves it out is widened to hold it
    bounds = {b: (min(spread[b][0], v), max(spread[b][1], v)) if b in spread else (v, v) for b, v in throughput.items()}
    ladders = [dict(throughput)]
    if not any(lo < hi for lo, hi in bounds.values()):
        return ladders
    for split in range(len(rungs) + 1):
        for small_fast in (True, False):
            ladders.append({b: bounds[b][1 if (i < split) == small_fast else 0] for i, b in enumerate(rungs)})
    return ladders


def _choose(
    fit: CriticalBatchFit,
    throughput: Mapping[int, float],
    spread: Mapping[int, tuple[float, float]],
    n: int,
    lo: int,
    hi: int,
) -> BatchChoice:
    per = _candidates(lo, hi)  # per-worker batch sizes
    batch = n * per
    per_sample = per / (batch * throughput_at(throughput, per))  # wall seconds per sample of the global batch
    steps = fit.predict_steps(batch)
    wall = steps * batch * per_sample
    i = int(np.argmin(wall))
    b = int(batch[i])
    ends: list[int] = []
    at_b: list[float] = []  # seconds per sample at b, on each ladder
    for ladder in _tilted(throughput, spread):
        tilted = per / (batch * throughput_at(ladder, per))
        ends += [int(batch[_best_at(c, batch, tilted)]) for c in fit.b_crit_ci]
        at_b.append(float(tilted[i]))
    s_lo, s_hi = fit.steps_ci(float(b))
    return BatchChoice(
        batch_size=b,
        per_worker_batch=int(per[i]),
        n_workers=n,
        steps=float(steps[i]),
        samples=float(steps[i] * batch[i]),
        seconds=float(wall[i]),
        device_seconds=float(n * wall[i]),
        at_range_edge=len(per) > 1 and i in (0, len(per) - 1),
        extrapolated=not fit.batch_min <= b <= fit.batch_max,
        batch_size_ci=(min(*ends, b), max(*ends, b)),
        steps_ci=(s_lo, s_hi),
        seconds_ci=(s_lo * b * min(at_b), s_hi * b * max(at_b)),
    )


def compute_optimal(
    fit: CriticalBatchFit,
    throughput: Mapping[int, float],
    n_workers: int = 1,
    batch_range: tuple[int, int] | None = None,
    throughput_spread: Mapping[int, tuple[float, float]] | None = None,
) -> ComputeOptimal:
    """Batch sizes that minimise device time (one worker) and wall time (``n_workers``).

    Args:
        fit: S(B), from :func:`fit_critical_batch`.
        throughput: samples/s by batch size on one worker (:attr:`ProbeResult.throughput`).
        n_workers: data-parallel workers for the wall-time choice.
        batch_range: (low, high) global batch sizes to consider; per-worker batches
            stay inside the measured throughput range regardless.
        throughput_spread: (low, high) samples/s by batch size, the throughput's own error
            (:attr:`ProbeResult.throughput_iqr`); the intervals then carry it as well as the
            fit's (see the module doc). Without it, the throughput is taken as exact.

    Raises:
        ConfigError: bad throughput, worker count or range, or a range that leaves
            no per-worker batch size inside the measured throughput range.

    Example:
        >>> from bstune.analysis import fit_critical_batch
        >>> fit = fit_critical_batch([(b, 100 * (1 + 64 / b)) for b in (8, 32, 128, 512)])
        >>> flat = {b: 1000.0 for b in (8, 64, 512)}  # saturated: every batch size as fast
        >>> compute_optimal(fit, flat).device.batch_size  # then fewest samples: the smallest B
        8
    """
    log_b, _ = _check_throughput(throughput)
    check_count(n_workers, source="compute_optimal", field="n_workers")
    t_lo, t_hi = round(math.exp(log_b[0])), round(math.exp(log_b[-1]))
    if batch_range is not None and not 0 < batch_range[0] <= batch_range[1]:
        raise ConfigError(
            f"must be (low, high) with 0 < low <= high, got {batch_range}",
            source="compute_optimal",
            field="batch_range",
        )

    def per_worker_range(n: int) -> tuple[int, int]:
        low, high = t_lo, t_hi
        if batch_range is not None:
            low, high = max(low, -(-batch_range[0] // n)), min(high, batch_range[1] // n)
        if low > high:
            raise ConfigError(
                f"no per-worker batch size in the measured throughput range [{t_lo}, {t_hi}] gives a global batch "
                f"in {batch_range} with {n} worker(s)",
                source="compute_optimal",
                field="batch_range",
            )
        return low, high

    spread = _check_spread(throughput, throughput_spread or {})
    device = _choose(fit, throughput, spread, 1, *per_worker_range(1))
    wall = device if n_workers == 1 else _choose(fit, throughput, spread, n_workers, *per_worker_range(n_workers))
    return ComputeOptimal(
        device=device,
        wall=wall,
        n_workers=n_workers,
        fit=fit,
        throughput={int(b): float(v) for b, v in throughput.items()},
        throughput_spread=spread,
    )
