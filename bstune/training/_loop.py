"""The trainer: runs one TrainConfig on a Task, counting steps and samples.

Each step draws ``batch_size`` examples (a fresh permutation per epoch, the tail
that does not fill a batch dropped), optionally in micro-batches whose gradients
are accumulated into exactly the full-batch mean gradient. With ``num_workers``, a
DataLoader's worker processes load those same batches ahead of the steps
(:mod:`bstune.training._sampling`); evaluations fetch in-process. Evaluations happen at
shared sample milestones so runs of different batch sizes line up. A non-finite
loss, or one ``divergence_factor`` times the first step's, ends the run as
``diverged``; running out of device memory ends it as ``oom``.
Neither raises: a study records them and goes on.

The step's loss stays on the device: reading it is a host sync, which on CUDA would stall
the queue of kernels every step. The losses are read together every
``LOSS_CHECK_EVERY`` steps and before every evaluation, and checked in step order
(:class:`~bstune.training._losses.LossWatch`, the rule a user's loop and the data-parallel
ranks share): a diverging step ends the run at most ``LOSS_CHECK_EVERY - 1`` steps later (the steps in
between are taken and counted in ``steps``/``samples``; the message names the step that
diverged), and the first-loss reference is still the first step's.

Noise tracking (``track_noise``) measures every ``noise_every_steps``-th step. Where
:class:`~bstune.noise.PerExampleNorms` covers every trainable parameter, the batch's
per-example gradient norms are taken by hooks during the step's own backward pass (the
per-example two-batch estimator, b_small = 1); the hooks are on the model only during
measured steps. Otherwise (BatchNorm, layers without a per-example rule, the
preconditioned noise scale, gradient accumulation) the measured batch is split into
micro-batches whose gradients are taken one by one (the two-batch estimator at B/2).

A ``batch_schedule`` changes the batch size between steps (each step holds its stage's
batch, :mod:`bstune.training._sampling` cuts the stream, :func:`lr_at` gives the stage's
rate). The noise tracker's window closes at each change of batch size and the next one
is estimated at the new size, so no B_simple pools steps of two batch sizes.
Data-parallel runs refuse a schedule (:mod:`bstune.training._distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from bstune.data import batch_len, fetch_batch, is_tensor_pair, move_to_device, slice_batch
from bstune.errors import BstuneError, ConfigError
from bstune.noise import NoiseTracker, PerExampleNorms, adam_preconditioner, resolve_device, sq_norm_of
from bstune.task import Task
from bstune.training._config import TrainConfig
from bstune.training._distributed import DataParallel
from bstune.training._evaluate import MetricSet
from bstune.training._losses import Diverged, LossWatch
from bstune.training._result import Callback, Decision, EvalRecord, RunStatus, TrainResult, keep_progress
from bstune.training._sampling import training_batches
from bstune.training._schedule import lr_at

__all__ = ["Callback", "train"]

logger = logging.getLogger(__name__)

_EVAL_SUBSET_SEED = 20180614  # same training subset for every run, so train losses compare


_NO_AUTOCAST = contextlib.nullcontext()  # reusable: one fewer object per forward


_Diverged = Diverged


def _micro_bounds(batch: int, micro: int | None, split_for_noise: bool) -> list[tuple[int, int]]:
    if micro is not None and micro < batch:
        return [(s, min(s + micro, batch)) for s in range(0, batch, micro)]
    if split_for_noise:
        half = batch // 2
        return [(0, half), (half, batch)]
    return [(0, batch)]


def _milestones(config: TrainConfig) -> list[int]:
    every = config.eval_every
    marks = list(range(every, config.max_samples, every))
    return ([0] if config.eval_at_start else []) + marks + [config.max_samples]


def _as_decision(value: Decision | bool | None) -> Decision:
    if value is True or value == Decision.STOP:
        return Decision.STOP
    return Decision.CONTINUE


class _Run:
    """State of one training run (model, optimizer, counters, tracker)."""

    def __init__(
        self, task: Task, config: TrainConfig, model: nn.Module, device: torch.device, dist: DataParallel | None = None
    ) -> None:
        self.task, self.config, self.device = task, config, device
        self.dist = dist  # data parallel (bstune/training/_distributed.py), else None
        spec = task.optimizer_spec
        self.momentum = config.momentum if config.momentum is not None else spec.momentum
        self.model = model.to(device)
        self.model.train()
        self.name_of = {p: n for n, p in self.model.named_parameters() if p.requires_grad}
        self.param_list = list(self.name_of)
        self.optimizer = spec.build(
            self.param_list, lr=config.lr, momentum=self.momentum, weight_decay=config.weight_decay
        )
        dtype = config.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
        self.amp_dtype = getattr(torch, dtype)
        use_scaler = config.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.tracker = (
            NoiseTracker(config.batch_size, population=task.n_train, momentum=self.momentum)
            if config.track_noise
            else None
        )
        if config.noise_preconditioned and spec.family == "sgd":
            raise ConfigError(
                "the preconditioned noise scale needs an Adam-family optimizer",
                source="TrainConfig",
                field="noise_preconditioned",
            )
        gen = torch.Generator().manual_seed(_EVAL_SUBSET_SEED)
        n_sub = min(config.eval_train_examples, task.n_train)
        self.train_subset = torch.randperm(task.n_train, generator=gen)[:n_sub].sort().values
        # under DDP the ranks' own gradients give the small batch (_distributed.py): no hooks
        self.norms = self._per_example_norms() if self.tracker is not None and dist is None else None
        # in-process tensor pairs on the CPU are on the device already: skip move_to_device's walk
        self.host_batches = device.type == "cpu" and is_tensor_pair(task.train_dataset) and config.num_workers == 0
        self.lr: float | None = None  # the learning rate last written into the param groups
        constant = config.schedule == "constant" and not config.warmup_samples and config.batch_schedule is None
        self.constant_lr = config.lr if constant else None
        self.step = 0
        self.samples = 0
        self.losses = LossWatch(config.divergence_factor)  # the steps' losses, read on the host in batches
        if dist is not None:  # data parallel: DDP around the model, this rank's slice of every batch
            dist.wrap(self.model)
            self.batches = dist.training_batches(task, config)
        else:
            self.batches = training_batches(task, config, device)  # last: it may start worker processes

    def _per_example_norms(self) -> PerExampleNorms | None:
        """Hooks for the per-example measurement when they cover the whole model, else None
        (the measured steps then split their batch)."""
        cfg = self.config
        if cfg.noise_preconditioned:  # |c_i / p|² does not reduce to the hooks' per-tensor forms
            return None
        if cfg.micro_batch_size is not None and cfg.micro_batch_size < max(cfg.batch_sizes):
            return None  # the micro-batches accumulation makes anyway give the two-batch estimate
        try:
            # |G_B|² from p.grad (one kernel); two checked steps find a parameter used outside its layer
            norms = PerExampleNorms(self.model, grad_hooks=False, check_steps=2)
        except ConfigError as exc:  # BatchNorm in train mode
            logger.debug("noise tracking splits measured batches: %s", exc)
            return None
        if norms.uncovered():
            logger.debug("noise tracking splits measured batches: %s", norms.uncovered_reasons())
            norms.remove()
            return None
        norms.detach()  # attached for measured steps only
        return norms

    def close(self) -> None:
        """Shut the loader's worker processes down (they would otherwise wait for the garbage collector)."""
        batches, self.batches = self.batches, iter(())
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.config.amp:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- one optimizer step ------------------------------------------------------------
    def train_step(self) -> float:
        if self.dist is not None:  # data parallel: bstune/training/_distributed.py
            lr, diverged = self.dist.train_step(self)
            if diverged is not None:
                raise _Diverged(diverged)
            return lr
        cfg = self.config
        lr = self.constant_lr if self.constant_lr is not None else lr_at(cfg, self.samples)
        if lr != self.lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.lr = lr
        batch_data = next(self.batches)
        if not self.host_batches:
            batch_data = move_to_device(batch_data, self.device, non_blocking=True)
        inputs, targets = batch_data
        batch = batch_len(targets)
        if self.tracker is not None and batch != self.tracker.batch_size:  # a batch schedule's next stage
            self.tracker.flush(self.step, self.samples)  # its window holds the last stage's steps only
            self.tracker.batch_size = batch
        # Measured steps either run the hooks of the per-example norms in the plain backward()
        # (per_example) or take the autograd.grad route (one norm per micro-batch); the others
        # run a plain backward() and cost nothing extra.
        measure = self.tracker is not None and self.step % cfg.noise_every_steps == 0
        per_example = measure and self.norms is not None
        precond = None
        if measure and cfg.noise_preconditioned:
            measure = bool(self.optimizer.state)  # no second moments before the first step
            precond = adam_preconditioner(self.optimizer, self.model) if measure else None
        if cfg.micro_batch_size is None and not (measure and not per_example):
            bounds = [(0, batch)]
        else:
            bounds = _micro_bounds(batch, cfg.micro_batch_size, split_for_noise=measure and not per_example)
        scale = self.scaler.get_scale() if (self.scaler is not None and measure) else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        whole = len(bounds) == 1
        loss_total = torch.zeros((), device=self.device) if not whole else None
        small_terms: list[torch.Tensor] = []
        if per_example:
            assert self.norms is not None
            self.norms.attach()
            self.norms.enabled = True
        for start, stop in bounds:
            weight = (stop - start) / batch  # so the accumulated gradient is the full-batch mean
            with self.autocast():
                out = self.model(inputs if whole else slice_batch(inputs, start, stop))
                loss = self.task.loss(out, targets if whole else slice_batch(targets, start, stop)).float()
            if whole:  # weight 1: the same values and gradients without the two multiplications
                loss_total = loss.detach()
                scaled = loss
            else:
                assert loss_total is not None
                loss_total += loss.detach() * weight
                scaled = loss * weight
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            if measure and len(bounds) > 1:
                grads = torch.autograd.grad(scaled, self.param_list, allow_unused=True)
                present = [(p, g) for p, g in zip(self.param_list, grads, strict=True) if g is not None]
                micro_grads = [g for _, g in present]
                if precond is not None:
                    micro_grads = list(torch._foreach_div(micro_grads, [precond[self.name_of[p]] for p, _ in present]))
                # |G_j|² of this micro-batch's mean gradient (undo the weight and the loss scale)
                small_terms.append(sq_norm_of(micro_grads) / (weight * scale) ** 2)
                for p, g in present:
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
            else:
                scaled.backward()
        if per_example:
            self._measure_per_example(batch, scale, lr)
        assert loss_total is not None
        step, before = self.step, self.samples
        if measure and small_terms:
            pairs = [(p, p.grad) for p in self.param_list if p.grad is not None]
            full = [g for _, g in pairs]
            if precond is not None:
                full = list(torch._foreach_div(full, [precond[self.name_of[p]] for p, _ in pairs]))
            big = sq_norm_of(full)
            sizes = [stop - start for start, stop in bounds]
            harmonic = len(sizes) / sum(1.0 / s for s in sizes)
            assert self.tracker is not None
            self.tracker.update(float(torch.stack(small_terms).mean()), harmonic, float(big) / scale**2, lr)
        self.optimizer_step()
        self.step += 1
        self.samples += batch
        self.losses.add(loss_total, step, before)  # read every LOSS_CHECK_EVERY steps: raises Diverged
        return lr

    def _measure_per_example(self, batch: int, scale: float, lr: float) -> None:
        """Feed the tracker this step's per-example estimate (b_small = 1) from the hooks' norms.

        A model the hooks turn out not to handle (the check found a parameter used outside
        its layer, two forward passes, another batch dimension...) loses this step's
        measurement and falls back to split batches for the rest of the run.
        """
        assert self.norms is not None and self.tracker is not None
        self.norms.enabled = False
        try:
            sq = self.norms.sq_norms()
            fallback = bool(self.norms.uncovered())
        except BstuneError as exc:
            logger.warning(
                "per-example gradient norms do not fit this model (%s); the noise scale is measured from split "
                "batches from now on (as accurate, but each measured step costs more)",
                exc,
            )
            fallback = True
        if fallback:
            logger.debug("per-example norms leave out %s: splitting measured batches", self.norms.uncovered())
            self.norms.remove()
            self.norms = None
            return
        self.norms.detach()
        big = self.norms.batch_grad_sq
        if big is None:  # p.grad was empty before this step's one backward: it is Σ_i c_i
            big = float(sq_norm_of([p.grad for p in self.param_list if p.grad is not None]))
        # mean_i |g_i|² with g_i = B·c_i (each example's gradient), |G_B|² = |Σ_i c_i|²; undo the loss scale
        small = float(sq.sum()) * batch / scale**2  # B² · mean (a float64 mean costs 5x the sum here)
        self.tracker.update(small, 1, big / scale**2, lr)

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Continue from an earlier run's optimizer state, keeping this config's hyperparameters."""
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(copy.deepcopy(dict(state)))
        for group, own in zip(self.optimizer.param_groups, hyper, strict=True):
            group.update(own)

    def optimizer_step(self) -> None:
        clip = self.config.grad_clip
        params = self.param_list
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(self.optimizer)  # skipped when gradients overflowed
            self.scaler.update()
        else:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.optimizer.step()

    # -- evaluation (in-process: its batches are the fixed train subset and the validation set) ----
    def evaluate_on(self, dataset: Any, indices: torch.Tensor | None) -> tuple[float, dict[str, float]]:
        if self.dist is not None:  # data parallel: sharded over the ranks, reduced
            return self.dist.evaluate_on(self, dataset, indices)
        n = len(dataset) if indices is None else len(indices)
        loss_sum, metrics = 0.0, MetricSet(self.task.metrics)  # type: ignore[arg-type]  # Metric after Task's check
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, n, self.config.eval_batch_size):
                    stop = min(start + self.config.eval_batch_size, n)
                    idx = indices[start:stop] if indices is not None else torch.arange(start, stop)
                    inputs, targets = move_to_device(fetch_batch(dataset, idx), self.device, non_blocking=True)
                    with self.autocast():
                        out = self.model(inputs)
                        loss = self.task.loss(out, targets).float()
                    loss_sum += float(loss) * (stop - start)
                    metrics.add(out, targets, stop - start)
            values = metrics.values(n)
        finally:
            self.model.train()
        return loss_sum / n, values

    def record(self, milestone: int, lr: float, started: float) -> EvalRecord:
        self.losses.read()  # the window's batch losses, and the divergence check before evaluating
        train_loss, train_metrics = self.evaluate_on(self.task.train_dataset, self.train_subset)
        val_loss, val_metrics = self.evaluate_on(self.task.val_dataset, None)
        metrics = {f"train_{k}": v for k, v in train_metrics.items()}
        metrics.update({f"val_{k}": v for k, v in val_metrics.items()})
        if self.dist is not None and self.tracker is not None:  # data parallel: the window's local norms
            self.dist.feed_tracker(self.tracker)
        noise = self.tracker.flush(self.step, self.samples) if self.tracker is not None else None
        batch_loss = self.losses.take_window()
        return EvalRecord(
            milestone=milestone,
            samples=self.samples,
            step=self.step,
            lr=lr,
            train_loss=train_loss,
            val_loss=val_loss,
            batch_loss=batch_loss,
            metrics=metrics,
            elapsed_s=time.perf_counter() - started,
            noise=noise,
        )


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train(
    task: Task,
    config: TrainConfig,
    callback: Callback | None = None,
    *,
    model: nn.Module | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``task``'s model with ``config``; never raises for divergence or OOM.

    Args:
        task: the problem.
        config: batch size, learning rate, budget in samples, schedule, device...
        callback: called with each :class:`EvalRecord`; return ``Decision.STOP`` to
            end the run early (status ``stopped``), e.g. when a pruner says so. A STOP
            at the last milestone changes nothing: the run has spent its budget and
            ends ``completed``.
        model: start from this model instead of a fresh one (it is trained in place).
        optimizer_state: start the optimizer from this state (an earlier run's
            :attr:`TrainResult.optimizer_state`, e.g. its momentum buffers) instead of fresh;
            the config's learning rate, momentum and weight decay still apply.

    Under ``torch.distributed`` (a process group of N > 1 ranks, e.g. ``torchrun``, or
    :func:`~bstune.training.train_data_parallel`) the run is data-parallel: ``batch_size``
    is the global batch, each rank trains on its slice under DDP, and every rank returns
    the same record; ``callback`` is called on rank 0 only
    (:mod:`bstune.training._distributed`).

    Returns:
        A :class:`TrainResult` with the status, the evaluations at each sample
        milestone, the B_simple trajectory when ``track_noise`` is on, and the model.

    Example:
        >>> import torch, bstune
        >>> x = torch.randn(256, 4); y = (x[:, 0] > 0).long()
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=(x, y),
        ...                    val_data=(x[:64], y[:64]), loss=torch.nn.CrossEntropyLoss())
        >>> run = bstune.train(task, bstune.TrainConfig(batch_size=32, lr=0.5, max_samples=2048))
        >>> run.status.value, run.samples, run.final.val_loss < 0.5
        ('completed', 2048, True)
    """
    if max(config.batch_sizes) > task.n_train:
        raise ConfigError(
            f"{max(config.batch_sizes)} is larger than the training set ({task.n_train} examples)",
            source="TrainConfig",
            field="batch_size" if config.batch_schedule is None else "batch_schedule",
        )
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but torch sees no CUDA device", source="TrainConfig", field="device")
    data_parallel = DataParallel.current(config, device)  # under torch.distributed: this rank's part
    if data_parallel is not None:
        device = data_parallel.device
    started = time.perf_counter()
    train_time = 0.0
    status, message = RunStatus.COMPLETED, ""
    history: list[EvalRecord] = []
    run: _Run | None = None
    with _determinism(config.deterministic), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        try:
            run = _Run(
                task, config, model if model is not None else task.make_model(seed=config.seed), device, data_parallel
            )
            if optimizer_state is not None:
                run.load_optimizer_state(optimizer_state)
            milestones = _milestones(config)
            lr = lr_at(config, 0)
            pending = 0
            if milestones[0] == 0:
                history.append(run.record(0, lr, started))
                pending = 1
            while run.samples < config.max_samples:
                t0 = time.perf_counter()
                lr = run.train_step()
                train_time += time.perf_counter() - t0
                if run.samples < milestones[pending]:  # the milestones end at max_samples
                    continue
                reached = [m for m in milestones[pending:] if m <= run.samples]
                pending += len(reached)
                milestone = reached[-1] if reached else config.max_samples
                record = run.record(milestone, lr, started)
                history.append(record)
                if not math.isfinite(record.val_loss) or not math.isfinite(record.train_loss):
                    raise _Diverged(f"evaluation loss became non-finite at samples {run.samples}")
                if data_parallel is not None:  # rank 0 alone asks the callback; every rank learns the answer
                    asked = data_parallel.rank == 0 and callback is not None and _as_decision(callback(record))
                    stop = data_parallel.agree(asked == Decision.STOP)
                else:
                    stop = callback is not None and _as_decision(callback(record)) == Decision.STOP
                if stop and milestone < config.max_samples:  # at the last milestone the run has completed
                    status, message = RunStatus.STOPPED, f"stopped by callback at milestone {milestone}"
                    break
        except _Diverged as exc:
            status, message = RunStatus.DIVERGED, str(exc)
        except torch.OutOfMemoryError as exc:
            status = RunStatus.OOM
            message = f"out of memory at batch_size={config.batch_size}: {str(exc).splitlines()[0]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except (Exception, KeyboardInterrupt) as exc:  # the task's code raised, or Ctrl-C: up, with what it trained
            if run is not None:
                keep_progress(exc, run.samples, run.step)
            raise
        finally:
            if run is not None:
                run.close()
    if status is not RunStatus.COMPLETED:
        logger.info("run ended %s: %s", status.value, message)
    return TrainResult(
        config=config,
        status=status,
        steps=run.step if run else 0,
        samples=run.samples if run else 0,
        history=history,
        wall_time_s=time.perf_counter() - started,
        train_time_s=train_time,
        message=message,
        noise_trajectory=list(run.tracker.trajectory) if run and run.tracker else [],
        model=run.model if run else None,
        optimizer_state=run.optimizer.state_dict() if run else None,
    )
