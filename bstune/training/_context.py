"""A user's own training loop as a bstune trial: :class:`TrialContext` and :func:`run_function`.

bstune's trainer (:func:`~bstune.training.train`) is one way to train a trial; a user's
function ``train(ctx)`` is another. The context hands the function what the study chose
(``ctx.config``: batch size, learning rate, the space's other parameters and the optimizer settings of
the optimizer it was given) and the
pieces that make the trial count the way a built-in one does:

- ``ctx.loader(dataset)``: the training stream, batches of the trial's size drawn in the
  trainer's order (a seeded permutation per epoch, the incomplete tail dropped), over as
  many epochs as the budget needs, in a :class:`~torch.utils.data.DataLoader` with the
  user's workers and collate function;
- ``ctx.lr_scheduler(optimizer)``: the trial's warmup and decay (the probe ramps the rate
  through it for its LR range test);
- ``ctx.noise_tracker(model)``: B_simple from the per-example gradient norms of the
  user's own backward pass (only where the study asks for it: the probe);
- ``ctx.step(loss)``: counts samples and steps, detects divergence;
- ``ctx.at_milestone()`` / ``ctx.report(val_loss=...)``: the study's equal-sample
  milestones, where the pruner decides; a pruned trial raises :class:`TrialPruned`.

With a ``batch_schedule`` (a batch-size warmup) the loop follows the stages through the
same pieces: ``ctx.loader`` yields each step's batch at its stage's size (in the
trainer's order), ``ctx.batch_size`` is the current stage's batch (it changes as
``ctx.step()`` counts samples past a stage's start), ``ctx.lr`` and the scheduler give
the stage's rate (times the warmup and decay), and the noise tracker closes its window
at each change of batch size. ``ctx.config["batch_size"]``/``["lr"]`` stay the first
stage's, what the study chose.

:func:`~bstune.training.run_function` (in :mod:`bstune.training._run_function`) runs such a
function for one :class:`~bstune.training.TrainConfig` and returns the same :class:`~bstune.training.TrainResult` as the trainer, so a study
records, prunes and re-scores both alike.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from bstune._validate import is_number
from bstune.errors import BatchLargerThanDataError, ConfigError
from bstune.noise import resolve_device
from bstune.optim import OptimizerSpec, warn_on_other_optimizer
from bstune.training._config import TrainConfig
from bstune.training._loop import Callback, _as_decision, _milestones
from bstune.training._loop_noise import LoopNoiseTracker
from bstune.training._losses import Diverged, LossWatch
from bstune.training._rate_watch import RateVerdict, RateWatch, TrialRate
from bstune.training._read_config import CHECKED_SETTINGS, OPTIMIZER_SETTINGS, SCHEDULE_SETTINGS, ReadConfig
from bstune.training._result import Decision, EvalRecord, RunStatus
from bstune.training._sampling import StreamBatchSampler
from bstune.training._schedule import lr_at, samples_before_step, stage_at, step_batch_sizes
from bstune.training._streams import Streams
from bstune.training._trial_scheduler import LRRamp, TrialLRScheduler

__all__ = ["TrialContext", "TrialFunction", "TrialPruned"]

logger = logging.getLogger(__name__)

TrialFunction = Callable[["TrialContext"], Any]
"""A user's training code: ``train(ctx)``; it may return its final metrics as a dict."""


class TrialPruned(Exception):
    """Raised by :meth:`TrialContext.report` when the study's pruner stops the trial.

    Let it propagate out of the training function (bstune records the trial as
    pruned); the context knows the trial was pruned even if the function catches it.
    """


_Diverged = Diverged  # the loss became non-finite or blew up: the trial ends ``diverged``


_NO_OPTIMIZER = {
    k: "the run was given no optimizer, so the loop's own value applies; pass run_function(..., optimizer=...), "
    "for a study's recommendation optimizer=result.best_optimizer()"
    for k in OPTIMIZER_SETTINGS
}  # ctx.config's optimizer settings are the declared optimizer's: none declared, none named
SHORT_STEPS_SEEN = 4  # steps a run takes before _check_short judges its share of short ones
# how far a scheduler's steps may drift from ctx.step's count: this many, or a quarter of the steps (an AMP loop's
# scaler skips steps at first, and its sched.step() skips with them or not); once per epoch drifts past it quickly
SCHEDULER_SLACK = 8
# ctx.done read this many times in a row with no step between: a spinning loop (a loop spinning reads it so often
# in well under a second; one that evaluates between steps reads it once per batch at most)
SPIN_READS = 100_000
_late_report_said = False  # a report a step or more past its milestone: said once per process
_between_report_said = False  # a report between milestones (not recorded): said once per process, not per trial
_last_unreported_said = False  # a trial that trained its budget without reporting its last milestone: said once


class TrialContext:
    """What a trial function is given: the trial's settings, and the study's counters and hooks.

    Attributes:
        config: batch size (``"batch_size"``), learning rate (``"lr"``) and the search
            space's other parameters by their names (``"momentum"``, ``"model.width"``...).
        train_config: the whole :class:`~bstune.training.TrainConfig` of the trial.
        device: where to train.
        seed: the trial's seed (torch, numpy and ``random`` are seeded with it before the
            function starts; re-scoring runs the function again with other seeds).
        objective: the metric the study optimizes, which :meth:`report` must be given.

    Example:
        >>> import torch, bstune
        >>> from bstune.training import TrainConfig, run_function
        >>> x = torch.randn(256, 4); y = (x[:, 0] > 0).long()
        >>> data = torch.utils.data.TensorDataset(x, y)
        >>> def train(ctx):
        ...     model = torch.nn.Linear(4, 2)
        ...     opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        ...     sched = ctx.lr_scheduler(opt)
        ...     for xb, yb in ctx.loader(data):
        ...         loss = torch.nn.functional.cross_entropy(model(xb), yb)
        ...         opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        ...         ctx.step(loss)
        ...         if ctx.at_milestone():
        ...             with torch.no_grad():
        ...                 ctx.report(val_loss=torch.nn.functional.cross_entropy(model(x), y))
        >>> run, _ = run_function(train, TrainConfig(batch_size=32, lr=0.5, max_samples=2048))
        >>> run.status.value, run.samples, len(run.history), run.final.val_loss < 0.5
        ('completed', 2048, 10, True)
    """

    def __init__(
        self,
        config: TrainConfig,
        params: Mapping[str, Any] | None = None,
        callback: Callback | None = None,
        *,
        objective: str = "val_loss",
        optimizer: OptimizerSpec | None = None,
        ramp: LRRamp | None = None,
        order: str = "epoch",
        evaluate: bool = True,
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        self._train_config = config
        self.optimizer_spec = optimizer or OptimizerSpec()
        self._optimizer_declared = optimizer is not None  # by a study's space: the loop's is compared to it
        self._adam_settings = "betas" in (params or {})  # a config an Adam-family optimizer trained with
        self.momentum = config.momentum if config.momentum is not None else self.optimizer_spec.momentum
        self.config: dict[str, Any] = ReadConfig(
            {**self._optimizer_settings(), **dict(params or {}), "batch_size": config.batch_size, "lr": config.lr},
            missing=None if self._optimizer_declared else _NO_OPTIMIZER,
        )
        # the searched parameters a run must apply: model.<name> ones only the loop can; the optimizer's settings
        # count as applied through ctx.make_optimizer, the schedule's through ctx.lr_scheduler; a study's batch size
        # through ctx.loader (or ctx.batch_size), its learning rate through either helper (or ctx.lr); not what
        # the space leaves one value (``fixed``): a loop hard-coding it trains what the study records
        self._searched = frozenset(
            k
            for k in params or {}
            if (k.startswith("model.") or k in CHECKED_SETTINGS or k in ("batch_size", "lr")) and k not in fixed
        )
        self.device = resolve_device(config.device)
        self.seed = config.seed
        self.objective = objective
        self.n_train: int | None = None
        self.samples = 0
        self.steps = 0
        self.history: list[EvalRecord] = []
        self.status = RunStatus.COMPLETED
        self.message = ""
        self.step_times: list[float] = []  # wall seconds between successive step() calls
        self.ramp_curve: list[tuple[float, float]] = []  # (lr, smoothed loss) of the probe's ramp
        self.used_scheduler = False
        self._schedulers: weakref.WeakSet[TrialLRScheduler] = weakref.WeakSet()  # each must step with ctx.step
        # without ctx.lr_scheduler, whether the optimizers the loop steps (ctx.make_optimizer's or its own) follow
        # the trial's rate and schedule: run_function watches their steps (_rates_expected)
        self._rate_watch = RateWatch(on_own=self._own_optimizer, driven=self._driven)
        self._said_non_finite: set[str] = set()  # metrics ctx.report warned of as non-finite
        self._streams = Streams()  # where each of ctx.loader's streams stands
        self.used_tracker = False
        self._callback = callback
        self._ramp = ramp
        self._order = order
        self._evaluate = evaluate  # False: the probe's ramp and timing runs, where no milestone asks for an evaluation
        # the probe's first range test, told the training set's size by ctx.loader: False ends the run before its
        # first step (a small set takes a smaller probe batch, and the test runs again at it)
        self._on_data: Callable[[int], bool] | None = None
        self.data_refused = False  # _on_data ended the run there: what the loop does after its stream is moot
        self.freeze_from: int | None = None  # the probe's noise run: the rate is 0 from this many samples on
        self.still_chunk_steps = 10  # steps per chunk of the still phase's measurement
        self._rates = config  # what lr_at reads: the run's own config, but for a probe's still phase
        self._marks = _milestones(config)
        self._next = 0
        self._stopped = False
        self._smoothed = math.nan
        self._best = math.inf
        # ctx.step's losses: the divergence rule, read on the host in batches; kept as copies (a loop may reuse
        # its loss buffer in place, as a CUDA graph's output is)
        self._losses = LossWatch(config.divergence_factor, copy=True)
        self._started = time.perf_counter()
        self._last_step_at: float | None = None
        self._evaluated = False
        self._tracker: LoopNoiseTracker | None = None
        self._from_loader = False  # the loop's batches come from ctx.loader: whole batches of the step's size
        self._step_samples = 0  # the last step's samples (ctx.step)
        self._short = 0  # steps counted (ctx.step(samples=...)) below the batch size
        self.other_optimizer: str | None = None  # how the loop's optimizer differs from the declared one
        self._steps_at_done, self._done_reads = 0, 0  # ctx.done read this many times in a row at this step count

    # -- what the function reads -----------------------------------------------------
    @property
    def train_config(self) -> TrainConfig:
        """The whole :class:`~bstune.training.TrainConfig` of the trial. A loop that reads it counts as
        applying the trial's batch size and learning rate (which of its fields it uses cannot be told)."""
        self._applied(frozenset({"batch_size", "lr"}))
        return self._train_config

    @property
    def batch_size(self) -> int:
        """The batch size of the step under way: the current stage's with a ``batch_schedule``."""
        self._applied(frozenset({"batch_size"}))
        return self._batch_now()

    def _batch_now(self) -> int:
        """:attr:`batch_size` for bstune's own checks: not a read of the loop's."""
        return stage_at(self._train_config, self.samples)[0]

    @property
    def lr(self) -> float:
        """The learning rate of the step under way (the scheduler's, when the function made one; else
        the current stage's with a ``batch_schedule``)."""
        self._applied(frozenset({"lr"}))
        return self._lr_now()

    def _lr_now(self) -> float:
        """:attr:`lr` for bstune's own use: not a read of the loop's."""
        return self._lr_of_step(self.steps) if self.used_scheduler else stage_at(self._train_config, self.samples)[1]

    def _last_lr(self) -> float:
        """The learning rate of the step last counted."""
        step = max(self.steps - 1, 0)
        if self.used_scheduler:
            return self._lr_of_step(step)
        return stage_at(self._train_config, samples_before_step(self._train_config, step))[1]

    @property
    def budget_samples(self) -> int:
        return self._train_config.max_samples

    @property
    def done(self) -> bool:
        """True once the budget is spent or the trial was stopped (pruned, diverged, the probe's ramp ended).

        Raises:
            ConfigError: read :data:`SPIN_READS` times in a row with no ``ctx.step`` between: a loop such as
                ``while not ctx.done: for batch in my_batches(): ...`` whose batches ran out without a step
                would otherwise spin for ever.
        """
        if self.steps == self._steps_at_done:
            self._done_reads += 1
            if self._done_reads >= SPIN_READS and not self._is_done():
                raise ConfigError(
                    f"read {self._done_reads:,} times in a row with no ctx.step() between ({self.samples:,} samples "
                    "trained): the loop is spinning; its batches ran out without a step (an empty epoch: its own "
                    "loader batching more examples than its data holds, with drop_last?), or it does not call "
                    "ctx.step(loss) after each optimizer step",
                    source="ctx.done",
                )
        else:
            self._steps_at_done, self._done_reads = self.steps, 1
        return self._is_done()

    def _is_done(self) -> bool:
        """:attr:`done` for bstune's own reads."""
        return self._stopped or self.samples >= self._train_config.max_samples

    @property
    def next_milestone(self) -> int | None:
        """The sample count of the next milestone to report, or None when none is left or this run
        asks for no evaluation (the probe's ramp and timing runs): for a loop that schedules its
        evaluations ahead of time, as Lightning's ``val_check_interval`` does."""
        if not self._evaluate or self._next >= len(self._marks):
            return None
        return self._marks[self._next]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The space's ``model.<name>`` parameters, by ``<name>``."""
        found = {k: v for k, v in dict.items(self.config) if k.startswith("model.")}
        if isinstance(self.config, ReadConfig):
            self.config.read.update(found)
        return {k.removeprefix("model."): v for k, v in found.items()}

    def _applied(self, keys: frozenset[str]) -> None:
        """``keys`` reach the run through a helper bstune applies them in: they count as read."""
        if isinstance(self.config, ReadConfig):
            self.config.read.update(keys & self._searched)

    def unread_params(self) -> list[str]:
        """The space's searched parameters the function neither read (``ctx.config``, ``ctx.model_kwargs``) nor
        had applied (``ctx.make_optimizer``, ``ctx.lr_scheduler``): ``model.<name>`` ones, the optimizer's
        settings, the schedule's, ``grad_clip``; and, read or not, the schedule's settings and ``lr`` where the
        optimizers the loop stepped did not train at them (:meth:`rate_verdict`)."""
        read = self.config.read if isinstance(self.config, ReadConfig) else set(self._searched)
        # the schedule's settings read (to log them, say) but not followed by the optimizer's rate: not applied;
        # nor the rate, where the optimizer's own never came near the trial's
        verdict = self.rate_verdict()
        ignored = SCHEDULE_SETTINGS if verdict.why else frozenset()
        ignored |= {"lr"} if verdict.lr_not_applied else frozenset()
        return sorted((self._searched - read) | (ignored & self._searched))

    # -- what the function calls -----------------------------------------------------
    def loader(
        self,
        dataset: Any,
        *,
        num_workers: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool | None = None,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Batches of ``config["batch_size"]`` examples of the map-style ``dataset``, epoch after epoch,
        until the trial is done (with a ``batch_schedule``: each step's batch at its stage's size). ``num_workers`` and ``pin_memory`` default to the trial's
        (``TrainConfig.num_workers``, set by a study's ``num_workers``; pinned when the trial
        trains on CUDA with workers), as does ``prefetch_factor``. Other keywords go to
        :class:`~torch.utils.data.DataLoader` (``persistent_workers``, ``worker_init_fn``...)."""
        self._applied(frozenset({"batch_size"}))
        try:
            n = len(dataset)
        except TypeError:
            raise ConfigError(
                f"needs a map-style dataset with a length, got {type(dataset).__name__}", source="ctx.loader"
            ) from None
        cfg = self._train_config
        if n < max(cfg.batch_sizes):
            self.n_train = n  # the study caps its later trials here
            raise BatchLargerThanDataError(
                max(cfg.batch_sizes),
                n,
                source="ctx.loader",
                field="batch_size" if cfg.batch_schedule is None else "batch_schedule",
            )
        for bad in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if bad in kwargs:
                raise ConfigError(
                    "the study sets the batch size and order of the training stream", source="ctx.loader", field=bad
                )
        self.n_train = n
        self._from_loader = True
        if self._on_data is not None and not self._on_data(n):
            self._stopped = self.data_refused = True  # the stream yields nothing: the loop ends without a step
        sizes = list(step_batch_sizes(cfg)) if cfg.batch_schedule is not None else None
        # a loader opened again (a loop that breaks out each "epoch" of its own) goes on with the stream where the
        # last one left it, not from its first batch again
        stream = self._streams.of(dataset, n)
        sampler = StreamBatchSampler(n, cfg.batch_size, self.seed, self._order, sizes, skip=stream.handed)
        if num_workers is None:
            num_workers = cfg.num_workers
        if pin_memory is None:
            pin_memory = cfg.pin_memory if cfg.pin_memory is not None else num_workers > 0
            pin_memory = pin_memory and self.device.type == "cuda"
        if num_workers > 0 and cfg.prefetch_factor is not None:
            kwargs.setdefault("prefetch_factor", cfg.prefetch_factor)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            **kwargs,
        )
        slack = max(cfg.max_samples // 2, max(cfg.batch_sizes))  # taken but never counted: a loop without ctx.step
        return Streams.batches(self, loader, sizes, stream, slack)

    def _optimizer_settings(self) -> dict[str, Any]:
        """The space's optimizer settings, fixed or searched, as ``ctx.config`` names them for the loop."""
        spec, config = self.optimizer_spec, self._train_config
        if not self._optimizer_declared:  # only what the TrainConfig says: the loop's own defaults apply to the rest
            given = {"momentum": config.momentum, "weight_decay": config.weight_decay}
            return {k: v for k, v in given.items() if v is not None}
        wd = config.weight_decay if config.weight_decay is not None else spec.weight_decay
        family = {"momentum": self.momentum} if spec.family == "sgd" else {"betas": tuple(spec.betas)}
        return {**family, "weight_decay": wd}

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> TrialLRScheduler:
        """A scheduler that sets the trial's learning rate step by step; call its ``step()`` after
        ``optimizer.step()``."""
        self.used_scheduler = True
        self._applied(SCHEDULE_SETTINGS | {"lr"})
        # settings the loop's own optimizer holds at the trial's values were applied, however it read them
        group = optimizer.param_groups[0] if optimizer.param_groups else {}
        self._applied(
            frozenset(
                k
                for k in OPTIMIZER_SETTINGS
                if k in group and dict.__contains__(self.config, k) and group[k] == dict.get(self.config, k)
            )
        )
        if self._optimizer_declared:  # run_function without one (retraining a config by hand) declares nothing
            spec = self.optimizer_spec
            self.other_optimizer = warn_on_other_optimizer(optimizer, spec.family, self.momentum, spec.betas)
        sched = TrialLRScheduler(self, optimizer)
        self._schedulers.add(sched)
        return sched

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The search space's optimizer (family, momentum, weight decay) at the trial's learning rate."""
        if self._adam_settings and not self._optimizer_declared:
            raise ConfigError(
                "ctx.config holds betas, an Adam-family optimizer's setting, but the run was given no optimizer, "
                "so ctx.make_optimizer would build plain SGD: pass run_function(..., optimizer=...), for a study's "
                "recommendation optimizer=result.best_optimizer()",
                source="ctx.make_optimizer",
            )
        self._applied(OPTIMIZER_SETTINGS | {"lr"})
        lr = self._lr_now()
        opt = self.optimizer_spec.build(
            params, lr=lr, momentum=self.momentum, weight_decay=self._train_config.weight_decay
        )
        self._rate_watch.made(opt, lr)
        return opt

    def noise_tracker(self, model: nn.Module) -> LoopNoiseTracker:
        """The B_simple tracker; call its ``observe()`` between ``loss.backward()`` and ``optimizer.step()``."""
        self.used_tracker = True
        made = self._tracker
        if made is not None and made.model_id == id(model) and made.norms is not None:  # made again each epoch
            return made
        return LoopNoiseTracker(self, model, previous=made)

    def step(self, loss: torch.Tensor | float | None = None, *, samples: int | None = None) -> bool:
        """Count one optimizer step of ``samples`` examples (default: the batch size); returns ``done``.

        ``samples`` may be less than the batch size (the short last batch of a loader of your own),
        never more: the study tunes the batch of one optimizer step. With gradient accumulation,
        split each batch of :meth:`loader` into micro-batches and count the step once.
        With ``loss`` (the step's training loss, a tensor or a number), a non-finite loss or one
        ``divergence_factor`` times the first ends the trial as diverged (raises). A tensor
        ``loss`` stays on its device: reading it is a host sync, which on a GPU stalls the
        queue of kernels, so the losses are read together every 16 steps, at each
        :meth:`report` and when the function returns, as bstune's trainer reads its own. A
        diverging step ends the trial up to 15 steps later; the message names that step.
        """
        if samples is not None and int(samples) < 1:
            raise ConfigError(
                f"must be at least 1 (the examples this step trained on), got {samples}",
                source="ctx.step",
                field="samples",
            )
        if samples is not None and int(samples) < self._batch_now() and self._from_loader:
            raise ConfigError(
                f"counts {samples} samples for a batch of {self._batch_now()} from ctx.loader, whose batches are whole: "
                "call ctx.step(loss) once per optimizer step, without samples= (which counts the short last batch "
                "of a loader of your own); with gradient accumulation, once per batch, not per micro-batch",
                source="ctx.step",
                field="samples",
            )
        if samples is not None and int(samples) > self._batch_now():
            raise ConfigError(
                f"must be at most the step's batch size {self._batch_now()}, got {samples}: the study tunes "
                "the batch of one optimizer step (its learning rates, temperature and noise scale are computed "
                "for it). To accumulate gradients, split each batch x from ctx.loader into micro-batches "
                "(x.split(m)), weigh each one's mean loss by len(xm) / len(x), call noise.observe() after each "
                "micro-batch's backward, and ctx.step(loss) once per optimizer step (see the README)",
                source="ctx.step",
                field="samples",
            )
        self._check_short(samples)
        if self._tracker is not None:  # the step's micro-batches, observed: one measured step
            self._tracker.end_step(self._batch_now() if samples is None else int(samples))
        now = time.perf_counter()
        if self._last_step_at is not None and not self._evaluated:  # an interval holding an evaluation is no step time
            self.step_times.append(now - self._last_step_at)
        self._last_step_at, self._evaluated = now, False
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ConfigError(
                f"must be the step's loss, one number; got a tensor of shape {tuple(loss.shape)} (the mean over "
                "the batch: loss.mean())",
                source="ctx.step",
                field="loss",
            )
        self.steps += 1
        self._check_scheduler_stepped()
        self._step_samples = self._batch_now() if samples is None else int(samples)
        self.samples += self._step_samples
        if loss is None:
            return self._is_done()
        if self._ramp is not None:  # the range test's rule reads every step's loss: a short run, read as it goes
            return self._ramp_step(float(loss.detach() if isinstance(loss, torch.Tensor) else loss))
        try:
            self._losses.add(loss, self.steps - 1, self.samples - self._step_samples)
        except Diverged as exc:
            self._diverge(str(exc))
        return self._is_done()

    def _diverged_unread(self) -> bool:
        """Whether a step not read yet diverged (the run then ends diverged, as it would have at the read): read when
        the loop's own code raised, on a model a non-finite step may have left it (an sklearn metric on NaN)."""
        try:
            self._read_losses()
        except _Diverged:
            return True
        return False

    def _read_losses(self) -> None:
        """Read the unread steps' losses on the host (one sync for the tensors) and check them in step order."""
        try:
            self._losses.read()
        except Diverged as exc:
            self._diverge(str(exc))

    def _check_scheduler_stepped(self) -> None:
        """Each live ``ctx.lr_scheduler`` steps about once per ``ctx.step``. Stepped once per epoch (torch's idiom
        for its own schedulers), or not at all, it left the optimizer at its first rates while the study recorded
        the schedule's, and the probe's range test read a ceiling from rates it never applied. A few steps apart
        are fine: an AMP loop skips ``sched.step()`` with the steps its scaler skipped, or steps it anyway."""
        for sched in list(self._schedulers):
            counted = self.steps - sched.first_step
            stepped = sched.last_step - sched.first_step
            if abs(counted - stepped) > max(SCHEDULER_SLACK, counted // 4):
                raise self._scheduler_error(stepped, counted)

    def _own_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer the loop made itself trains (:class:`RateWatch`: no optimizer of ``ctx.make_optimizer`` or
        ``ctx.lr_scheduler`` steps): the temperatures and the LR rule assume the space's optimizer."""
        if self._optimizer_declared and self.other_optimizer is None:
            spec = self.optimizer_spec
            self.other_optimizer = warn_on_other_optimizer(optimizer, spec.family, self.momentum, spec.betas)

    def _rates_expected(self) -> TrialRate | None:
        """The step an optimizer takes now and the trial's rates for it (:class:`RateWatch` asks at each
        ``opt.step()``): the schedule at the samples trained before it, or a step either side (a loop calls
        ``ctx.step`` after ``opt.step()`` or before, and steps a hand-made schedule before it or after; or where
        the optimizer steps taken so far stand, as a scheduler an AMP loop skips with its scaler's skipped steps
        does). None in the probe's ramp and still phase (the scheduler holds the rate at 0 there)."""
        if self._ramp is not None or (self.freeze_from is not None and self.samples >= self.freeze_from):
            return None
        at, batch = self.samples, self._batch_now()
        taken = self._rate_watch.checked_steps() * batch  # as many steps of full batches
        # at the samples really trained (a loop's own loader has short batches: lr_at(ctx.train_config, ctx.samples)
        # is the hand-made recipe); the step's own first, what a miss is reported against
        points = (at, at - (self._step_samples or batch), at + batch, taken, taken + batch)
        rates = tuple(lr_at(self._rates, max(0, p)) for p in points)
        return TrialRate(self.steps, rates, base=stage_at(self._rates, at)[1], warmup=at < self._rates.warmup_samples)

    def _driven(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether a live ``ctx.lr_scheduler`` sets ``optimizer``'s rates: its own, or those of the groups it shares
        with a wrapper the scheduler was given (SAM's base optimizer, Accelerate's wrapped one)."""
        groups = {id(group) for group in optimizer.param_groups}
        return any(
            sched.optimizer is optimizer or any(id(group) in groups for group in sched.optimizer.param_groups)
            for sched in self._schedulers
        )

    def rate_verdict(self) -> RateVerdict:
        """Whether the loop's optimizers trained at the trial's rate and schedule (see :mod:`._rate_watch`)."""
        cfg = self._train_config
        schedule = f"lr={cfg.lr:.4g}, schedule={cfg.schedule!r}" + (
            f", warmup over {cfg.warmup_samples:,} samples" if cfg.warmup_samples else ""
        )
        return self._rate_watch.verdict(schedule)

    def schedule_not_followed(self) -> str | None:
        """Why the loop's optimizers did not follow the trial's rate and schedule, or None: :meth:`rate_verdict`'s
        ``why``."""
        return self.rate_verdict().why

    @staticmethod
    def _scheduler_error(stepped: int, counted: int) -> ConfigError:
        return ConfigError(
            f"the scheduler from ctx.lr_scheduler stepped {stepped} time{'' if stepped == 1 else 's'} over {counted} "
            "ctx.step calls: call sched.step() right after each opt.step(), and ctx.step(loss) once per optimizer "
            "step too (the trial's warmup and decay, and the probe's LR range test, change the rate every step, not "
            "every epoch). To accumulate gradients, split each batch of ctx.loader into micro-batches (see the "
            "README): the study's batch size is the batch of one optimizer step",
            source="ctx.lr_scheduler",
        )

    def _check_short(self, samples: int | None) -> None:
        """A loader of the loop's own has short batches now and then: an epoch's tail, one per DataLoader worker of
        an iterable dataset, one per length bucket. A run whose steps are mostly short does not train at the trial's
        batch size: its loader holds fewer examples than the batch, or it batches by another size. Every number of
        the trial would be labelled with a batch it never trained at, so from the fourth step on, more short steps
        than full ones are refused."""
        if samples is not None and int(samples) < self._batch_now():
            self._short += 1
        steps = self.steps + 1  # this one included
        if steps < SHORT_STEPS_SEEN or self._short * 2 <= steps:
            return
        staged = self._train_config.batch_schedule is not None
        raise ConfigError(
            f"{self._short} of the run's {steps} steps counted fewer samples than the trial's batch size "
            f"{self._batch_now()} (this one {samples}): the loop does not train at that batch. Its own loader holds "
            "fewer examples than the batch, in all or in each of its workers' shards (give the space a "
            "batch_size.max no larger than that, or "
            "train on ctx.loader, which keeps the search within it), or it batches by another size than "
            "ctx.batch_size (batch by it"
            + ("; with a batch_schedule, make the loader again when ctx.batch_size changes" if staged else "")
            + ")",
            source="ctx.step",
            field="samples",
        )

    def at_milestone(self) -> bool:
        """True when the trial has reached a sample milestone it has not reported yet: evaluate and
        :meth:`report` now."""
        reached = self._evaluate and self._next < len(self._marks) and self.samples >= self._marks[self._next]
        self._evaluated = self._evaluated or reached
        return reached

    def report(self, **metrics: Any) -> None:
        """The evaluation at the milestone just reached: ``val_loss``, ``train_loss`` (for the
        generalization gap) and any metric (``val_accuracy=...``). Raises :class:`TrialPruned` when
        the study's pruner stops the trial here."""
        self._evaluated = True
        reached = [m for m in self._marks[self._next :] if m <= self.samples]
        global _between_report_said, _late_report_said
        if not reached:
            if not _between_report_said:
                _between_report_said = True
                logger.warning(
                    "ctx.report() at %d samples, between milestones, is not recorded; report when ctx.at_milestone() "
                    "(said once)",
                    self.samples,
                )
            return
        if not _late_report_said and self.samples - reached[-1] >= max(self._step_samples, 1):
            _late_report_said = True
            logger.warning(
                "ctx.report() at %s samples is recorded for the milestone at %s, passed %s samples (a step or "
                "more) earlier: trials are compared at their milestones, so evaluate when ctx.at_milestone() "
                "is True, not every N steps of your own (said once)",
                f"{self.samples:,}",
                f"{reached[-1]:,}",
                f"{self.samples - reached[-1]:,}",
            )
        self._next += len(reached)
        self._record(reached[-1], metrics)

    # -- inside -----------------------------------------------------------------------
    def _hold_still_after(self, samples: int) -> None:
        """Train ``samples`` (to the step that reaches them) with the milestones and rates of a run that
        long, then hold the rate at 0: see :func:`run_function`'s ``still_after``."""
        cfg = self._train_config
        if cfg.batch_schedule is not None:
            raise ConfigError("a still phase needs one batch size, not a batch_schedule", source="run_function")
        self.freeze_from = -(-samples // cfg.batch_size) * cfg.batch_size
        if not 0 < samples <= self.freeze_from < cfg.max_samples:
            raise ConfigError(
                f"must leave a still phase before max_samples={cfg.max_samples} (training ends at "
                f"{self.freeze_from}), got {samples}",
                source="run_function",
                field="still_after",
            )
        self._rates = replace(cfg, max_samples=samples)  # warmup and decay end where training does
        self._marks = _milestones(self._rates)

    def _lr_of_step(self, step: int) -> float:
        samples = samples_before_step(self._train_config, step)  # as the loader's batches count them
        if self.freeze_from is not None and samples >= self.freeze_from:
            return 0.0  # parameters held still: the gradients measured are those of one point
        if self._ramp is not None:
            return self._ramp.lr(step)
        return lr_at(self._rates, samples)

    def _ramp_step(self, value: float) -> bool:
        """The LR range test's stopping rule (as :func:`~bstune.study.lr_range_test`)."""
        if not math.isfinite(value):
            self._stopped = True
            return True
        if value < 0:
            raise LRRamp.negative_loss(value, "ctx.step")
        self._smoothed = value if self.steps == 1 else 0.7 * self._smoothed + 0.3 * value
        self.ramp_curve.append((self._last_lr(), self._smoothed))
        if self._smoothed > 2.0 * self._best:
            self._stopped = True
        elif self._smoothed < self._best:
            self._best = self._smoothed
        return self._is_done()

    def _diverge(self, message: str) -> None:
        self.status, self.message, self._stopped = RunStatus.DIVERGED, message, True
        raise _Diverged(message)

    def _record(self, milestone: int, metrics: Mapping[str, Any], *, returned: bool = False) -> None:
        if self.objective not in metrics:
            said = ", ".join(sorted(metrics))
            raise ConfigError(
                (f"returned {said}" if returned else f"reported {said}" if said else "reported no metric")
                + f" but not the study's objective {self.objective!r}; "
                + (
                    "return it too, or return nothing, or choose one of those as "
                    if returned
                    else "report it, or choose one of those as "
                )
                + "the objective (objective= in Python, --objective on the command line)",
                source="the training function's return value" if returned else "ctx.report",
            )
        values: dict[str, float] = {}
        for name, value in metrics.items():
            try:
                values[name] = float(value.detach() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"must be a number, got {type(value).__name__}",
                    source="the training function's return value" if returned else "ctx.report",
                    field=name,
                ) from None
        train_loss = values.pop("train_loss", math.nan)
        val_loss = values.pop("val_loss", math.nan)
        noise = (
            self._tracker.tracker.flush(self.steps, self.samples) if self._tracker and self._tracker.tracker else None
        )
        self._read_losses()  # a diverged step before this evaluation ends the trial here, unrecorded
        batch_loss = self._losses.take_window()
        record = EvalRecord(
            milestone=milestone,
            samples=self.samples,
            step=self.steps,
            lr=self._last_lr(),
            train_loss=train_loss,
            val_loss=val_loss,
            batch_loss=batch_loss,
            metrics=values,
            elapsed_s=time.perf_counter() - self._started,
            noise=noise,
        )
        self.history.append(record)
        # a non-finite objective or loss ends the run; another metric may be undefined now and then (an F1 score
        # with no positive prediction yet): kept as it is, with a word, as the trainer keeps a task's metrics
        reported = {"train_loss": train_loss, "val_loss": val_loss, **values}
        bad = sorted(k for k in metrics if not math.isfinite(reported[k]))
        ending = [k for k in bad if k in ("train_loss", "val_loss", self.objective)]
        if ending:
            named = ", ".join(f"{k}={reported[k]}" for k in ending)
            self._diverge(f"a reported metric became non-finite ({named}) at samples {self.samples}")
        for name in bad:
            if name not in self._said_non_finite:
                self._said_non_finite.add(name)
                logger.warning(
                    "ctx.report: %s is %s at samples %d; kept as it is (a non-finite objective or loss ends the "
                    "trial, another metric does not)",
                    name,
                    reported[name],
                    self.samples,
                )
        if self._callback is None:
            return
        decision = _as_decision(self._callback(record))
        if decision == Decision.STOP and milestone < self._train_config.max_samples:
            self.status, self._stopped = RunStatus.STOPPED, True
            self.message = f"stopped by callback at milestone {milestone}"
            raise TrialPruned(f"pruned at {milestone} samples")

    def _finish(self, returned: Any) -> None:
        """After the function returned: metrics it returned stand for the last milestone it did not report."""
        if self.status is not RunStatus.COMPLETED:
            return
        self._read_losses()  # the last steps' losses: a run that diverged there ends diverged
        # a run that evaluates nothing (the probe's range tests and timing) reads no metric, and an empty dict says none
        if self._evaluate and ((isinstance(returned, Mapping) and returned) or is_number(returned)):
            metrics = dict(returned) if isinstance(returned, Mapping) else {self.objective: returned}
            reached = [m for m in self._marks[self._next :] if m <= self.samples]
            if reached:
                self._next += len(reached)
                self._record(reached[-1], metrics, returned=True)
            elif not self.history:
                self._record(self.samples, metrics, returned=True)
        if self._ramp is None and 0 < self.samples < self._train_config.max_samples and not self._stopped:
            self.message = (
                f"the function returned after {self.samples:,} of its {self._train_config.max_samples:,} samples"
            )
        elif self._evaluate and self.history and self._next < len(self._marks) and not self._stopped:
            # trained its budget, but its last evaluation came before the last milestone (a loop that evaluates
            # every N steps of its own): its value is from fewer samples than the trials it is ranked against
            global _last_unreported_said
            last = self.history[-1]
            self.message = (
                f"its last milestone ({self._marks[-1]:,} samples) was not reported: its value is the evaluation "
                f"recorded for {last.milestone:,} samples (at {last.samples:,}); report when ctx.at_milestone()"
            )
            if not _last_unreported_said:
                _last_unreported_said = True
                logger.warning(
                    "a trial trained its %s samples but reported no evaluation at its last milestone, so its value is "
                    "an earlier one's, ranked against trials evaluated at the end: report when ctx.at_milestone() "
                    "is True (said once; each such trial's message says so)",
                    f"{self._train_config.max_samples:,}",
                )
