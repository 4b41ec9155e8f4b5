"""Data-parallel training runs: ``bstune.train`` under ``torch.distributed``, and a launcher.

When a process group is initialized (a script started by ``torchrun``, or
:func:`train_data_parallel`), :func:`bstune.train` runs data-parallel on its N ranks:

* ``config.batch_size`` is the *global* batch B. Every rank draws the same global batch
  indices from the seed (:func:`~bstune.training._sampling.epoch_batches`) and takes its
  contiguous slice: the first ``B % N`` ranks hold ``B // N + 1`` examples, the others
  ``B // N``. Each rank scales its loss by ``b_r·N/B`` so that DDP's average of the N
  gradients is the global mean gradient, slices equal or not. ``micro_batch_size`` still
  splits a rank's slice, accumulating under ``no_sync`` on all but the last micro-batch.
* The model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (DDP broadcasts
  rank 0's parameters; every rank also builds its model from the same seed). Steps and
  samples are counted globally. One scalar all-reduce per step gives every rank the global
  batch loss, so divergence is decided alike everywhere.
* Evaluations are sharded by evaluation batch and reduced (sums in float64), so every rank
  holds the same record; rank 0's buffers (BatchNorm statistics) are broadcast first. The
  callback (a pruner) runs on rank 0 alone and its decision is broadcast: all ranks stop together.
* A rank that runs out of memory ends its run ``oom``. Its peers cannot finish the step's
  gradient all-reduce without it: they fail when its process exits (gloo) or at the process
  group's timeout; :func:`train_data_parallel` stops them after a short grace and reports the
  run as ``oom``.

The noise scale for free (McCandlish et al. 2018, App. A.1). Each rank's local gradient g_r
is the mean over b_r examples, and the all-reduced gradient G_B the mean over B: exactly the
"small" and "big" batches of the two-batch estimator, so with ``track_noise`` a measured step
is *not* split into micro-batches and costs no extra backward, only norms:

* |g_r|²: on a measured step, a post-accumulate-grad hook on each parameter takes the norm of
  its *local* gradient as soon as it is ready (DDP, with gradients that are not bucket views,
  all-reduces a copy in its bucket and writes the mean back into ``.grad`` only when the
  backward ends), so DDP's built-in all-reduce runs untouched and still overlaps the backward;
  unmeasured steps carry no hook at all. The sum of their squares is over (b_r·N/B)², the
  rank's loss factor. (A Python communication hook taking each bucket's norm before its
  all-reduce is the other way; it replaces DDP's C++ all-reduce on *every* step, which cost
  about 10% of a step's CPU time in ``benchmarks/ddp_noise.py`` at commit b6f5910.)
* |G_B|²: every rank holds the synchronized gradient, so each takes the squared norm of its
  1/N of every gradient's elements; the shares sum to |G_B|².
* The per-step values are all-reduced as one tensor at each evaluation milestone (no extra
  collective per step); mean_r |g_r|², with the harmonic mean of the b_r as the small size,
  and |G_B|² go to :meth:`NoiseTracker.update` with the finite-population correction, as on
  one process.

With one rank (or no process group) nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bstune.data import batch_len, fetch_batch, move_to_device, slice_batch
from bstune.errors import ConfigError
from bstune.noise import NoiseTracker, adam_preconditioner, sq_norm_of
from bstune.task import Task
from bstune.training._config import TrainConfig
from bstune.training._evaluate import MetricSet
from bstune.training._losses import LossWatch
from bstune.training._sampling import rank_slices, training_batches
from bstune.training._schedule import lr_at


class RunState(Protocol):
    """What the data-parallel step and evaluation use of a training run's state (``_loop._Run``)."""

    task: Task
    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    param_list: list[nn.Parameter]
    name_of: dict[nn.Parameter, str]
    scaler: torch.amp.GradScaler | None
    tracker: NoiseTracker | None
    batches: Iterator[Any]
    step: int
    samples: int
    losses: LossWatch

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...
    def optimizer_step(self) -> None: ...


__all__ = ["DataParallel", "RunState"]

logger = logging.getLogger(__name__)


def _rank_device(device: torch.device) -> torch.device:
    """A CUDA device without an index means this rank's: ``LOCAL_RANK`` (torchrun), else the current one."""
    if device.type != "cuda" or device.index is not None:
        return device
    local = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())


@dataclass(eq=False)
class DataParallel:
    """This rank's part of a data-parallel run (built by :meth:`current`), and the noise measurement's state."""

    rank: int
    world_size: int
    batch_size: int
    device: torch.device
    comm_device: torch.device  # where collectives' small tensors live (CUDA for NCCL)
    slices: list[tuple[int, int]]
    ddp: DistributedDataParallel | None = None
    precond: dict[torch.Tensor, torch.Tensor] | None = None  # by parameter, for the preconditioned scale
    local_norms: list[torch.Tensor] = field(default_factory=list)  # |local grad| per parameter, measured step
    pending: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)

    @classmethod
    def current(cls, config: TrainConfig, device: torch.device) -> DataParallel | None:
        """The run's data-parallel setting when a process group of more than one rank is up; else ``None``.

        Raises:
            ConfigError: the global batch has fewer examples than there are ranks, or the run has a
                ``batch_schedule`` (not supported data-parallel).
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        world = dist.get_world_size()
        if config.batch_schedule is not None:
            raise ConfigError(
                "a batch-size schedule is not supported in data-parallel runs (each rank's slice and the "
                "noise measurement are set up for one global batch); run it on one process",
                source="TrainConfig",
                field="batch_schedule",
            )
        if config.batch_size < world:
            raise ConfigError(
                f"{config.batch_size} is the global batch; it must hold at least one example for each of "
                f"the {world} ranks (world size {world})",
                source="TrainConfig",
                field="batch_size",
            )
        device = _rank_device(device)
        nccl = dist.get_backend() == "nccl"
        return cls(
            rank=dist.get_rank(),
            world_size=world,
            batch_size=config.batch_size,
            device=device,
            comm_device=device if nccl else torch.device("cpu"),
            slices=rank_slices(config.batch_size, world),
        )

    @property
    def local_size(self) -> int:
        start, stop = self.slices[self.rank]
        return stop - start

    @property
    def loss_factor(self) -> float:
        """b_r·N/B: DDP averages the N rank gradients, and this makes the average the global mean."""
        return self.local_size * self.world_size / self.batch_size

    # -- set-up -------------------------------------------------------------------------------
    def training_batches(self, task: Task, config: TrainConfig) -> Iterator[Any]:
        """This rank's slices of the run's global batches (the loader's workers load only those)."""
        return training_batches(task, config, self.device, part=self.slices[self.rank])

    def wrap(self, model: torch.nn.Module) -> None:
        """Wrap ``model`` in DDP (gradients not bucket views: ``.grad`` stays local until the backward ends)."""
        ids = [self.device] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=False)

    def _take_norm(self, param: torch.Tensor) -> None:
        """Post-accumulate-grad hook of a measured step: the norm of this rank's gradient, before DDP's copy-back."""
        assert param.grad is not None
        grad = param.grad if self.precond is None else param.grad / self.precond[param]
        self.local_norms.append(torch.linalg.vector_norm(grad))

    # -- one optimizer step -------------------------------------------------------------------
    def train_step(self, run: RunState) -> tuple[float, str | None]:
        """One global step on this rank's slice; returns the lr and a divergence message (or ``None``)."""
        assert self.ddp is not None
        cfg = run.config
        lr = lr_at(cfg, run.samples)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = move_to_device(next(run.batches), self.device, non_blocking=True)
        local = batch_len(targets)
        measure = run.tracker is not None and run.step % cfg.noise_every_steps == 0
        self.precond = None
        if measure and cfg.noise_preconditioned:
            measure = bool(run.optimizer.state)  # no second moments before the first step
            if measure:
                by_name = adam_preconditioner(run.optimizer, run.model)
                self.precond = {p: by_name[run.name_of[p]] for p in run.param_list}
        micro = cfg.micro_batch_size
        bounds = [(s, min(s + micro, local)) for s in range(0, local, micro)] if micro else [(0, local)]
        scale = run.scaler.get_scale() if (run.scaler is not None and measure) else 1.0
        run.optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        hooks: list[Any] = []
        try:
            for i, (start, stop) in enumerate(bounds):
                weight = (stop - start) / local  # the accumulated local gradient is the slice's mean
                last = i == len(bounds) - 1
                if last and measure:  # the local norms, taken as each gradient is ready (the all-reduce overlaps)
                    self.local_norms = []
                    hooks = [p.register_post_accumulate_grad_hook(self._take_norm) for p in run.param_list]
                with contextlib.nullcontext() if last else self.ddp.no_sync():
                    with run.autocast():
                        out = self.ddp(slice_batch(inputs, start, stop))
                        loss = run.task.loss(out, slice_batch(targets, start, stop)).float()
                    loss_total += loss.detach() * weight
                    scaled = loss * (weight * self.loss_factor)
                    if run.scaler is not None:
                        scaled = run.scaler.scale(scaled)
                    scaled.backward()
        finally:
            for handle in hooks:
                handle.remove()
        # the global batch loss Σ_r (b_r/B)·loss_r: every rank decides divergence on the same number
        shared = (loss_total.double() * (local / self.batch_size)).to(self.comm_device)
        dist.all_reduce(shared)
        loss_value = float(shared)
        message = run.losses.check(loss_value, run.step, run.samples)  # the trainer's rule, on the global loss
        if message is not None:
            return lr, message
        if measure:
            # |G_B|² of the synchronized gradient, the same on every rank: each takes its 1/N of the
            # elements and the shares are summed with the local norms at the milestone
            pairs = [(p, self._share(p.grad)) for p in run.param_list if p.grad is not None]
            full = [g for _, g in pairs]
            if self.precond is not None:
                full = list(torch._foreach_div(full, [self._share(self.precond[p]) for p, _ in pairs]))
            big_share = sq_norm_of(full) / scale**2
            local_sq = torch.stack(self.local_norms).double().square().sum()
            small = local_sq / (self.loss_factor * scale) ** 2  # |g_r|² of this rank's mean gradient
            self.pending.append((small, big_share, lr))
        run.optimizer_step()
        run.step += 1
        run.samples += self.batch_size
        return lr, None

    def _share(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous 1/N of ``tensor``'s elements (a view)."""
        flat = tensor.reshape(-1)
        n = flat.numel()
        return flat[n * self.rank // self.world_size : n * (self.rank + 1) // self.world_size]

    def feed_tracker(self, tracker: NoiseTracker) -> None:
        """All-reduce the window's norms (one 2 x steps tensor) and hand each step to the tracker."""
        if not self.pending:
            return
        norms = torch.stack([torch.stack([s, b]) for s, b, _ in self.pending], dim=1).to(self.comm_device)
        dist.all_reduce(norms)  # Σ_r |g_r|² and Σ_r |share_r of G_B|² = |G_B|²
        smalls, bigs = (norms.cpu() / torch.tensor([[self.world_size], [1]])).tolist()
        sizes = [stop - start for start, stop in self.slices]
        harmonic = len(sizes) / sum(1.0 / s for s in sizes)
        for small, big, (_, _, lr) in zip(smalls, bigs, self.pending, strict=True):
            tracker.update(small, harmonic, big, lr)
        self.pending = []

    # -- evaluation and decisions ---------------------------------------------------------------
    def evaluate_on(self, run: RunState, dataset: Any, indices: torch.Tensor | None) -> tuple[float, dict[str, float]]:
        """``run.evaluate_on`` sharded: rank r takes evaluation batches r, r+N, ...; the sums are all-reduced."""
        for buffer in run.model.buffers():  # BatchNorm statistics: rank 0's, as DDP's forward uses
            dist.broadcast(buffer, 0)
        n = len(dataset) if indices is None else len(indices)
        step = run.config.eval_batch_size
        loss_sum, metrics = 0.0, MetricSet(run.task.metrics)  # type: ignore[arg-type]  # Metric after Task's check
        run.model.eval()
        try:
            with torch.no_grad():
                for start in list(range(0, n, step))[self.rank :: self.world_size]:
                    stop = min(start + step, n)
                    idx = indices[start:stop] if indices is not None else torch.arange(start, stop)
                    inputs, targets = move_to_device(fetch_batch(dataset, idx), self.device, non_blocking=True)
                    with run.autocast():
                        out = run.model(inputs)
                        loss = run.task.loss(out, targets).float()
                    loss_sum += float(loss) * (stop - start)
                    metrics.add(out, targets, stop - start)
        finally:
            run.model.train()
        mine, outputs, targets = metrics.partial()
        # without whole-set metrics every rank holds sums of the same metrics; with them, the sums (a rank's
        # own fallback ones too) travel with the outputs below
        keys = sorted(mine) if not metrics.declared_whole else []
        total = torch.tensor([loss_sum] + [mine[k] for k in keys], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(total)
        summed = total.tolist()
        if not metrics.declared_whole:
            return summed[0] / n, {k: v / n for k, v in zip(keys, summed[1:], strict=True)}
        # whole-set metrics: every rank's outputs and targets, on every rank. NCCL sends objects through the
        # current CUDA device, which is cuda:0 on every rank unless the script set it: use this rank's.
        parts: list[Any] = [None] * self.world_size
        device = torch.device(self.comm_device)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            dist.all_gather_object(parts, (mine, outputs, targets))
        return summed[0] / n, metrics.combine(parts, n)

    def agree(self, stop: bool) -> bool:
        """Rank 0's decision, on every rank."""
        flag = torch.tensor([1 if stop else 0], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(flag, 0)
        return bool(flag.item())


# -- the launcher ------------------------------------------------------------------------------
