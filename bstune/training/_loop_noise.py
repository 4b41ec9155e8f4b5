"""B_simple from a user's own backward pass: :class:`LoopNoiseTracker` (``ctx.noise_tracker(model)``).

During training it feeds the per-example gradient norms of measured steps to a
:class:`~bstune.noise.NoiseTracker` (the B_simple trajectory); in the probe's still phase,
where the rate is 0, :class:`_StillMeasure` pools consecutive steps' gradients at one point
into two-batch estimates. Split from :mod:`bstune.training._context`, which counts the trial.
"""

from __future__ import annotations

import logging
import math
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

    _train_config: TrainConfig
    n_train: int | None
    momentum: float
    freeze_from: int | None
    still_chunk_steps: int
    _tracker: Any

    @property
    def steps(self) -> int: ...
    @property
    def samples(self) -> int: ...
    def _batch_now(self) -> int: ...
    def _lr_now(self) -> float: ...


def _sq_sum(g: torch.Tensor) -> torch.Tensor:
    """|g|² in float64; a sparse ``g`` (an embedding's rows, summed over micro-batches) by its coalesced values."""
    return (g.coalesce().values() if g.is_sparse else g).double().pow(2).sum()


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

    def __init__(self, ctx: TrialCounters) -> None:
        self.ctx = ctx
        self.grad_sq: list[float] = []
        self.trace: list[float] = []
        self.big_sizes: list[int] = []
        self._sum: dict[str, torch.Tensor] | None = None
        self._small: list[float] = []
        self._sizes: list[int] = []
        self._chunk_epoch: int | None = None

    @property
    def empty(self) -> bool:
        """True before the first still step."""
        return self._sum is None and not self.grad_sq

    def add(self, small_sq: float, batch: int, grads: dict[str, torch.Tensor]) -> None:
        """One still step: its ``batch`` examples' mean |g_i|² and their gradient as the backward passes
        delivered it (summed over a step's micro-batches), not ``p.grad``, which the loop may have clipped."""
        ctx = self.ctx
        step = ctx.steps  # this step's index within the run (ctx.step() has not counted it yet)
        # chunks stay inside one epoch of ctx.loader's order (disjoint examples); a loop with its own
        # loader gives no epochs to respect, and its chunks are k batches wherever they fall
        per_epoch = ctx.n_train // batch if ctx.n_train else None
        epoch = step // per_epoch if per_epoch else 0
        if self._sum is not None and (epoch != self._chunk_epoch or len(self._small) >= ctx.still_chunk_steps):
            self.close()
        if self._sum is not None and set(grads) != set(self._sum):  # the coverage changed: a new chunk
            self.close()
        if self._sum is None:
            self._sum, self._chunk_epoch = {n: g.double() for n, g in grads.items()}, epoch
        else:
            for name, g in grads.items():
                self._sum[name].add_(g.double())
        self._small.append(small_sq)
        self._sizes.append(batch)

    def close(self) -> None:
        """End the current chunk: one two-batch estimate, if it held two steps or more."""
        from bstune.noise import two_batch_estimate

        if self._sum is not None and len(self._small) >= 2:
            k = len(self._small)
            big_size = sum(self._sizes)
            big_sq = float(sum(float(_sq_sum(t)) for t in self._sum.values())) / k**2
            small = sum(self._small) / k
            population = self.ctx.n_train if self.ctx.n_train is not None and big_size <= self.ctx.n_train else None
            g, t = two_batch_estimate(small, 1, big_sq, big_size, population)
            self.grad_sq.append(float(g))
            self.trace.append(float(t))
            self.big_sizes.append(big_size)
        self._sum, self._small, self._sizes = None, [], []

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
    and before ``optimizer.step()``; with gradient accumulation, after each micro-batch's backward.
    ``ctx.step`` closes the step: its micro-batches' examples are the step's batch.

    On measured steps (every ``noise_every_steps``-th) hooks record each example's
    contribution c_i to the gradient; with g_i = B c_i the per-example gradients and
    G_B = Σ c_i their mean (for a mean- or a sum-reduced loss alike, up to a common
    factor B_simple does not see), the two-batch estimator at micro-batch size 1 gives
    |G|² and tr(Σ) (McCandlish et al. 2018, App. A.1). Where the study does not track
    noise (a trial, not the probe) it installs nothing and :meth:`observe` does nothing.
    """

    def __init__(self, ctx: TrialCounters, model: nn.Module, previous: LoopNoiseTracker | None = None) -> None:
        self.ctx = ctx
        self.model_id = id(model)  # which model it reads (ctx.noise_tracker hands the same one back for it)
        self.norms: PerExampleNorms | None = None
        self.tracker: NoiseTracker | None = None
        self.still: _StillMeasure | None = None  # the probe's still phase: gradients at one point
        self._observed = 0  # optimizer steps closed (ctx.step), measured or not
        self.calls = 0  # observe() calls: none at all is a loop that never observes
        self._sq: list[torch.Tensor] = []  # this step's per-example norms, one tensor per micro-batch
        self._grads: dict[str, torch.Tensor] = {}  # and their gradients' sum, as the passes delivered them
        if not ctx._train_config.track_noise:
            return
        from bstune.noise import PerExampleNorms

        self.norms = norms = PerExampleNorms(model)
        norms.keep_grads = True  # the step's gradient as delivered: clipping, accumulation change p.grad
        self.covered = [p for name, p in model.named_parameters() if name in set(norms.covered())]
        if not self.covered:
            norms.remove()
            raise ConfigError(
                f"no trainable parameter of {type(model).__name__} sits in a layer whose per-example gradients "
                f"bstune can read ({', '.join(norms.uncovered()[:5])}); tune without the noise scale: "
                "mode='baseline' (bstune run --mode baseline)",
                source="ctx.noise_tracker",
            )
        if norms.uncovered():
            logger.info(
                "noise tracker: B_simple over %d parameter tensors; not covered: %s",
                len(self.covered),
                ", ".join(norms.uncovered()),
            )
        if previous is not None and previous.tracker is not None:  # another model mid-run: the run's measurement
            # goes on, and the old model's hooks come off (left on, they did per-example work every step)
            previous.remove()
            self.tracker, self.still, self._observed = previous.tracker, previous.still, previous._observed
            self.calls = previous.calls
        else:
            self.tracker = NoiseTracker(ctx._batch_now(), population=ctx.n_train, momentum=ctx.momentum)
            if ctx.freeze_from is not None:
                self.still = _StillMeasure(ctx)
        norms.enabled = self._observed % ctx._train_config.noise_every_steps == 0
        ctx._tracker = self

    def observe(self) -> None:
        """Read the gradients of the backward pass just run (on measured steps); with gradient accumulation,
        call it after each micro-batch's backward. ``ctx.step`` then closes the step."""
        self.calls += 1
        if self.norms is None or self.tracker is None or not self.norms.enabled:
            return
        passes = self.norms.backward_passes()
        if passes > 1:
            self.norms.reset()
            raise ConfigError(
                f"{passes} backward passes ran since its last call: call noise.observe() after each backward "
                "(with gradient accumulation, after each micro-batch's), and ctx.step(loss) once per optimizer step",
                source="ctx.noise_tracker",
            )
        sq = self.norms.sq_norms()  # in p.grad's units, as batch_grads: a loss scale cancels in the ratio
        self._sq.append(sq)
        pooled = sum(int(s.numel()) for s in self._sq)
        if pooled > self.ctx._batch_now():  # steps never closed would be pooled into one batch of another size
            self._sq, self._grads = [], {}
            raise ConfigError(
                f"has seen {pooled} examples since the last ctx.step, more than the step's batch size "
                f"{self.ctx._batch_now()}: call ctx.step(loss) once after each optimizer step",
                source="noise.observe()",
            )
        for name, g in (self.norms.batch_grads or {}).items():  # copies of the delivered gradients: ours to add to
            if name in self._grads:
                self._grads[name].add_(g)
            else:
                self._grads[name] = g

    def end_step(self, counted: int) -> None:
        """Close the optimizer step ``ctx.step`` is counting as ``counted`` samples (before it counts it): pool its
        micro-batches' examples into one two-batch estimate, and arm or disarm the hooks for the next step."""
        if self.norms is None or self.tracker is None:
            return
        sqs, grads, self._sq, self._grads = self._sq, self._grads, [], {}
        if sqs and grads:
            sq = torch.cat(sqs)
            batch = int(sq.numel())
            if batch < counted:  # the step trained fewer examples than it counts: every number would be mislabelled
                raise ConfigError(
                    f"noise.observe() saw {batch} examples in this step, but ctx.step counts {counted}: the loop's "
                    f"batches are not the trial's batch size {self.ctx._batch_now()} (a loader of your own: batch by "
                    "ctx.batch_size, and count a short batch with ctx.step(loss, samples=len(x)); or use ctx.loader)",
                    source="ctx.step",
                )
            if batch >= 2:
                self._add(float(sq.mean()) * batch * batch, batch, grads)  # |g_i|² with g_i = B c_i
        self._observed += 1
        self.norms.enabled = self._observed % self.ctx._train_config.noise_every_steps == 0

    def _add(self, small: float, batch: int, grads: dict[str, torch.Tensor]) -> None:
        """One measured step of ``batch`` examples: to the trajectory while training, else to the still phase."""
        assert self.tracker is not None
        if batch != self.tracker.batch_size:  # a batch schedule's next stage: close the last one's window
            self.tracker.flush(self.ctx.steps, self.ctx.samples)
            self.tracker.batch_size = batch
        if self.tracker.population is None:
            self.tracker.population = self.ctx.n_train
        sums = [_sq_sum(g) for g in grads.values()]
        big = float(torch.stack([t.to(sums[0].device) for t in sums]).sum())  # one device sync, not one per tensor
        frozen = self.ctx.freeze_from
        if frozen is None or self.ctx.samples < frozen:  # the trajectory: training, not the still phase
            self.tracker.update(small, 1, big, self.ctx._lr_now())
        elif self.still is not None and math.isfinite(small) and math.isfinite(big):  # AMP: an overflowing step
            # (skipped by its scaler) would spoil the whole chunk
            if self.still.empty:  # training ended here: close its window
                self.tracker.flush(self.ctx.steps, self.ctx.samples)
            self.still.add(small, batch, grads)

    def remove(self) -> None:
        """Take the hooks off the model and let go of it (its parameters and their gradients): what was measured
        stays in :attr:`tracker`."""
        if self.norms is not None:
            self.norms.remove()
        self.norms, self.covered, self._sq, self._grads = None, [], [], {}
