"""B_simple from a user's own backward pass: :class:`LoopNoiseTracker` (``ctx.noise_tracker(model)``).

During training it feeds the per-example gradient norms of measured steps to a
:class:`~bstune.noise.NoiseTracker` (the B_simple trajectory); in the probe's still phase,
where the rate is 0, :class:`_StillMeasure` pools consecutive steps' gradients at one point
into two-batch estimates. Split from :mod:`bstune.training._context`, which counts the trial.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from bstune.errors import ConfigError
from bstune.noise import NoiseTracker
from bstune.training._config import TrainConfig

if TYPE_CHECKING:
    from bstune.noise import PerExampleNorms

__all__ = ["LoopNoiseTracker"]

logger = logging.getLogger("bstune.training._context")  # the name users' log filters already know


class TrialCounters(Protocol):
    """What the tracker reads of a :class:`~bstune.training.TrialContext` (and sets: ``_tracker``)."""

    train_config: TrainConfig
    n_train: int | None
    momentum: float
    freeze_from: int | None
    still_chunk_steps: int
    _tracker: Any

    @property
    def steps(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...


class _StillMeasure:
    """B_simple at one point: the probe's still phase, where the rate is 0 and every step's gradient
    is another batch at the same parameters.

    Steps are grouped into chunks of consecutive batches of one epoch (disjoint examples, drawn
    without replacement); a chunk's mean gradient is that of its k·B examples, its examples'
    per-example norms the small batches, so each chunk gives one two-batch estimate at batch
    sizes 1 and k·B (McCandlish et al. 2018, App. A.1, with the finite-population correction),
    which resolves |G|² much better than one batch of B would. The interval comes from the
    spread over chunks (:func:`~bstune.noise.summarize`).
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]], norms: PerExampleNorms, ctx: TrialCounters) -> None:
        self.named, self.norms, self.ctx = named, norms, ctx
        self.grad_sq: list[float] = []
        self.trace: list[float] = []
        self.big_sizes: list[int] = []
        self._sum: list[torch.Tensor] | None = None
        self._small: list[float] = []
        self._chunk_epoch: int | None = None

    @property
    def empty(self) -> bool:
        """True before the first still step."""
        return self._sum is None and not self.grad_sq

    def add(self, small_sq: float, batch: int) -> None:
        """One still step: this batch's mean |g_i|² and its gradient (read from ``p.grad``)."""
        ctx = self.ctx
        step = ctx.steps  # this step's index within the run (ctx.step() has not counted it yet)
        # chunks stay inside one epoch of ctx.loader's order (disjoint examples); a loop with its own
        # loader gives no epochs to respect, and its chunks are k batches wherever they fall
        per_epoch = ctx.n_train // batch if ctx.n_train else None
        epoch = step // per_epoch if per_epoch else 0
        if self._sum is not None and (epoch != self._chunk_epoch or len(self._small) >= ctx.still_chunk_steps):
            self.close()
        covered = set(self.norms.covered())  # as batch_grad_sq and the per-example norms count them
        grads = [p.grad.detach().double() for n, p in self.named if n in covered and p.grad is not None]
        if self._sum is not None and len(grads) != len(self._sum):
            self.close()
        if self._sum is None:
            self._sum, self._chunk_epoch = [g.clone() for g in grads], epoch
        else:
            for total, g in zip(self._sum, grads, strict=True):
                total.add_(g)
        self._small.append(small_sq)

    def close(self) -> None:
        """End the current chunk: one two-batch estimate, if it held two steps or more."""
        from bstune.noise import two_batch_estimate

        if self._sum is not None and len(self._small) >= 2:
            k = len(self._small)
            big_size = k * self.ctx.batch_size
            big_sq = float(sum(float((t / k).pow(2).sum()) for t in self._sum))
            small = sum(self._small) / k
            population = self.ctx.n_train if self.ctx.n_train is not None and big_size <= self.ctx.n_train else None
            g, t = two_batch_estimate(small, 1, big_sq, big_size, population)
            self.grad_sq.append(float(g))
            self.trace.append(float(t))
            self.big_sizes.append(big_size)
        self._sum, self._small = None, []

    def estimate(self) -> Any:
        """The still phase's :class:`~bstune.noise.NoiseScaleEstimate`; needs two chunks or more."""
        from bstune.noise import summarize

        self.close()
        if len(self.grad_sq) < 2:
            return None
        return summarize(
            self.grad_sq,
            self.trace,
            batch_size=self.big_sizes[0],
            micro_batch_size=1,
            method="per_example",
            population=self.ctx.n_train,
            n_examples=sum(self.big_sizes),
        )


class LoopNoiseTracker:
    """B_simple from the user's backward pass: call :meth:`observe` after ``loss.backward()``
    and before ``optimizer.step()``.

    On measured steps (every ``noise_every_steps``-th) hooks record each example's
    contribution c_i to the gradient; with g_i = B c_i the per-example gradients and
    G_B = Σ c_i their mean (for a mean- or a sum-reduced loss alike, up to a common
    factor B_simple does not see), the two-batch estimator at micro-batch size 1 gives
    |G|² and tr(Σ) (McCandlish et al. 2018, App. A.1). Where the study does not track
    noise (a trial, not the probe) it installs nothing and :meth:`observe` does nothing.
    """

    def __init__(self, ctx: TrialCounters, model: nn.Module) -> None:
        self.ctx = ctx
        self.norms: PerExampleNorms | None = None
        self.tracker: NoiseTracker | None = None
        self.still: _StillMeasure | None = None  # the probe's still phase: gradients at one point
        self._observed = 0
        if not ctx.train_config.track_noise:
            return
        from bstune.noise import PerExampleNorms

        self.norms = norms = PerExampleNorms(model)
        self.covered = [p for name, p in model.named_parameters() if name in set(norms.covered())]
        if not self.covered:
            norms.remove()
            raise ConfigError(
                f"no trainable parameter of {type(model).__name__} sits in a layer whose per-example gradients "
                f"bstune can read ({', '.join(norms.uncovered()[:5])}); give the study prior settings "
                "(a known B_noise) or run mode='baseline'",
                source="ctx.noise_tracker",
            )
        if norms.uncovered():
            logger.info(
                "noise tracker: B_simple over %d parameter tensors; not covered: %s",
                len(self.covered),
                ", ".join(norms.uncovered()),
            )
        self.tracker = NoiseTracker(ctx.batch_size, population=ctx.n_train, momentum=ctx.momentum)
        if ctx.freeze_from is not None:
            self.still = _StillMeasure(list(model.named_parameters()), norms, ctx)
        norms.enabled = True
        ctx._tracker = self

    def observe(self) -> None:
        """Read this step's gradients (measured steps only); the next step's hooks are armed or disarmed."""
        if self.norms is None or self.tracker is None:
            return
        if self.norms.enabled:
            sq = self.norms.sq_norms()  # in p.grad's units, as batch_grad_sq: a loss scale cancels in the ratio
            big = self.norms.batch_grad_sq
            batch = int(sq.numel())
            if batch >= 2 and big is not None:
                if batch != self.tracker.batch_size:  # a batch schedule's next stage: close the last one's window
                    self.tracker.flush(self.ctx.steps, self.ctx.samples)
                    self.tracker.batch_size = batch
                small = float(sq.mean()) * batch * batch  # |g_i|² with g_i = B c_i
                if self.tracker.population is None:
                    self.tracker.population = self.ctx.n_train
                frozen = self.ctx.freeze_from
                if frozen is None or self.ctx.samples < frozen:  # the trajectory: training, not the still phase
                    self.tracker.update(small, 1, big, self.ctx.lr)
                elif self.still is not None:
                    if self.still.empty:  # training ended here: close its window
                        self.tracker.flush(self.ctx.steps, self.ctx.samples)
                    self.still.add(small, batch)
        self._observed += 1
        self.norms.enabled = self._observed % self.ctx.train_config.noise_every_steps == 0

    def remove(self) -> None:
        if self.norms is not None:
            self.norms.remove()
