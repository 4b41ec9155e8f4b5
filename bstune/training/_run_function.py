"""One training run of a user's own loop: :func:`run_function` seeds, runs ``fn(ctx)`` with a
:class:`~bstune.training.TrialContext` and returns the same :class:`~bstune.training.TrainResult`
as bstune's trainer, so a study records, prunes and re-scores both alike."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bstune.errors import ConfigError
from bstune.optim import OptimizerSpec
from bstune.training._config import TrainConfig
from bstune.training._context import TrialContext, TrialFunction, TrialPruned, _Diverged
from bstune.training._loop import Callback
from bstune.training._rate_watch import RateVerdict
from bstune.training._read_config import SCHEDULE_SETTINGS, warn_unread
from bstune.training._result import RunStatus, TrainResult, keep_progress
from bstune.training._trial_scheduler import LRRamp

__all__ = ["run_function"]

logger = logging.getLogger("bstune.training._context")  # the name users' log filters already know


_said_not_followed = False  # a loop whose optimizer's rate did not follow the trial's schedule: said once


def run_function(
    fn: TrialFunction,
    config: TrainConfig,
    callback: Callback | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    objective: str = "val_loss",
    optimizer: OptimizerSpec | None = None,
    ramp: LRRamp | None = None,
    order: str = "epoch",
    evaluate: bool = True,
    still_after: int | None = None,
    fixed: frozenset[str] = frozenset(),
) -> tuple[TrainResult, TrialContext]:
    """Run the user's ``fn(ctx)`` as one training run of ``config``; never raises for divergence or
    OOM (like :func:`~bstune.training.train`); what else ``fn`` raises goes up.

    ``still_after`` (the probe's noise run): the run trains that many samples, to the step that
    reaches them, with the milestones, warmup and decay of a run that long (its last milestone
    there), then holds the rate at 0 until ``config.max_samples``, a still phase whose gradients
    are all taken at one point and in which nothing is evaluated. One batch size only (no
    ``batch_schedule``), and the last step of training must end before ``config.max_samples``.

    torch, numpy and ``random`` are seeded with ``config.seed`` first, and their states are
    restored after. ``fixed`` names ``params`` the study does not search (``batch_size`` and ``lr`` of a space
    that leaves them one value): the loop need not read them. Returns the run's :class:`~bstune.training.TrainResult` and the context
    (the probe reads its ramp and step times).
    """
    ctx = TrialContext(
        config,
        params,
        callback,
        objective=objective,
        optimizer=optimizer,
        ramp=ramp,
        order=order,
        evaluate=evaluate,
        fixed=fixed,
    )
    if still_after is not None:
        ctx._hold_still_after(still_after)
    device = ctx.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but torch sees no CUDA device", source="TrainConfig", field="device")
    py_state, np_state = random.getstate(), np.random.get_state()
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            random.seed(config.seed)
            np.random.seed(config.seed % 2**32)
            try:
                with ctx._rate_watch.watching(ctx._rates_expected):
                    ctx._finish(fn(ctx))
            except (TrialPruned, _Diverged):
                if ctx.status is RunStatus.COMPLETED:  # the function raised TrialPruned itself
                    ctx.status, ctx.message = RunStatus.STOPPED, "the function raised TrialPruned"
            except torch.OutOfMemoryError as exc:
                ctx.status = RunStatus.OOM
                ctx.message = f"out of memory at batch_size={config.batch_size}: {str(exc).splitlines()[0]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            except (Exception, KeyboardInterrupt) as exc:  # the function raised, or Ctrl-C: up, with what it trained
                if isinstance(exc, Exception) and ctx._diverged_unread():
                    pass  # it raised on a model a step had already sent non-finite: the run diverged, said so
                else:
                    keep_progress(exc, ctx.samples, ctx.steps)
                    raise
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if ctx._tracker is not None:
            ctx._tracker.remove()
    if ctx._tracker is not None and ctx._tracker.tracker is not None:
        ctx._tracker.tracker.flush(ctx.steps, ctx.samples)  # the window the last report left open
    if ctx.status is not RunStatus.COMPLETED:
        logger.info("run ended %s: %s", ctx.status.value, ctx.message)
    # a run that trained no step (a probe's run stopped at its first batch) read what it reads in its loop body yet
    unread = ctx.unread_params() if ctx.status is RunStatus.COMPLETED and ctx.steps > 0 else []
    # said where the space searches what the rates missed (its draws would be recorded and recommended as applied)
    verdict = ctx.rate_verdict() if ctx.status is RunStatus.COMPLETED and ctx.steps > 0 else RateVerdict()
    affected = (SCHEDULE_SETTINGS | ({"lr"} if verdict.lr_not_applied else set())) & ctx._searched
    not_followed = verdict.why if affected else None
    warn_unread([k for k in unread if not (not_followed and k in affected)])  # those: said below
    global _said_not_followed
    if not_followed and not _said_not_followed:
        _said_not_followed = True  # the loop is the same in every trial: said once per process
        logger.warning("%s (said once)", not_followed)
    wall = time.perf_counter() - started
    result = TrainResult(
        config=config,
        status=ctx.status,
        steps=ctx.steps,
        samples=ctx.samples,
        history=ctx.history,
        wall_time_s=wall,
        train_time_s=(sum(ctx.step_times) / len(ctx.step_times)) * ctx.steps if ctx.step_times else wall,
        message=ctx.message,
        noise_trajectory=list(ctx._tracker.tracker.trajectory) if ctx._tracker and ctx._tracker.tracker else [],
        model=None,
        n_train=ctx.n_train,
        unread_params=unread,
        other_optimizer=ctx.other_optimizer,
    )
    return result, ctx
