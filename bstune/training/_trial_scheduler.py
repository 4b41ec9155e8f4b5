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

from bstune.errors import ConfigError
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

    @staticmethod
    def negative_loss(value: float, source: str) -> ConfigError:
        """The error for a loss below 0 in an LR range test: the stopping rule reads the loss against 0, so below
        it any rise stopped the ramp within a few steps, at a ceiling a hundred times too low (a Gaussian NLL, a
        flow's NLL, a loss plus a constant: the same training gave another ceiling).

        Example:
            >>> str(LRRamp.negative_loss(-3.0, "ctx.step"))[:52]
            "ctx.step: the LR range test's loss went below 0 (-3)"
        """
        return ConfigError(
            f"the LR range test's loss went below 0 ({value:.4g}): its stopping rule, twice the lowest loss, needs a "
            "loss bounded below by 0 (cross entropy, a squared error). Pass the range test a loss shifted to stay "
            "at or above 0 (e.g. a Gaussian NLL less its floor), or tune without the probe: mode='baseline' "
            "(bstune run --mode baseline)",
            source=source,
        )


class RateSource(Protocol):
    """What the scheduler reads of a :class:`~bstune.training.TrialContext`: the run's config and the
    rate of each step."""

    _train_config: TrainConfig
    steps: int

    def _lr_of_step(self, step: int) -> float: ...


def _other_scheduler(set_lr: float, found_lr: float) -> ConfigError:
    """The error for a rate another scheduler (or the loop) changed between two of this one's steps.

    Left to run, the two fought over the rate: the probe's range test found a ceiling 8,000x too low,
    every trial trained at a rate the study did not know, and the study finished as if nothing were wrong.
    """
    return ConfigError(
        f"the optimizer's learning rate changed between two of its steps ({set_lr:.4g} set, {found_lr:.4g} "
        "found): another scheduler (or the loop) sets it too. The trial's rate is the study's to set, from the "
        "space's lr, schedule and warmup_fraction: drop the other scheduler (the study's schedule replaces it)",
        source="ctx.lr_scheduler",
    )


def _not_at_trial_rate(built: list[float], base: float) -> ConfigError:
    """The error for an optimizer none of whose rates is the trial's (``Adam(params)``, at its default 1e-3).

    The scheduler keeps each group's ratio to ``ctx.config["lr"]``, so such an optimizer trained every trial at
    its own rates, whatever the search drew, and the probe's range test ramped a rate it never set.
    """
    rates = ", ".join(f"{lr:.4g}" for lr in sorted(set(built)))
    return ConfigError(
        f"the optimizer was built at lr {rates}, and no parameter group is at this run's ctx.config['lr'] = "
        f"{base:.4g} (a trial's drawn rate, or the probe's first when it ramps the rate): this "
        "scheduler keeps each parameter group's ratio to that rate, so every trial would train at "
        f"{rates} whatever the search drew; build it with lr=ctx.config['lr'] (other groups at multiples "
        "of it keep their ratios), and leave its rate to this scheduler (no other scheduler, and no optimizer "
        "state loaded before it, sets the rate)",
        source="ctx.lr_scheduler",
    )


def _scales(optimizer: torch.optim.Optimizer, base: float, now: float) -> list[float]:
    """Each parameter group's rate over the one the optimizer was built at: the trial's ``base`` rate (a group at
    it), or the rate of the step under way, ``now`` (an optimizer made again mid-run by ``ctx.make_optimizer``,
    which builds at it). Groups all at multiples of the trial's rate count where the optimizer's default is that
    rate and no other scheduler has touched them (``initial_lr``): rates moved together from the default (a
    torch scheduler, a loaded checkpoint) are refused, as scaling from them would train every step at a fraction
    of the schedule. A group frozen at lr=0 stays frozen."""
    groups = optimizer.param_groups
    built = [float(group["lr"]) for group in groups]
    default = optimizer.defaults.get("lr")
    multiples = (
        isinstance(default, (int, float))
        and math.isclose(float(default), base, rel_tol=1e-6)
        and not any("initial_lr" in group for group in groups)
        and len(set(built)) > 1
    )
    if multiples or any(math.isclose(rate, base, rel_tol=1e-6) for rate in built):
        return [rate / base for rate in built]
    if now > 0 and any(math.isclose(rate, now, rel_tol=1e-6) for rate in built):
        return [rate / now for rate in built]
    raise _not_at_trial_rate(built, base)


class TrialLRScheduler:
    """Sets the optimizer's learning rate for each step: the trial's warmup and decay, or the probe's ramp.

    Call :meth:`step` once per optimizer step, as with a torch scheduler. Parameter groups
    built with different rates keep their ratios to ``ctx.config["lr"]``; so does a group added
    mid-run (``opt.add_param_group({"params": ..., "lr": 0.1 * ctx.config["lr"]})``), from the
    next step on.
    """

    def __init__(self, ctx: RateSource, optimizer: torch.optim.Optimizer) -> None:
        self.ctx, self.optimizer = ctx, optimizer
        self.last_step = ctx.steps  # made mid-run (a rebuilt optimizer): the schedule goes on from here
        self.first_step = ctx.steps
        self._scale = _scales(optimizer, ctx._train_config.lr, ctx._lr_of_step(ctx.steps))
        self._apply()

    def _apply(self) -> None:
        lr = self.ctx._lr_of_step(self.last_step)
        for group, scale in zip(self.optimizer.param_groups, self._scale, strict=True):
            group["lr"] = lr * scale
        self._set = [float(group["lr"]) for group in self.optimizer.param_groups]

    def step(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) > len(self._scale):  # opt.add_param_group mid-run (unfreezing a part of the model)
            base = self.ctx._train_config.lr
            self._scale += [float(group["lr"]) / base for group in groups[len(self._scale) :]]
            self._set += [float(group["lr"]) for group in groups[len(self._set) :]]
        found = [float(group["lr"]) for group in groups]
        for f, s in zip(found, self._set, strict=False):
            if not math.isclose(f, s, rel_tol=1e-9, abs_tol=0.0):
                raise _other_scheduler(s, f)
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "scale": list(self._scale)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_step, self._scale = int(state["last_step"]), list(state["scale"])
        self._apply()
