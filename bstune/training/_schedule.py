"""Learning-rate schedules and batch-size stages as functions of samples seen."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator

from bstune.training._config import TrainConfig

__all__ = ["lr_at", "samples_before_step", "stage_at", "step_batch_sizes"]


def stage_at(config: TrainConfig, samples: int) -> tuple[int, float]:
    """``(batch_size, lr)`` of the step that starts after ``samples`` examples: the last stage of
    ``batch_schedule`` that starts at or before ``samples`` (the config's own without one).

    Example:
        >>> cfg = TrainConfig(batch_size=8, lr=0.1, max_samples=100, batch_schedule=((0, 8, 0.1), (40, 16, 0.2)))
        >>> stage_at(cfg, 39), stage_at(cfg, 40)
        ((8, 0.1), (16, 0.2))
    """
    stages = config.batch_schedule
    if stages is None:
        return config.batch_size, config.lr
    i = bisect.bisect_right([start for start, _, _ in stages], samples) - 1
    _, batch, lr = stages[max(i, 0)]
    return batch, lr


def step_batch_sizes(config: TrainConfig) -> Iterator[int]:
    """The batch size of every step of the run, in order (``config.steps`` of them).

    Example:
        >>> cfg = TrainConfig(batch_size=8, lr=0.1, max_samples=60, batch_schedule=((0, 8, 0.1), (20, 16, 0.2)))
        >>> list(step_batch_sizes(cfg))
        [8, 8, 8, 16, 16, 16]
    """
    if config.batch_schedule is None:
        yield from itertools.repeat(config.batch_size, config.steps)
        return
    samples = 0
    while samples < config.max_samples:
        batch, _ = stage_at(config, samples)
        yield batch
        samples += batch


def samples_before_step(config: TrainConfig, step: int) -> int:
    """Training examples taken by the steps before step ``step`` (0-based) when every step holds
    its stage's batch; past the budget the last stage's batch continues.

    Example:
        >>> cfg = TrainConfig(batch_size=8, lr=0.1, max_samples=60, batch_schedule=((0, 8, 0.1), (20, 16, 0.2)))
        >>> [samples_before_step(cfg, k) for k in range(7)]
        [0, 8, 16, 24, 40, 56, 72]
    """
    stages = config.batch_schedule
    if stages is None:
        return step * config.batch_size
    samples = 0
    ends: list[int | None] = [start for start, _, _ in stages[1:]] + [None]
    for (_, batch, _), end in zip(stages, ends, strict=True):
        if end is not None and samples >= end:
            continue
        # this stage's steps still to come before `step` (the last stage's: all of them)
        n = step if end is None else min(step, -(-(end - samples) // batch))
        samples, step = samples + n * batch, step - n
        if step == 0:
            break
    return samples


def lr_at(config: TrainConfig, samples: int) -> float:
    """Learning rate for the step that starts after ``samples`` training examples.

    Linear warmup from ~0 to ``lr`` over ``warmup_samples`` (Goyal et al. 2017), then
    constant, cosine or linear decay to ``final_lr_ratio * lr`` at ``max_samples``. With a
    ``batch_schedule``, ``lr`` is the current stage's rate: the warmup and decay are
    multipliers on it.

    Example:
        >>> cfg = TrainConfig(batch_size=10, lr=1.0, max_samples=100, warmup_samples=20, schedule="linear")
        >>> [round(lr_at(cfg, s), 3) for s in (0, 10, 20, 60, 100)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    batch, base = stage_at(config, samples)
    warm = config.warmup_samples
    if warm and samples < warm:
        # the step covers samples [s, s+B): use its end so the first step is not zero
        return base * min(1.0, (samples + batch) / warm)
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
