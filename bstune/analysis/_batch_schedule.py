"""A batch-size schedule from a trajectory of the critical batch size: start small, grow with it.

The critical batch size grows during training (McCandlish et al. 2018, §3.3: the gradient
noise scale rises as the loss falls). A fixed batch is then too large early (samples
wasted above B_crit) or too small late (steps wasted below it). Given B_crit measured over
a run (a B_simple trajectory, :attr:`~bstune.training.TrainResult.noise_trajectory`, or
B_crit measured directly at checkpoints), :func:`recommend_batch_schedule` returns stages
``(start_samples, batch_size, lr)`` for :attr:`~bstune.training.TrainConfig.batch_schedule`:

- the level followed is the running maximum of the trajectory's sliding median over
  ``window`` consecutive points (a B_simple window of a few steps is noisy: one outlier
  must not set the batch for the rest of the run), taken of each point's estimate or,
  with ``use_ci=True``, of the lower end of its interval; so the schedule never shrinks;
- each stage's batch is that level rounded down to a power of two (or to a multiple of
  ``round_to``), clipped to ``[batch_min, batch_max]``: the batch *is* the critical batch,
  where (McCandlish eq. 2.11) a run spends twice the minimal steps and twice the minimal
  samples;
- or, with ``relative=p``, the batch keeps the base run's place relative to the critical
  batch: ``base_batch · (level / L)^p`` with L the geometric mean of the level over the
  budget, rounded to the nearest power of two (multiple of ``round_to``), so a run starts
  below the base batch and ends above it. ``p = 1`` keeps B/B_crit constant (the same
  step/sample trade-off all along); ``p = 1/2`` is the model's fewest steps for the samples:
  with δS = δS_min(1 + B_crit/B) and δE = δS_min(B_crit + B) per stretch of training,
  minimizing Σ δS at fixed Σ δE gives B ∝ sqrt(B_crit);
- a new stage starts (at the point's sample count) only once the batch the level asks for
  has grown by ``growth`` (2x) since the last change (the level itself, without
  ``relative``), and the rounded batch is larger;
- each stage's rate comes from the base point ``(base_batch, base_lr)`` (a tuned fixed-batch
  run) by the rule of :func:`~bstune.analysis.lr_table` with B_noise = the stage's level:
  ε_opt(B) = ε_max/(1 + B_noise/B) (McCandlish eq. 2.6), i.e.
  lr(B) = base_lr · (s(B)/s(base_batch))^α with s(B) = B/(1 + B/B_noise),
  α = 1 for SGD, α = ``PriorSettings.adam_alpha`` (0.8) for the Adam family.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from bstune._validate import check_count, number_reason
from bstune.analysis._lr import lr_table
from bstune.errors import ConfigError
from bstune.optim import FAMILIES
from bstune.training import TrainConfig

__all__ = ["BatchSchedule", "ScheduleStage", "recommend_batch_schedule"]

_SOURCE = "recommend_batch_schedule"


@dataclass(frozen=True)
class ScheduleStage:
    """One stage: from ``start_samples`` on, steps of ``batch_size`` at rate ``lr``; ``b_crit``
    is the trajectory's level (running maximum) that set it."""

    start_samples: int
    batch_size: int
    lr: float
    b_crit: float


@dataclass(frozen=True)
class BatchSchedule:
    """A recommended batch-size schedule; :meth:`apply` puts it into a :class:`TrainConfig`.

    Example:
        >>> from bstune.training import TrainConfig
        >>> sched = BatchSchedule(
        ...     stages=(ScheduleStage(0, 32, 0.05, 40.0), ScheduleStage(4000, 128, 0.2, 150.0)),
        ...     budget_samples=10_000, base_batch=64, base_lr=0.1, family="sgd", alpha=1.0)
        >>> cfg = sched.apply(TrainConfig(batch_size=64, lr=0.1, max_samples=10_000))
        >>> cfg.batch_size, cfg.lr, cfg.batch_schedule, cfg.steps
        (32, 0.05, ((0, 32, 0.05), (4000, 128, 0.2)), 172)
    """

    stages: tuple[ScheduleStage, ...]
    budget_samples: int
    base_batch: int
    base_lr: float
    family: str
    alpha: float
    relative: float | None = None  # None: the batch is the critical batch; p: base_batch·(B_crit/mean)^p

    @property
    def batch_schedule(self) -> tuple[tuple[int, int, float], ...]:
        """The stages as :attr:`TrainConfig.batch_schedule` takes them."""
        return tuple((s.start_samples, s.batch_size, s.lr) for s in self.stages)

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this schedule (its ``batch_size``/``lr`` set to the first stage's).

        Raises:
            ConfigError: a stage starts at or past ``config.max_samples``, or the config
                does not fit the schedule otherwise (``micro_batch_size``...).
        """
        first = self.stages[0]
        return replace(config, batch_size=first.batch_size, lr=first.lr, batch_schedule=self.batch_schedule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _points(trajectory: Iterable[Any], use_ci: bool) -> list[tuple[int, float, float]]:
    """``(samples, estimate, level)`` of each usable point, in sample order."""
    out = []
    for i, point in enumerate(trajectory):
        ci: Any = None
        samples: Any
        b: Any
        if isinstance(point, Mapping):
            samples, ci = point.get("samples"), point.get("ci")
            b = point.get("b_crit", point.get("b_simple"))
        elif hasattr(point, "samples"):
            samples, b, ci = point.samples, getattr(point, "b_crit", getattr(point, "b_simple", None)), point.ci
        else:
            try:
                samples, b, *rest = point
            except (TypeError, ValueError):
                raise ConfigError(
                    f"point {i} must be (samples, critical_batch[, (low, high)]), got {point!r}",
                    source=_SOURCE,
                    field="trajectory",
                ) from None
            ci = rest[0] if rest else None
        if number_reason(samples, strict=False) is not None:
            raise ConfigError(f"point {i}: samples must be >= 0, got {samples!r}", source=_SOURCE, field="trajectory")
        if b is None or number_reason(b) is not None:
            continue  # unresolved window (B_simple inf/nan or <= 0): no evidence either way
        level = float(b)
        if use_ci and ci is not None and ci[0] is not None and math.isfinite(ci[0]) and ci[0] > 0:
            level = min(level, float(ci[0]))
        out.append((int(samples), float(b), level))
    return sorted(out)


def recommend_batch_schedule(
    trajectory: Iterable[Any],
    *,
    base_batch: int,
    base_lr: float,
    budget_samples: int,
    batch_max: int,
    batch_min: int = 1,
    family: str = "sgd",
    alpha: float | None = None,
    growth: float = 2.0,
    round_to: int | None = None,
    use_ci: bool = False,
    window: int = 3,
    relative: float | None = None,
) -> BatchSchedule:
    """A batch-size warmup that follows a measured critical batch size (the module docstring's rules).

    Args:
        trajectory: points ``(samples, critical_batch)`` or ``(samples, critical_batch, (low, high))``,
            :class:`~bstune.noise.TrajectoryPoint` objects, or mappings with ``samples``,
            ``b_crit`` or ``b_simple``, and optionally ``ci``. Points without a finite
            positive value are skipped.
        base_batch, base_lr: a tuned fixed-batch run's batch and rate, the anchor of the LR rule.
        budget_samples: the run's ``max_samples``; points at or after it start no stage.
        batch_max, batch_min: bounds of every stage's batch (memory, the training set's size).
        family: the optimizer family (``sgd``, ``adam``, ``adamw``).
        alpha: the rule's exponent; ``None``: 1 for SGD, ``PriorSettings.adam_alpha`` for Adam.
        growth: the factor the level must grow by since the last change to start a stage.
        round_to: batch sizes are multiples of this; ``None``: powers of two.
        use_ci: follow each point's lower interval bound instead of its estimate.
        window: points in the sliding median the level follows (1: each point as it is).
        relative: the batch is ``base_batch · (level / geometric mean)^relative`` instead of
            the level itself (1: B/B_crit constant; 0.5: the fewest steps at equal samples).

    Raises:
        ConfigError: a bad argument, or no usable point in ``trajectory``.

    Example:
        >>> traj = [(1000, 20.0), (2000, 35.0), (4000, 90.0), (6000, 100.0), (8000, 400.0)]
        >>> sched = recommend_batch_schedule(traj, base_batch=64, base_lr=0.1, budget_samples=10_000, batch_max=256)
        >>> [(s.start_samples, s.batch_size, round(s.lr, 4)) for s in sched.stages]  # the median of 3 lags
        [(0, 16, 0.0583), (6000, 64, 0.1)]
        >>> sched = recommend_batch_schedule(traj, base_batch=64, base_lr=0.1, budget_samples=10_000, batch_max=256,
        ...                                  window=1)
        >>> [(s.start_samples, s.batch_size, round(s.lr, 4)) for s in sched.stages]
        [(0, 16, 0.0583), (4000, 64, 0.1), (8000, 256, 0.2829)]
    """
    from bstune.space import PriorSettings

    def bad(name: str, reason: str) -> ConfigError:
        return ConfigError(reason, source=_SOURCE, field=name)

    base_batch = check_count(base_batch, source=_SOURCE, field="base_batch", numpy=True)
    budget_samples = check_count(budget_samples, source=_SOURCE, field="budget_samples", numpy=True)
    batch_min = check_count(batch_min, source=_SOURCE, field="batch_min", numpy=True)
    batch_max = check_count(batch_max, source=_SOURCE, field="batch_max", numpy=True)
    if (reason := number_reason(base_lr)) is not None:
        raise bad("base_lr", reason)
    if batch_max < batch_min:
        raise bad("batch_max", f"must be >= batch_min={batch_min}, got {batch_max}")
    if family not in FAMILIES:
        raise bad("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    if alpha is None:
        alpha = 1.0 if family == "sgd" else PriorSettings().adam_alpha
    if (reason := number_reason(growth, minimum=1.0)) is not None:
        raise bad("growth", reason)
    if round_to is not None:
        round_to = check_count(round_to, source=_SOURCE, field="round_to", numpy=True)
    window = check_count(window, source=_SOURCE, field="window", numpy=True)
    if relative is not None and ((reason := number_reason(relative)) is not None or relative > 1):
        raise bad("relative", reason or f"must be in (0, 1], got {relative!r}")
    points = _points(trajectory, use_ci)
    if not points:
        raise bad("trajectory", "holds no point with a finite, positive critical batch size")
    levels = [level for _, _, level in points]
    running_levels = [levels[0]]  # the first window's level stands for the start of the run
    for i in range(1, len(points)):
        running_levels.append(max(running_levels[-1], statistics.median(levels[max(0, i - window + 1) : i + 1])))
    power = 1.0 if relative is None else float(relative)
    if relative is None:
        scale = 1.0
    else:  # the base batch sits at the geometric mean of the levels the budget sees
        seen = [run for (samples, _, _), run in zip(points, running_levels, strict=True) if samples < budget_samples]
        mean = math.exp(statistics.fmean(math.log(v) for v in seen or running_levels[:1]))
        scale = base_batch / mean**power

    def batch_of(level: float) -> int:
        want = scale * level**power
        snap = math.floor if relative is None else round  # the critical batch: never above it
        b = 2 ** max(0, snap(math.log2(want))) if round_to is None else max(round_to, snap(want / round_to) * round_to)
        return min(batch_max, max(batch_min, int(b)))

    def stage(start: int, level: float) -> ScheduleStage:
        b = batch_of(level)
        ((_, lr),) = lr_table(level, base_batch, base_lr, [b], family=family, alpha=alpha)
        return ScheduleStage(start, b, lr, level)

    stages = [stage(0, running_levels[0])]
    for (samples, _, _), running in zip(points[1:], running_levels[1:], strict=True):
        if samples >= budget_samples:
            break
        grown = (running / stages[-1].b_crit) ** power >= growth
        if samples > 0 and grown and batch_of(running) > stages[-1].batch_size:
            stages.append(stage(samples, running))
    return BatchSchedule(
        tuple(stages), budget_samples, base_batch, float(base_lr), family, float(alpha), relative=relative
    )
