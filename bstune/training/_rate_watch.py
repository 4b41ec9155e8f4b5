"""Whether the optimizers a user's training loop steps train at the trial's learning rate and schedule.

A loop that logs its whole config (as wandb does) reads every setting, so reading proves nothing:
what counts is the rate the optimizer steps at. :class:`RateWatch` sees every ``optimizer.step()``
the trial function's thread makes, through torch's optimizer step pre-hook common to all optimizers,
so a loop's own optimizer is watched as one from ``ctx.make_optimizer`` is, and one made again each
epoch as the same. The judgement is per training step (``ctx.step``): a step follows the trial's
schedule where some group of some optimizer, one whose parameters have gradients, stepped within
``RATE_SLACK`` of the schedule's rate (``lr_at`` at the samples trained, or a step either side: a
loop calls ``ctx.step`` before or after ``opt.step()``; or where its own optimizer steps stand, an AMP
loop that skips its scheduler with the steps its scaler skipped), so a GAN's second optimizer, a
backbone's group at a tenth of the rate or a one-step calibration at each evaluation does not condemn
a loop (one at the trial's rate beside a hard-coded main optimizer clears it, though). The warmup is
judged on its own steps (a few percent of a run hide in any allowance over the whole), and the rate
itself by the highest any group reached: a loop that built its optimizer with a rate other than
the trial's (a hard-coded ``lr=3e-4``, or the trial's scaled) trains at rates the study neither
records nor recommends. An optimizer that ``ctx.lr_scheduler`` drives follows by construction.

Not seen, so not judged: a rate held as a tensor on an accelerator (reading it would wait for the
device), optimizer steps fused into the backward pass (they run on autograd's threads), a step traced
by ``torch.compile``, and optimizer steps in processes of the loop's own (its DDP ranks).

One hook serves the whole process, installed once and never removed (torch walks its hooks on
every step, so adding or removing one while another thread steps would break that thread's
step); each thread's :meth:`RateWatch.watching` block tells it which watch is that thread's.

Example:
    >>> import torch
    >>> watch = RateWatch()
    >>> weight = torch.zeros(1, requires_grad=True)
    >>> weight.grad = torch.ones(1)
    >>> opt = torch.optim.SGD([weight], lr=0.01)
    >>> with watch.watching(lambda: TrialRate(watch.checked_steps(), (0.1,), base=0.1, warmup=False)):
    ...     for _ in range(20):
    ...         opt.step()
    >>> watch.verdict().lr_not_applied
    True
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from bstune._validate import is_number

logger = logging.getLogger(__name__)

__all__ = ["RATE_SLACK", "RateVerdict", "RateWatch", "TrialRate"]

# a step follows the schedule when a rate is within this share of the schedule's (a hand-made warmup rounds its
# steps), plus FLOOR of the trial's base rate (near a decay's end a rate of 0.001 lr against 0.002 lr is no miss);
# the rate is the trial's when some group's highest came within this share of the base rate or the schedule's highest
RATE_SLACK = 0.2
FLOOR = 0.05
# steps off the schedule before any verdict, or a quarter of the steps (torch's own schedulers stepped per epoch,
# a hand-made warmup a step early or late)
MISSES_ALLOWED = 8
# steps a loop's own optimizer takes before it is compared with the space's (a one-step calibration is not the loop's)
OWN_STEPS = 9
# the warmup is not followed where at least this many of its steps, and more than a third, are off: a loop at the
# full rate misses two thirds of a linear warmup's steps or more (only the last ones come within the slack), a
# hand-made warmup a step early or late none
WARMUP_MISSES = 3


class TrialRate(NamedTuple):
    """The training step under way, the rates the trial's schedule allows for it (its own first), the trial's base
    rate there (its batch stage's, without warmup and decay) and whether it warms up."""

    step: int
    rates: tuple[float, ...]
    base: float
    warmup: bool


@dataclass(frozen=True)
class RateVerdict:
    """What :meth:`RateWatch.verdict` found: ``why`` (None where the steps followed the schedule, or no optimizer
    stepped) and whether the rate itself was not the trial's (``lr_not_applied``)."""

    why: str | None = None
    lr_not_applied: bool = False


@dataclass
class _Steps:
    """Training steps judged, and the first off the schedule: (step, applied, the schedule's, optimizer)."""

    checked: int = 0
    missed: int = 0
    first_miss: tuple[int, float, float, str] | None = None

    def add(self, hit: bool, miss: tuple[int, float, float, str] | None) -> None:
        self.checked += 1
        if not hit:
            self.missed += 1
            self.first_miss = self.first_miss or miss


class RateWatch:
    """The rates of the optimizers a trial function steps (see the module doc).

    ``on_own`` is told of the optimizer the loop made itself once it has stepped ``OWN_STEPS`` times, where
    no optimizer of ``ctx.make_optimizer`` or ``ctx.lr_scheduler`` steps (to compare it with the space's
    optimizer: a one-step calibration or a GAN's second optimizer beside the trial's is not the loop's);
    ``driven`` says whether ``ctx.lr_scheduler`` sets an optimizer's rates.
    """

    def __init__(
        self,
        on_own: Callable[[torch.optim.Optimizer], None] | None = None,
        driven: Callable[[torch.optim.Optimizer], bool] | None = None,
    ) -> None:
        self._on_own, self._driven = on_own, driven
        # ctx.make_optimizer's optimizers: each group's rate over the trial's; None for a group made at 0 (frozen)
        self._made: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[float | None, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._own_steps: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = weakref.WeakKeyDictionary()
        self._ours = False  # an optimizer of ctx.make_optimizer or ctx.lr_scheduler stepped
        self._all, self._warmup = _Steps(), _Steps()
        # (optimizer, group): the highest rate it stepped at; an optimizer made again each epoch is one
        self._peaks: dict[tuple[str, int], float] = {}
        self._wanted_peak = 0.0  # the schedule's highest over the steps seen
        self._bases: set[float] = set()  # the trial's base rates over the steps seen
        # the training step under way: its rate, whether some rate followed it, its first rate off
        self._now: TrialRate | None = None
        self._hit = False
        self._miss: tuple[int, float, float, str] | None = None
        self._broken = False  # the watch raised once: off, rather than break the loop's steps

    def made(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        """``optimizer`` is ``ctx.make_optimizer``'s, built at the trial's rate ``lr``: a group made at another
        rate (a backbone's tenth) is a multiple of the trial's, where one group holds the trial's rate itself
        (or is frozen at 0); else the groups hold rates of the loop's own."""
        ratios = [
            float(g["lr"]) / lr if lr > 0 and is_number(g.get("lr"), numpy=True) and g["lr"] > 0 else None
            for g in optimizer.param_groups
        ]
        if any(r is None or abs(r - 1.0) < 1e-9 for r in ratios):
            self._made[optimizer] = tuple(ratios)
        else:
            self._made[optimizer] = (1.0,) * len(ratios)

    def checked_steps(self) -> int:
        """Training steps judged so far: those in which some optimizer stepped."""
        return self._all.checked + (self._now is not None)

    @contextmanager
    def watching(self, expected: Callable[[], TrialRate | None]) -> Iterator[None]:
        """Check every optimizer step this thread takes inside the block against ``expected()`` (None: nothing to
        check now, the probe's ramp and still phase); another thread's steps are not this watch's (Ray's function
        trainables run trials on threads of one process)."""
        _install()
        previous = getattr(_current, "watch", None)
        _current.watch = (self, expected)
        try:
            yield
        finally:
            _current.watch = previous

    def _step(self, optimizer: torch.optim.Optimizer, expected: Callable[[], TrialRate | None]) -> None:
        if self._broken:
            return
        try:
            self._judge(optimizer, expected)
        except Exception:  # a check must not break the loop's training
            self._broken = True
            logger.warning("the learning-rate check failed and is off for this run", exc_info=True)

    def _judge(self, optimizer: torch.optim.Optimizer, expected: Callable[[], TrialRate | None]) -> None:
        now = expected()
        rates = _rates(optimizer)
        if now is None or rates is None:
            return
        if self._driven is not None and self._driven(optimizer):  # ctx.lr_scheduler sets its rates: followed
            self._ours = True
            self._at(now)
            self._hit = True
            return
        ratios = self._made.get(optimizer)
        if ratios is not None:
            self._ours = True
            name = "the optimizer from ctx.make_optimizer"
        else:
            name = f"the loop's own {type(optimizer).__name__}"
            self._own_steps[optimizer] = count = self._own_steps.get(optimizer, 0) + 1
            if count == OWN_STEPS and not self._ours and self._on_own is not None:
                self._on_own(optimizer)
        # a group added after ctx.make_optimizer built it (add_param_group) holds a rate of the loop's own; a group
        # whose parameters have no gradient (frozen, or empty) trains nothing at any rate
        scale = (*(ratios or ()), *(1.0,) * len(rates))
        applied = [
            (i, rate / q)
            for i, (rate, q, group) in enumerate(zip(rates, scale[: len(rates)], optimizer.param_groups, strict=True))
            if q and any(p.grad is not None for p in group["params"])
        ]
        if not applied:
            return
        self._at(now)
        for i, rate in applied:
            key = (name, i)
            self._peaks[key] = max(self._peaks.get(key, 0.0), rate)
        slack = FLOOR * now.base
        if any(abs(rate - w) <= RATE_SLACK * w + slack for _, rate in applied for w in now.rates):
            self._hit = True
        elif self._miss is None:
            wanted = now.rates[0]  # at the samples trained before the step
            nearest = min((rate for _, rate in applied), key=lambda rate: abs(rate - wanted))
            self._miss = (now.step, nearest, wanted, name)

    def _at(self, now: TrialRate) -> None:
        """Steps of optimizers now belong to training step ``now.step``: the one before is judged."""
        if self._now is None or now.step != self._now.step:
            self._close()
            self._now, self._hit, self._miss = now, False, None
            self._wanted_peak = max(self._wanted_peak, *now.rates)
            self._bases.add(now.base)

    def _close(self) -> None:
        """Judge the training step under way."""
        if self._now is None:
            return
        self._all.add(self._hit, self._miss)
        if self._now.warmup:
            self._warmup.add(self._hit, self._miss)
        self._now = None

    def verdict(self, schedule: str = "") -> RateVerdict:
        """Whether the loop trained at the trial's rates; ``schedule`` describes them for the message."""
        self._close()
        steps, warm = self._all, self._warmup
        off = steps.missed > max(MISSES_ALLOWED, steps.checked // 4)
        cold = warm.missed >= WARMUP_MISSES and warm.missed > warm.checked / 3  # the warmup not applied
        if not (off or cold):
            return RateVerdict()
        judged = steps if off else warm
        assert judged.first_miss is not None
        step, applied, wanted, name = judged.first_miss
        # the rate is the trial's where some group reached the base rate (a loop that ends before its warmup does
        # not: the schedule's highest, then), at a stage of a batch schedule or another
        references = {*self._bases, self._wanted_peak}
        lr_off = not any(abs(p - r) <= RATE_SLACK * r for p in self._peaks.values() for r in references)
        base = max(self._bases, default=self._wanted_peak)
        what = "" if off else " warmup"
        why = (
            f"{name} did not follow the trial's learning rate ({schedule}): {judged.missed} of the{what} "
            f"{judged.checked} steps were more than {RATE_SLACK:.0%} off it, the first at step {step} with rate "
            f"{applied:.4g} where the schedule gives {wanted:.4g}"
        )
        if lr_off:
            peak = max(p for (n, _), p in self._peaks.items() if n == name)
            why += (
                f"; the highest rate it stepped at was {peak:.4g}, {peak / base:.3g} times the trial's {base:.4g}: "
                "it was given a rate other than the trial's (a hard-coded lr=, or the trial's scaled), so the rates "
                "the study records, ranks and recommends are not those it trained at. Build it with lr=ctx.lr (or "
                "ctx.make_optimizer) and step ctx.lr_scheduler(opt)"
            )
        else:
            why += (
                ": the loop set rates of its own (a scheduler of its own, torch's CosineAnnealingLR say, or ctx.lr "
                "held as it is: without ctx.lr_scheduler, ctx.lr is the trial's rate without its warmup and decay), "
                "other than those the study records and recommends. Step ctx.lr_scheduler(opt) instead, or leave "
                "the schedule's settings out of the space"
            )
        return RateVerdict(why, lr_off)


_current = threading.local()  # this thread's watch: (RateWatch, expected), set by RateWatch.watching
_installed = False
_install_lock = threading.Lock()


def _hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """Every optimizer's step pre-hook: the step goes to this thread's watch, where one watches."""
    if torch.compiler.is_compiling():  # traced into a compiled function: no graph break for a check
        return
    current = getattr(_current, "watch", None)
    if current is not None:
        watch, expected = current
        watch._step(optimizer, expected)


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            register_optimizer_step_pre_hook(_hook)
            _installed = True


def _rates(optimizer: torch.optim.Optimizer) -> list[float] | None:
    """Each group's rate, or None where one cannot be read cheaply: a tensor on an accelerator (a capturable or
    fused optimizer's; reading it waits for the device), or none at all (Adafactor's relative steps)."""
    out = []
    for group in optimizer.param_groups:
        rate = group.get("lr")
        if isinstance(rate, torch.Tensor) and rate.numel() == 1 and rate.device.type == "cpu":
            rate = rate.item()
        if not is_number(rate, numpy=True):  # numpy's float32 is one
            return None
        out.append(float(rate))
    return out or None
