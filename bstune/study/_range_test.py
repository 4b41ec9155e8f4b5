"""The LR range test (Smith 2017) on a task: the probe's bound on the learning rate at a batch size.

The rate grows geometrically, one batch a step, until the smoothed loss doubles its minimum; the
ceiling is the rate at that minimum. A second test at a larger batch starts from a decade below the
first ceiling (:func:`large_batch_sweep`), since a larger batch only raises it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bstune.data import fetch_batch, move_to_device
from bstune.task import Task
from bstune.training import LRRamp

__all__ = ["large_batch_sweep", "lr_range_test", "reached_max"]

_TOP = 1 - 1e-9  # a ceiling at or above lr_max * _TOP is lr_max (the test's last step, up to rounding)


def reached_max(ceiling: float, lr_max: float) -> bool:
    """Whether a range test's ``ceiling`` is its last rate, ``lr_max`` (up to rounding): the loss never
    blew up, so the ceiling is a lower bound.

    Example:
        >>> reached_max(0.1 * (1 - 1e-12), 0.1), reached_max(0.05, 0.1)
        (True, False)
    """
    return ceiling >= lr_max * _TOP


def lr_range_test(
    task: Task,
    batch_size: int,
    lr_min: float,
    lr_max: float,
    steps: int,
    *,
    momentum: float | None,
    seed: int,
    device: torch.device,
    on_step: Callable[[], object] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """Geometric LR sweep, one batch per step; returns (ceiling, [(lr, smoothed loss)]).

    The sweep stops once the smoothed loss exceeds twice its minimum (or goes
    non-finite); the ceiling is the learning rate at that minimum, the largest one
    that still lowered the loss. On a quadratic it lands within ~2x of the
    stability edge 2/λ_max (the loss takes a few steps to blow up while the rate
    keeps growing); tests/study/test_probe.py checks it against a known edge.
    ``on_step`` is called after each step (a progress bar counts them).
    """
    spec = task.optimizer_spec
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = task.make_model(seed=seed).to(device).train()
        opt = spec.build(model.parameters(), lr=lr_min, momentum=momentum)
        gen = torch.Generator().manual_seed(seed + 7)
        ratio = (lr_max / lr_min) ** (1.0 / (steps - 1))
        smoothed, best = math.nan, math.inf
        curve: list[tuple[float, float]] = []
        ceiling = lr_min
        for i in range(steps):
            lr = lr_min * ratio**i
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randperm(task.n_train, generator=gen)[:batch_size]
            inputs, targets = move_to_device(fetch_batch(task.train_dataset, idx), device)
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(inputs), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            if value < 0:
                raise LRRamp.negative_loss(value, "task.loss")
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
            smoothed = value if i == 0 else 0.7 * smoothed + 0.3 * value  # EMA: one batch is noisy
            curve.append((lr, smoothed))
            if smoothed > 2.0 * best:
                break
            if smoothed < best:
                best, ceiling = smoothed, lr
    return ceiling, curve


def large_batch_sweep(ceiling: float, lr_min: float, lr_max: float, steps: int) -> tuple[float, int]:
    """Start and step count of the large-batch range test: from a decade below the small
    batch's ``ceiling`` to ``lr_max``, at the first test's ratio per step (never more steps).

    Example:
        >>> start, n = large_batch_sweep(0.5, 1e-3, 10.0, 41)  # 10 steps a decade
        >>> round(start, 4), n
        (0.05, 25)
    """
    start = min(lr_max, max(lr_min, ceiling / 10.0))
    if steps < 2 or start >= lr_max:  # not from a ceiling the first test can find (it is at most lr_max)
        return start, 2
    ratio = (lr_max / lr_min) ** (1.0 / (steps - 1))
    n = math.ceil(math.log(lr_max / start) / math.log(ratio) - 1e-9) + 1
    return start, int(min(steps, max(2, n)))
