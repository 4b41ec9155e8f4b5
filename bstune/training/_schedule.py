"""Learning-rate schedules as functions of samples seen."""

from __future__ import annotations

import math

from bstune.training._config import TrainConfig

__all__ = ["lr_at"]


def lr_at(config: TrainConfig, samples: int) -> float:
    """Learning rate for the step that starts after ``samples`` training examples.

    Linear warmup from ~0 to ``lr`` over ``warmup_samples`` (Goyal et al. 2017), then
    constant, cosine or linear decay to ``final_lr_ratio * lr`` at ``max_samples``.

    Example:
        >>> cfg = TrainConfig(batch_size=10, lr=1.0, max_samples=100, warmup_samples=20, schedule="linear")
        >>> [round(lr_at(cfg, s), 3) for s in (0, 10, 20, 60, 100)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    base = config.lr
    warm = config.warmup_samples
    if warm and samples < warm:
        # the step covers samples [s, s+B): use its end so the first step is not zero
        return base * min(1.0, (samples + config.batch_size) / warm)
    if config.schedule == "constant":
        return base
    span = max(1, config.max_samples - warm)
    progress = min(1.0, max(0.0, (samples - warm) / span))
    floor = config.final_lr_ratio
    if config.schedule == "cosine":
        factor = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - (1.0 - floor) * progress
    return base * factor
