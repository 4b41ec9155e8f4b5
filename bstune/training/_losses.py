"""A run's training losses: the divergence rule, and the window of batch losses between evaluations.

One rule for every way a run trains (bstune's trainer, its data-parallel ranks, a user's loop
through ``ctx.step``): a non-finite loss, or one ``divergence_factor`` times the first step's,
ends the run as diverged, and the message names the step (its index from 0) and the samples
trained before it. A loss still on its device is not read on the host at once: reading it is a
sync, which on CUDA stalls the queue of kernels, so losses are read together every
:data:`LOSS_CHECK_EVERY` steps (and whenever the run asks, before an evaluation), in step order.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LOSS_CHECK_EVERY", "Diverged", "LossWatch"]

LOSS_CHECK_EVERY = 16  # steps between host reads of the training losses (the divergence check's lag)


class Diverged(Exception):
    """The loss became non-finite or blew up: the run ends ``diverged`` (the message says where)."""


class LossWatch:
    """The losses of a run's steps, checked in step order, and their mean over the current window.

    Example:
        >>> watch = LossWatch(divergence_factor=100.0)
        >>> for step, loss in enumerate([2.0, 1.0, torch.tensor(0.5)]):
        ...     watch.add(loss, step, before=32 * step)
        >>> watch.read(); watch.take_window()
        1.1666666666666667
        >>> watch.check(float("nan"), 3, before=96)
        'training loss became nan at step 3 (samples 96)'
    """

    def __init__(self, divergence_factor: float | None, *, copy: bool = False) -> None:
        self.factor = divergence_factor
        self.first: float | None = None  # the first step's loss: the reference of the blow-up rule
        self._copy = copy  # keep a copy of each tensor: a loop may reuse its loss buffer in place
        self._unread: list[tuple[torch.Tensor | float, int, int]] = []  # (loss, step, samples before it)
        self._sum = 0.0
        self._steps = 0

    def add(self, loss: torch.Tensor | float, step: int, before: int) -> None:
        """Step ``step``'s loss (``before``: the samples trained before it); a number is checked at once, tensors
        every :data:`LOSS_CHECK_EVERY` steps. Raises :class:`Diverged` when a step read diverged."""
        if isinstance(loss, torch.Tensor):
            kept = loss.detach().reshape(())
            self._unread.append((kept.clone() if self._copy else kept, step, before))
            if len(self._unread) >= LOSS_CHECK_EVERY:
                self.read()
        else:
            self._unread.append((float(loss), step, before))
            self.read()

    def read(self) -> None:
        """Read the unread losses (one host sync for the tensors) and check them in step order; raises
        :class:`Diverged` at the first that diverged."""
        unread, self._unread = self._unread, []
        tensors = [v for v, _, _ in unread if isinstance(v, torch.Tensor)]
        # stacked on the first one's device (a model spread over devices may give its loss on another), as
        # float32 (MPS has no float64)
        read = iter(torch.stack([t.to(tensors[0].device, torch.float32) for t in tensors]).tolist() if tensors else [])
        for loss, step, before in unread:
            message = self.check(next(read) if isinstance(loss, torch.Tensor) else loss, step, before)
            if message is not None:
                raise Diverged(message)

    def check(self, value: float, step: int, before: int) -> str | None:
        """The rule on one loss read on the host: the message where it diverged, else None (and it joins the
        window)."""
        where = f"at step {step} (samples {before})"
        if not math.isfinite(value):
            return f"training loss became {value} {where}"
        if self.first is None:
            self.first = value
        elif self.factor is not None and value > self.factor * max(self.first, 1e-12):
            return f"training loss {value:.4g} exceeded {self.factor:g}x the first step's {self.first:.4g} {where}"
        self._sum += value
        self._steps += 1
        return None

    def take_window(self) -> float:
        """The mean loss of the steps read since the last call (nan when none), and a new window."""
        mean = self._sum / self._steps if self._steps else math.nan
        self._sum, self._steps = 0.0, 0
        return mean
