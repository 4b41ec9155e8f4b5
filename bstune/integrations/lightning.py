"""Tune a Lightning ``LightningModule`` with bstune: the ``Trainer`` runs the trial.

A trial function builds the module from ``ctx.config`` and hands it to :func:`fit`::

    from bstune.integrations.lightning import fit

    def train(ctx: bstune.TrialContext) -> None:
        module = LitDigits(hidden=ctx.config.get("model.hidden", 64), lr=ctx.config["lr"])
        fit(ctx, module, train_dataset, val_dataloaders=val_loader)

:func:`fit` builds a ``lightning.Trainer`` for the trial (as many steps as the sample
budget needs, validation at the study's milestones, the device the study chose; no
logger, checkpoints or progress bar unless asked for) and trains on
``ctx.loader(train_dataset)``. :class:`BstuneCallback` does the rest, and can go into
a ``Trainer`` of your own instead:

- the module's optimizer follows ``ctx.lr_scheduler`` (the trial's warmup and decay, the
  probe's LR ramp); schedulers from ``configure_optimizers`` are set aside, with a warning;
- ``ctx.noise_tracker(module)`` observes each step's gradients after ``backward`` and
  before the optimizer step (``on_before_optimizer_step``), as the probe needs;
- ``ctx.step(loss)`` counts each optimizer step with the loss ``training_step`` returned
  (a non-finite one ends the trial diverged);
- after a validation at a milestone, ``ctx.report`` gets every scalar metric the module
  logged (``trainer.callback_metrics``: ``self.log("val_loss", ...)`` is the study's
  ``val_loss``, ``"train_loss"`` its generalization gap), and a pruned trial's
  :class:`~bstune.training.TrialPruned` leaves ``trainer.fit`` (Lightning re-raises what a
  callback raises, after its ``on_exception`` hooks);
- the trainer stops once ``ctx.done``, after validating at the last milestone.

One optimizer step is one batch of ``ctx.config["batch_size"]`` examples, so
gradient accumulation (``accumulate_grad_batches``) and training on several devices are
refused: the study tunes the batch size itself.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from bstune._validate import is_number
from bstune.errors import ConfigError, DependencyError
from bstune.training import TrialContext

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.types import STEP_OUTPUT
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise DependencyError(
        f"bstune.integrations.lightning needs Lightning ({exc}); install it with: pip install 'bstune[lightning]'"
    ) from exc

__all__ = ["BstuneCallback", "fit"]

logger = logging.getLogger(__name__)

_OVERWRITING = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)
_SOURCE = "bstune.integrations.lightning"
# Trainer settings the trial owns: its length, its validation schedule, its batch size
_OWNED = (
    "max_steps",
    "max_epochs",
    "min_steps",
    "min_epochs",
    "max_time",
    "val_check_interval",
    "check_val_every_n_epoch",
    "limit_train_batches",
    "accumulate_grad_batches",
    "overfit_batches",
    "fast_dev_run",
)


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The training loss in what ``training_step`` returned (a tensor, or a dict with ``"loss"``)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return outputs
    return None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The logged metrics that are single numbers, as floats."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1:
                out[name] = float(value.detach())
        elif is_number(value):
            out[name] = float(value)
    return out


class BstuneCallback(pl.Callback):
    """Connects a Lightning ``Trainer`` to a bstune trial (see the module's docstring).

    Train on ``ctx.loader(dataset)`` (one endless stream of the trial's batches, so one
    epoch); the callback decides when validation runs, whatever ``val_check_interval`` says.

    Args:
        ctx: the trial's context, as given to ``train(ctx)``.

    Raises:
        ConfigError: (when ``trainer.fit`` starts) gradient accumulation, more than one device
            or optimizer, a training stream that is not ``ctx.loader``'s, or float16 loss
            scaling while the probe measures the noise scale.
    """

    def __init__(self, ctx: TrialContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._schedulers: list[Any] = []
        self._noise: Any = None
        self._observed = False
        self._warned_no_loss = False
        self._limit_val: int | float | None = None  # limit_val_batches, while the end skips validation

    # -- checks -------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise ConfigError(
                f"a bstune trial trains on one device, got {trainer.world_size} processes; set devices=1",
                source=_SOURCE,
                field="devices",
            )
        self._check_accumulation(trainer)

    def _check_accumulation(self, trainer: pl.Trainer) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"got {trainer.accumulate_grad_batches}; bstune counts one optimizer step per batch of the "
                "trial's batch_size, which the study tunes (accumulation would train at a multiple of it); "
                "set it to 1",
                source=_SOURCE,
                field="accumulate_grad_batches",
            )

    # -- the hooks ------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the optimizers were made and a checkpoint restored: the trial's schedule, the noise
        tracker, the first milestone's validation."""
        ctx = self.ctx
        if ctx.n_train is None:
            raise ConfigError(
                "train on ctx.loader(dataset) (trainer.fit(module, ctx.loader(train_set), ...)): the study sets "
                "the batch size and counts samples by it",
                source=_SOURCE,
                field="train_dataloaders",
            )
        if len(trainer.optimizers) != 1:
            raise ConfigError(
                f"configure_optimizers made {len(trainer.optimizers)} optimizers; bstune schedules and counts one",
                source=_SOURCE,
                field="configure_optimizers",
            )
        optimizer = trainer.optimizers[0]
        # OneCycleLR and CyclicLR start the rate where they say, and keep no record of the one the optimizer
        # was built at but its default
        overwrote = any(isinstance(c.scheduler, _OVERWRITING) for c in trainer.lr_scheduler_configs)
        if overwrote and len({group.get("initial_lr") for group in optimizer.param_groups}) > 1:
            raise ConfigError(
                "OneCycleLR or CyclicLR in configure_optimizers overwrote the rates the optimizer's parameter "
                "groups were built at, and they differ: the trial's schedule cannot tell their ratios; drop it "
                "(ctx.lr_scheduler sets the rate)",
                source=_SOURCE,
                field="configure_optimizers",
            )
        if trainer.lr_scheduler_configs:
            names = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            logger.warning(
                "the trial's learning-rate schedule (ctx.lr_scheduler) replaces %s from configure_optimizers%s",
                names,
                f"; the optimizer's groups go back to its default rate, {optimizer.defaults['lr']:.4g}"
                if overwrote and "lr" in optimizer.defaults
                else "",
            )
            trainer.strategy.lr_scheduler_configs = []
        for group in optimizer.param_groups:  # a torch scheduler may have moved the rate already
            if overwrote and "lr" in optimizer.defaults:
                group["lr"] = optimizer.defaults["lr"]
            elif "initial_lr" in group:
                group["lr"] = group["initial_lr"]
        self._schedulers = [ctx.lr_scheduler(optimizer)]
        if ctx._train_config.track_noise and getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ConfigError(
                "float16 loss scaling changes the gradients' scale from step to step (and skips steps), "
                "which the noise tracker's sums over steps do not undo; use precision='bf16-mixed' or 32 while "
                "the probe runs",
                source=_SOURCE,
                field="precision",
            )
        self._noise = ctx.noise_tracker(pl_module)
        trainer.val_check_batch = self._next_validation()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._check_accumulation(trainer)  # a GradientAccumulationScheduler may change it at any epoch
        self._observed = False

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """After ``backward`` (Lightning calls it once the closure ran), before clipping and the step."""
        if self._noise is not None and not self._observed:
            self._noise.observe()
            self._observed = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        """After the optimizer step: the next step's rate, the step counted, the trainer stopped when done."""
        ctx = self.ctx
        for scheduler in self._schedulers:
            scheduler.step()
        loss = _loss_of(outputs)
        if loss is None and not self._warned_no_loss:
            logger.warning(
                "training_step returned no loss: bstune cannot catch divergence, and the probe's LR range test "
                "needs it; return the loss (or a dict with 'loss')"
            )
            self._warned_no_loss = True
        ctx.step(loss)
        if not ctx._is_done():
            return
        trainer.should_stop = True  # Lightning validates once more before it stops...
        pending = ctx.next_milestone
        if pending is None or pending > ctx.samples:  # ...which only the last milestone needs
            self._limit_val = trainer.limit_val_batches
            trainer.limit_val_batches = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At a milestone: the logged metrics to ``ctx.report`` (which raises TrialPruned when pruned)."""
        ctx = self.ctx
        if trainer.sanity_checking or not ctx.at_milestone():
            return
        metrics = _scalars(trainer.callback_metrics)
        if ctx.objective not in metrics:
            raise ConfigError(
                f"the module logged {', '.join(sorted(metrics)) or 'nothing'} but not the study's objective "
                f"{ctx.objective!r}; log it in validation_step (self.log({ctx.objective!r}, ...)) or choose "
                "objective= among those",
                source=_SOURCE,
                field="callback_metrics",
            )
        ctx.report(**metrics)
        trainer.val_check_batch = self._next_validation()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore(trainer)

    # -- inside ---------------------------------------------------------------------------
    def _next_validation(self) -> float:
        """The batch count at which the next milestone is reached (Lightning validates when the count
        is a multiple of ``val_check_batch``, and none before it is); inf: no more milestones."""
        mark = self.ctx.next_milestone
        if mark is None:
            return math.inf
        return max(self.ctx.steps + 1, math.ceil(mark / self.ctx._batch_now()))

    def _restore(self, trainer: pl.Trainer) -> None:
        if self._limit_val is not None:
            trainer.limit_val_batches, self._limit_val = self._limit_val, None


def _device_settings(device: torch.device) -> dict[str, Any]:
    """Lightning's ``accelerator``/``devices`` for the trial's device."""
    if device.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index] if device.index is not None else 1}
    if device.type == "mps":
        return {"accelerator": "mps", "devices": 1}
    raise ConfigError(f"Lightning has no accelerator for device {device}", source=_SOURCE, field="device")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's INFO lines (devices found, why it stopped, tips) off: a study makes many trainers."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        lightning_logger.setLevel(level)


def fit(
    ctx: TrialContext,
    module: pl.LightningModule,
    train_dataset: torch.utils.data.Dataset[Any],
    val_dataloaders: Any = None,
    *,
    num_workers: int | None = None,
    collate_fn: Any = None,
    pin_memory: bool | None = None,
    loader_kwargs: Mapping[str, Any] | None = None,
    callbacks: Sequence[pl.Callback] | pl.Callback = (),
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """Train ``module`` as the trial ``ctx``: a ``Trainer`` made for it fits on ``ctx.loader(train_dataset)``.

    Args:
        ctx: the trial's context.
        module: the ``LightningModule``, built from ``ctx.config``; its ``configure_optimizers``
            should use ``ctx.config["lr"]`` (rates of other parameter groups keep their ratio to it).
        train_dataset: a map-style dataset; the study draws the trial's batches from it.
        val_dataloaders: what ``Trainer.fit`` takes (None: the module's ``val_dataloader``).
            Several loaders are fine: log with ``add_dataloader_idx=False`` to keep the names.
        num_workers, collate_fn, pin_memory, loader_kwargs: for the training ``DataLoader``; workers and
            pinning default to the trial's, as :meth:`~bstune.TrialContext.loader`'s do (a study's ``num_workers``).
        callbacks: more Lightning callbacks.
        **trainer_kwargs: other ``lightning.Trainer`` settings (``precision``,
            ``gradient_clip_val``, ``logger``, ``enable_progress_bar``, ``accelerator``...). The
            defaults: the study's device, no logger, no checkpoints, no progress bar or model
            summary, no sanity check. The trial's length and validation schedule are bstune's.
            Lightning's INFO lines are off while it runs (a study makes many trainers).

    Returns:
        The ``Trainer``, after fitting (``trainer.callback_metrics`` holds the last validation's).

    Raises:
        ConfigError: a setting the trial owns was given (``max_steps``, ``val_check_interval``,
            ``accumulate_grad_batches``...), or :class:`BstuneCallback` refused the setup.
        TrialPruned: the study's pruner stopped the trial (let it propagate).
    """
    owned = sorted(set(_OWNED) & trainer_kwargs.keys())
    if owned:
        raise ConfigError(
            "bstune sets the trial's length, validation schedule and batch size (from ctx); leave it out",
            source=f"{_SOURCE}.fit",
            field=owned[0],
        )
    extra = [callbacks] if isinstance(callbacks, pl.Callback) else list(callbacks)
    settings: dict[str, Any] = {
        **_device_settings(ctx.device),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_kwargs,
    }
    steps = math.ceil(ctx.budget_samples / ctx._batch_now())
    with _quiet():
        trainer = pl.Trainer(
            max_steps=steps,
            max_epochs=1,  # ctx.loader is one endless stream, which stops when the trial is done
            check_val_every_n_epoch=None,  # validation counts batches across the stream; the callback sets when
            val_check_interval=max(1, math.ceil(ctx._train_config.eval_every / ctx._batch_now())),
            callbacks=[BstuneCallback(ctx), *extra],
            **settings,
        )
    batches: Iterable[Any] = ctx.loader(
        train_dataset,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        **dict(loader_kwargs or {}),
    )
    with _quiet(), warnings.catch_warnings():
        # Lightning suggests workers for every loader: a study sets its own
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning 2.6 on torch 2.13
        if ctx.next_milestone == 0:  # eval_at_start: the untrained model is milestone 0
            trainer.validate(module, val_dataloaders, verbose=False)
        trainer.fit(module, train_dataloaders=batches, val_dataloaders=val_dataloaders)
    return trainer
