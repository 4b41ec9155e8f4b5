"""The learning rate of a user's own loop, step by step: :class:`TrialLRScheduler` (from
``ctx.lr_scheduler(optimizer)``) sets the trial's warmup and decay, or the probe's
:class:`LRRamp` for its LR range test, as the context says for each step."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bstune.training._config import TrainConfig

__all__ = ["LRRamp", "TrialLRScheduler"]

logger = logging.getLogger("bstune.training._context")  # the name users' log filters already know


@dataclass(frozen=True)
class LRRamp:
    """The probe's LR range test: the rate of step ``k`` is ``lr_min * ratio**k``; the ramp ends
    once the smoothed loss exceeds twice its minimum (or goes non-finite)."""

    lr_min: float
    ratio: float

    def lr(self, step: int) -> float:
        return self.lr_min * self.ratio**step


class RateSource(Protocol):
    """What the scheduler reads of a :class:`~bstune.training.TrialContext`: the run's config and the
    rate of each step."""

    train_config: TrainConfig

    def _lr_of_step(self, step: int) -> float: ...


_other_scheduler_said = False  # said once per process, not once per trial


def _say_other_scheduler(set_lr: float, found_lr: float) -> None:
    global _other_scheduler_said
    _other_scheduler_said = True
    logger.warning(
        "the optimizer's learning rate changed between two steps of ctx.lr_scheduler (%.4g set, %.4g found): "
        "another scheduler (or the loop) sets it too. The trial's rate is the study's to set, from the space's "
        "lr, schedule and warmup_samples; drop the other scheduler, or the trials and the probe's range test "
        "train at rates the study does not know",
        set_lr,
        found_lr,
    )


class TrialLRScheduler:
    """Sets the optimizer's learning rate for each step: the trial's warmup and decay, or the probe's ramp.

    Call :meth:`step` once per optimizer step, as with a torch scheduler. Parameter groups
    built with different rates keep their ratios to ``ctx.config["lr"]``.
    """

    def __init__(self, ctx: RateSource, optimizer: torch.optim.Optimizer) -> None:
        self.ctx, self.optimizer = ctx, optimizer
        base = ctx.train_config.lr
        self._scale = [float(group["lr"]) / base if group.get("lr") else 1.0 for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        lr = self.ctx._lr_of_step(self.last_step)
        for group, scale in zip(self.optimizer.param_groups, self._scale, strict=True):
            group["lr"] = lr * scale
        self._set = [float(group["lr"]) for group in self.optimizer.param_groups]

    def step(self) -> None:
        found = [float(group["lr"]) for group in self.optimizer.param_groups]
        if not _other_scheduler_said and any(
            not math.isclose(f, s, rel_tol=1e-9, abs_tol=0.0) for f, s in zip(found, self._set, strict=False)
        ):
            _say_other_scheduler(self._set[0], found[0])
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "scale": list(self._scale)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_step, self._scale = int(state["last_step"]), list(state["scale"])
        self._apply()
