"""Training throughput on a task: samples per second at a batch size, from steps timed one by one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from bstune.data import fetch_batch, move_to_device
from bstune.errors import EstimationError
from bstune.study._probe_plan import THROUGHPUT_WARMUP
from bstune.task import Task

__all__ = ["measure_throughput", "step_rate"]

_CLOCK_FLOOR = 1e-9  # seconds: the shortest step time step_rate believes (perf_counter's resolution or finer)


def measure_throughput(
    task: Task,
    batch_size: int,
    steps: int,
    *,
    lr: float,
    seed: int,
    device: torch.device,
    warmup: int = THROUGHPUT_WARMUP,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float | None, int, tuple[float, float] | None]:
    """Training samples/s at ``batch_size`` (forward, backward, optimizer step).

    ``warmup`` untimed steps first (allocator, caches, lazy initialisation), then
    ``steps`` steps timed one by one with ``clock``; the rate is :func:`step_rate`'s
    median, so a step slowed by another process on a shared machine does not move it.

    Returns:
        ``(samples/s, examples used, (q25, q75) of the per-step rates)``, or
        ``(None, used, None)`` if the device ran out of memory.
    """
    model = task.make_model(seed=seed).to(device).train()
    opt = task.optimizer_spec.build(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 11)
    used = 0
    seconds: list[float] = []
    try:
        for i in range(warmup + steps):
            idx = torch.randperm(task.n_train, generator=gen)[:batch_size]
            inputs, targets = move_to_device(fetch_batch(task.train_dataset, idx), device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = clock()
            opt.zero_grad(set_to_none=True)
            task.loss(model(inputs), targets).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = clock()
            if i >= warmup:
                seconds.append(t1 - t0)
            used += batch_size
    except torch.OutOfMemoryError:
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, used, None
    rate, spread = step_rate(batch_size, seconds)
    return rate, used, spread


def step_rate(batch_size: int, seconds: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Samples/s from per-step times: ``batch_size`` over the median step, and the
    interquartile range of the per-step rates. A few slow steps (a shared CPU, a
    page fault) move neither, though they move the mean of all steps.

    Example:
        >>> rate, (q25, q75) = step_rate(100, [0.01, 0.01, 0.011, 0.01, 0.5])  # one step 50x slow
        >>> round(rate), round(q25), round(q75)
        (10000, 9091, 10000)
    """
    # a step faster than the clock's resolution reads 0: floor it there rather than divide by it
    times = [max(t, _CLOCK_FLOOR) for t in seconds if math.isfinite(t)]
    if not times:
        raise EstimationError(f"needs at least one finite step time, got {list(seconds)}")
    q25, q50, q75 = (float(v) for v in np.quantile(np.asarray(times, dtype=np.float64), [0.25, 0.5, 0.75]))
    return batch_size / q50, (batch_size / q75, batch_size / q25)
