"""Whether the optimizers a user's training loop steps train at the trial's learning rate and schedule.

A loop that logs its whole config (as wandb does) reads every setting, so reading proves nothing:
what counts is the rate the optimizer steps at. :class:`RateWatch` sees every ``optimizer.step()``
the trial function's thread makes, through torch's optimizer step pre-hook common to all optimizers,
so a loop's own optimizer is watched as one from ``ctx.make_optimizer`` is. Each step's rate is
compared with the trial's schedule (``lr_at`` at the samples trained, the step before or after, a
loop may call ``ctx.step`` before or after ``opt.step()``), and each optimizer's highest rate with the
schedule's highest: a loop that built its optimizer with a rate of its own (a hard-coded ``lr=3e-4``)
trains at that rate whatever the search drew.

Example:
    >>> import torch
    >>> watch = RateWatch()
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    >>> with watch.watching(lambda: (watch.checked_steps(), (0.1,))):
    ...     for _ in range(20):
    ...         opt.step()
    >>> watch.verdict().lr_not_applied
    True
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["RATE_SLACK", "RateVerdict", "RateWatch"]

# a step follows the schedule when its rate is within this share of the schedule's (a hand-made warmup rounds its
# steps); an optimizer's highest rate is the trial's when within this share of the schedule's highest
RATE_SLACK = 0.2
# steps off the schedule before any verdict, or a quarter of the steps (an AMP loop's scaler skips its first steps)
MISSES_ALLOWED = 8

Expected = Callable[[], "tuple[int, tuple[float, ...]] | None"]
"""The step being taken and the rates the schedule allows for it; None where nothing is checked now."""


@dataclass
class _Seen:
    """One optimizer's steps against the schedule."""

    name: str
    ratio: float | None  # ctx.make_optimizer's: its first group's rate over the trial's; a loop's own: None
    checked: int = 0
    missed: int = 0
    first_miss: tuple[int, float, float] | None = None  # (step, applied, the schedule's)
    peak: float = 0.0  # the highest rate it stepped at
    wanted_peak: float = 0.0  # the schedule's highest over the same steps

    @property
    def followed(self) -> bool:
        return self.first_miss is None or self.missed <= max(MISSES_ALLOWED, self.checked // 4)

    @property
    def at_trial_peak(self) -> bool:
        return abs(self.peak - self.wanted_peak) <= RATE_SLACK * self.wanted_peak


@dataclass(frozen=True)
class RateVerdict:
    """What :meth:`RateWatch.verdict` found: ``why`` (None where an optimizer followed the schedule, or none
    stepped) and whether the rate itself was not the trial's (``lr_not_applied``)."""

    why: str | None = None
    lr_not_applied: bool = False


class RateWatch:
    """The rates of the optimizers a trial function steps (see the module doc)."""

    def __init__(self) -> None:
        self._seen: list[_Seen] = []  # kept after their optimizers are gone (a loop that makes one per epoch)
        self._by_optimizer: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Seen] = weakref.WeakKeyDictionary()
        self._made: weakref.WeakKeyDictionary[torch.optim.Optimizer, float] = weakref.WeakKeyDictionary()

    def made(self, optimizer: torch.optim.Optimizer, ratio: float) -> None:
        """``optimizer`` is ``ctx.make_optimizer``'s, its first group at ``ratio`` times the trial's rate."""
        self._made[optimizer] = ratio

    def checked_steps(self) -> int:
        return sum(s.checked for s in self._seen)

    @contextmanager
    def watching(self, expected: Expected) -> Iterator[None]:
        """Check every optimizer step this thread takes inside the block against ``expected()``."""
        owner = threading.get_ident()

        def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            if threading.get_ident() == owner:  # another thread's trial (Ray's function trainables share a process)
                self._step(optimizer, expected)

        handle = register_optimizer_step_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _step(self, optimizer: torch.optim.Optimizer, expected: Expected) -> None:
        now = expected()
        if now is None or not optimizer.param_groups:
            return
        given = [group.get("lr") for group in optimizer.param_groups]
        # a capturable or fused optimizer's rate is a tensor on the device (reading it syncs); Adafactor's relative
        # steps have none: neither is checked
        rates = [float(r) for r in given if isinstance(r, (int, float)) and not isinstance(r, bool)]
        if len(rates) < len(given):
            return
        seen = self._by_optimizer.get(optimizer)
        if seen is None:
            ratio = self._made.get(optimizer)
            name = (
                "the optimizer from ctx.make_optimizer"
                if ratio is not None
                else f"the loop's own {type(optimizer).__name__}"
            )
            seen = self._by_optimizer[optimizer] = _Seen(name, ratio)
            self._seen.append(seen)
        # ctx.make_optimizer's first group, at its ratio; a loop's own: any group (it may scale some, a backbone's)
        applied = [float(rates[0]) / seen.ratio] if seen.ratio is not None else [float(r) for r in rates]
        step, wanted = now
        seen.checked += 1
        seen.peak = max(seen.peak, *applied)
        seen.wanted_peak = max(seen.wanted_peak, *wanted)
        if not any(abs(a - w) <= RATE_SLACK * w for a in applied for w in wanted):
            seen.missed += 1
            if seen.first_miss is None:
                seen.first_miss = (step, applied[0], wanted[0])

    def verdict(self, schedule: str = "") -> RateVerdict:
        """Whether the loop trained at the trial's rates: fine where one optimizer followed the schedule (a GAN's
        other one need not); ``schedule`` describes it for the message."""
        if not self._seen or any(s.followed for s in self._seen):
            return RateVerdict()
        worst = max(self._seen, key=lambda s: s.checked)
        assert worst.first_miss is not None
        step, applied, wanted = worst.first_miss
        lr_off = not any(s.at_trial_peak for s in self._seen)
        why = (
            f"{worst.name} did not follow the trial's learning rate ({schedule}): {worst.missed} of {worst.checked} "
            f"steps were more than {RATE_SLACK:.0%} off it, the first at step {step} with rate {applied:.4g} where "
            f"the schedule gives {wanted:.4g}"
        )
        if lr_off:
            why += (
                f"; its highest rate was {worst.peak:.4g} where the trial's is {worst.wanted_peak:.4g}: it was given "
                "a rate of its own (a hard-coded lr=, or one scaled), so every trial trained at it whatever the "
                "search drew. Build it with lr=ctx.lr (or ctx.make_optimizer) and step ctx.lr_scheduler(opt)"
            )
        else:
            why += (
                ". A scheduler of the loop's own (torch's CosineAnnealingLR, say) sets other rates than the study "
                "records and recommends: step ctx.lr_scheduler(opt) instead, or leave the schedule's settings out "
                "of the space"
            )
        return RateVerdict(why, lr_off)
