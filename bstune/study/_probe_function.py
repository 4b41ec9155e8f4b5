"""The probe through a user's training function: the same three measurements as for a task.

:func:`~bstune.study.run_probe` drives bstune's trainer; here the user's own loop runs
each measurement, told by its :class:`~bstune.training.TrialContext` what to do:

1. **LR range tests** at the probe batch size and ``large_batch_factor`` times it: the
   context's scheduler ramps the rate geometrically step by step, from batches drawn as
   the task probe draws them, and the losses the loop passes to ``ctx.step`` end the ramp
   once their smoothed value doubles its minimum; the ceiling is the rate at the minimum.
2. **Noise scale**: a run at ``lr_fraction`` of the ceiling with the context's noise
   tracker on every step (per-example gradient norms from the loop's own backward pass):
   the trajectory over the windows between its evaluations, then a still phase where the
   scheduler holds the rate at 0, so the parameters stay where training left them and
   B_simple and its interval are pooled over ``measure_samples`` of batches at one point,
   as :func:`~bstune.noise.measure_noise_scale` measures a task's.
3. **Throughput**: a few steps at each batch size of the ladder, timed between successive
   ``ctx.step`` calls, so data loading counts as it does in training; evaluations are not
   asked for and not timed. Told the study's trial budget, the ladder keeps to
   ``throughput_fraction`` of it, as the task probe's does (:func:`~bstune.study._probe_plan.ladder_plan`).

Told the study's trial budget, the noise run stops at the earlier of its own length rule
and one trial's budget, where the task probe's measurement point lies too. Where the budget
is the earlier, the run is one trial: the study's milestones (none after the budget) and seed,
and the still phase after the trial's last evaluation, so up to there the loop trains and
evaluates as a trial of that config would (one that sizes something of its own from
``ctx.budget_samples`` sees the whole run's length there, the still phase included; the
milestones, rates and loading workers are the trial's). :attr:`ProbeResult.run` keeps it, and the study
records it as its first trial, as it does a task's. Where the loop's last evaluation came
after the still phase (metrics it returned at the end), or trials are longer than the rule
(the still phase cannot be undone for the rest of a trial: it moves momentum, Adam's moments,
BatchNorm's statistics), the run is the probe's cost and ``run`` is ``None``. The run trains
right after the first range test; the large-batch one comes after it.

A loop that never makes the scheduler, never passes its loss, or never observes the
tracker is told what the probe needs, and that the study can run without it.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from bstune._progress import progress_bar
from bstune.errors import BatchLargerThanDataError, BstuneError, ConfigError, EstimationError, UserCodeError
from bstune.noise import resolve_device, seed_spread_interval
from bstune.records import ProbeResult
from bstune.space import SearchSpace
from bstune.study._backend import FunctionJob
from bstune.study._probe import trajectory_rows, trial_run
from bstune.study._probe_plan import (
    ProbeSettings,
    failed_run_advice,
    ladder_plan,
    ladder_rungs,
    probe_batch,
    run_eval_every,
    run_length,
)
from bstune.study._range_test import large_batch_sweep, reached_max
from bstune.study._throughput import step_rate
from bstune.study._trial import returned_early
from bstune.training import LRRamp, RunStatus, TrainConfig, TrainResult, TrialContext, run_function

__all__ = ["probe_function", "probe_params"]

logger = logging.getLogger(__name__)

_WITHOUT = "or tune without the probe: mode='baseline' (bstune run --mode baseline)"


def probe_params(space: SearchSpace) -> dict[str, Any]:
    """The space's other parameters at the middle of their ranges (geometric for log ones), the
    first of a categorical's choices: what ``ctx.config`` holds while the probe runs. A searched
    ``momentum`` or ``weight_decay`` is the space optimizer's instead: the probe measures at that
    optimizer (``ctx.momentum``, ``ctx.make_optimizer``), and its temperature and the prior's rule
    rest on it, so a loop that applies ``ctx.config["momentum"]`` trains at the same.

    Example:
        >>> space = SearchSpace.coerce({"name": "s", "params": {"model.width": {"type": "int", "low": 16,
        ...     "high": 256, "log": True}, "model.act": {"type": "categorical", "choices": ["relu", "gelu"]}}})
        >>> probe_params(space)
        {'model.width': 64, 'model.act': 'relu'}
    """
    out: dict[str, Any] = {}
    optimizer = {"momentum": space.optimizer.momentum, "weight_decay": space.optimizer.weight_decay}
    for spec in space.params:
        if spec.name in optimizer:
            out[spec.name] = optimizer[spec.name]
            continue
        if spec.kind == "categorical":
            out[spec.name] = (spec.choices or (None,))[0]
            continue
        low, high = float(spec.low or 0), float(spec.high or 0)
        mid = math.sqrt(low * high) if spec.log and low > 0 else (low + high) / 2
        out[spec.name] = round(mid) if spec.kind == "int" else mid
    return out


def probe_function(
    job: FunctionJob,
    space: SearchSpace,
    settings: ProbeSettings | None = None,
    *,
    batch_cap: int,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    budget_samples: int | None = None,
    eval_every_samples: int | None = None,
    num_workers: int = 0,
) -> ProbeResult:
    """Measure the LR ceiling, the noise scale and the throughput through ``job``'s function.

    ``budget_samples`` (a study's trial budget) bounds the throughput ladder as in
    :func:`~bstune.study.run_probe`, and the noise run to at most one trial's length; where it is one
    trial long, it is evaluated every ``eval_every_samples`` (the study's milestones; default ten
    evaluations) and kept in :attr:`ProbeResult.run` (see the module doc). ``num_workers`` is what
    ``ctx.loader`` loads with in every run, as in a trial (``TrainConfig.num_workers``).

    Raises:
        UserCodeError: the function raised; the message is one line, its ``traceback`` the whole story.
        ConfigError: the function does not use what the probe needs (the scheduler, ``ctx.step(loss)``,
            the noise tracker), or the probe run diverged at the rate the range test chose.
    """
    try:
        return _probe(
            job,
            space,
            settings or ProbeSettings(),
            batch_cap,
            seed,
            device,
            progress,
            budget_samples,
            eval_every_samples,
            num_workers,
        )
    except (BstuneError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise UserCodeError(
            f"the probe failed in the training function: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        ) from exc


class _Runner:
    """Runs the function for one probe measurement, counting the samples all of them used."""

    def __init__(
        self,
        job: FunctionJob,
        params: dict[str, Any],
        seed: int,
        device: torch.device,
        num_workers: int,
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        self.job, self.params, self.seed, self.device = job, params, seed, device
        self.fixed = fixed  # what the space leaves one value: the loop need not read it
        self.num_workers = num_workers  # the trials' (a random augmentation draws as in a trial)
        self.samples = 0
        self.n_train: int | None = None  # the training set's size, once a run has opened ctx.loader

    def __call__(
        self,
        batch: int,
        lr: float,
        max_samples: int,
        on_data: Callable[[int], bool] | None = None,
        **kwargs: Any,
    ) -> tuple[TrainResult, TrialContext]:
        """One run of the function; ``on_data`` is told the training set's size when the loop opens ``ctx.loader``
        and may end the run there (False), before its first step."""
        config_keys = ("track_noise", "noise_every_steps", "eval_every_samples")
        config = TrainConfig(
            batch_size=batch,
            lr=lr,
            max_samples=max_samples,
            seed=self.seed,
            device=str(self.device),
            num_workers=self.num_workers,
            divergence_factor=None if "ramp" in kwargs else 100.0,
            **{k: kwargs.pop(k) for k in config_keys if k in kwargs},
        )
        fn = self.job.fn
        if on_data is not None:

            def fn(ctx: TrialContext) -> Any:
                ctx._on_data = on_data
                try:
                    return self.job.fn(ctx)
                except Exception:
                    if ctx.data_refused:  # code after an empty stream (a loss never bound): the run is moot
                        return None
                    raise

        result, ctx = run_function(
            fn,
            config,
            params=self.params | {"batch_size": batch, "lr": lr},
            objective=self.job.objective,
            optimizer=self.job.optimizer,
            fixed=self.fixed,
            **kwargs,
        )
        self.samples += result.samples
        self.n_train = ctx.n_train if ctx.n_train is not None else self.n_train
        return result, ctx


def _range_test(
    run: _Runner,
    batch: int,
    lr_min: float,
    lr_max: float,
    steps: int,
    ratio: float,
    on_data: Callable[[int], bool] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """One LR range test at ``batch``: (ceiling, [(lr, smoothed loss)]); ``(nan, [])`` where ``on_data``, told the
    training set's size, ended it before its first step."""
    result, ctx = run(
        batch, lr_min, steps * batch, on_data=on_data, ramp=LRRamp(lr_min, ratio), order="draw", evaluate=False
    )
    if on_data is not None and ctx.n_train is not None and ctx.steps == 0 and not on_data(ctx.n_train):
        return math.nan, []
    if result.status is RunStatus.OOM:
        raise torch.OutOfMemoryError(result.message)
    if not ctx.used_scheduler:
        raise ConfigError(
            "the probe's LR range test ramps the learning rate through ctx.lr_scheduler(optimizer), which the "
            f"function never called; call it (and its step() after each optimizer step), {_WITHOUT}",
            source="probe",
        )
    if not ctx.ramp_curve:
        if ctx.steps == 0:
            reason = "the function took no step (ctx.step) of its training stream"
        else:
            reason = "the function called ctx.step() without the step's loss"
        raise ConfigError(
            f"the probe's LR range test reads each step's training loss: {reason}; call ctx.step(loss), {_WITHOUT}",
            source="probe",
        )
    lr_best, _ = min(ctx.ramp_curve, key=lambda point: point[1])
    return lr_best, ctx.ramp_curve


def _probe(
    job: FunctionJob,
    space: SearchSpace,
    settings: ProbeSettings,
    batch_cap: int,
    seed: int,
    device: str,
    progress: bool,
    budget_samples: int | None,
    eval_every_samples: int | None,
    num_workers: int,
) -> ProbeResult:
    started = time.perf_counter()
    dev = resolve_device(device)
    run = _Runner(job, probe_params(space), seed, dev, num_workers, space.fixed)
    lr_min, lr_max = space.lr_min, space.lr_max
    batch = probe_batch(None, settings, space.batch_min, batch_cap)
    ratio = (lr_max / lr_min) ** (1.0 / (settings.lr_steps - 1))
    with progress_bar(progress, f"probe: LR range test at B={batch} (your loop)", total=1, unit="test") as bar:
        try:
            ceiling, curve = _range_test(  # ended at once where the training set asks for a smaller batch
                run,
                batch,
                lr_min,
                lr_max,
                settings.lr_steps,
                ratio,
                on_data=lambda n: probe_batch(n, settings, space.batch_min, batch_cap) == batch,
            )
        except BatchLargerThanDataError as exc:  # a training set smaller than the default probe batch
            run.n_train, curve = exc.n_examples, []
            if exc.n_examples < space.batch_min:
                raise ConfigError(
                    f"batch_size.min ({space.batch_min}) is larger than the training set ({exc.n_examples} examples)",
                    source=space.source,
                    field="batch_size.min",
                ) from exc
        # the training set's size is known once the loop has opened ctx.loader: a small one takes a
        # smaller probe batch (as a task's does), and the test runs again at it
        if (sized := probe_batch(run.n_train, settings, space.batch_min, batch_cap)) != batch or not curve:
            batch = sized
            bar.set_description(f"probe: LR range test at B={batch} (your loop; {run.n_train} examples)")
            ceiling, curve = _range_test(run, batch, lr_min, lr_max, settings.lr_steps, ratio)
        bar.update(1)
    lr_probe = max(lr_min, settings.lr_fraction * ceiling)
    logger.info("probe: LR range test at B=%d: ceiling %.3g, probe lr %.3g", batch, ceiling, lr_probe)

    # B_simple is measured where the probe's own length rule ends or, where a trial is shorter, at a trial's
    # length, as the task probe measures at the end of its trial-long run: not past what any trial trains.
    # There the run is a trial (the study's milestones, seed and budget), and its still phase comes after
    # the trial's last evaluation. The run needs only the first range test: it trains next.
    train_samples = run_length(run.n_train, settings, batch, None)
    as_trial = budget_samples is not None and budget_samples <= train_samples
    if budget_samples is not None:
        train_samples = min(train_samples, budget_samples)
    every = run_eval_every(batch, train_samples, eval_every_samples, trial=as_trial)
    trained = -(-train_samples // batch) * batch  # whole steps: the still phase starts on a step
    measure = settings.measure_samples or 50 * batch
    before_run = run.samples
    with progress_bar(progress, "probe: B_simple trajectory and measurement (your loop)", total=1, unit="run") as bar:
        result, ctx = run(
            batch,
            lr_probe,
            trained + measure,
            track_noise=True,
            noise_every_steps=1,
            eval_every_samples=every,
            still_after=train_samples,
        )
        bar.update(1)
    if result.status is RunStatus.COMPLETED and result.samples < trained + measure:
        raise ConfigError(
            f"the probe run at batch_size={batch}: {returned_early(result.samples, trained + measure)}",
            source="probe",
        )
    if result.status is RunStatus.COMPLETED and not result.history:  # every trial would end so: say it now
        raise ConfigError(
            f"the probe's run trained {result.samples:,} samples, past its evaluation milestones, without calling "
            f"ctx.report: report {job.objective} with ctx.report({job.objective}=...) when ctx.at_milestone() (or "
            "return the final metrics as a dict); the study compares and prunes trials by it",
            source="probe",
        )
    if result.status is not RunStatus.COMPLETED:
        raise ConfigError(
            f"the probe run at batch_size={batch}, lr={lr_probe:.3g} ended {result.status.value}: {result.message}; "
            + failed_run_advice(result.message, lr_probe, lr_min),
            source="probe",
        )
    tracker = ctx._tracker
    if not ctx.used_tracker or tracker is None or tracker.still is None or not tracker.calls:
        raise ConfigError(
            "the probe measures B_simple from the gradients of your loop: make noise = ctx.noise_tracker(model) "
            f"and call noise.observe() between loss.backward() and optimizer.step(), {_WITHOUT}",
            source="probe",
        )
    est = tracker.still.estimate()
    if est is None:
        raise EstimationError(
            "the probe's still phase observed fewer than two chunks of gradients "
            "(noise.observe() must run on every step, between loss.backward() and optimizer.step())"
        )
    if est.rel_half_width > 2 * settings.rel_precision:
        logger.warning(
            "probe: B_simple %.4g is uncertain (90%% CI %.4g .. %.4g from sampling alone) from %d examples at one point",
            est.b_simple,
            est.ci[0],
            est.ci[1],
            est.n_examples,
        )

    # what the rest needs of the noise run, and then no reference to it: its context (the loop's model, optimizer
    # and gradients) would stay in memory through the large-batch range test and the ladder's largest batches
    momentum, as_first_trial = ctx.momentum, _trial_run(result, ctx, train_samples, before_run) if as_trial else None
    del ctx, tracker
    gc.collect()  # a Lightning module and its trainer hold each other: only a collection frees them
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # the large-batch range test bounds the rule's flat part: needed by the trials after the first
    big = min(batch_cap, run.n_train or batch_cap, max(batch, settings.large_batch_factor * batch))
    ceiling_big, cap = ceiling, None
    if big > batch and reached_max(ceiling, lr_max):  # the first test never blew up: nor would this one (see run_probe)
        logger.info("probe: LR range test at B=%d reached lr.max %.3g; none at B=%d", batch, lr_max, big)
    elif big > batch:
        start, steps = large_batch_sweep(ceiling, lr_min, lr_max, settings.lr_steps)
        try:
            with progress_bar(progress, f"probe: LR range test at B={big} (your loop)", total=1, unit="test") as bar:
                ratio_big = (lr_max / start) ** (1.0 / (steps - 1))  # as lr_range_test spreads its steps
                ceiling_big, _ = _range_test(run, big, start, lr_max, steps, ratio_big)
                bar.update(1)
            ceiling_big = max(ceiling_big, ceiling)  # a larger batch only raises the ceiling (see run_probe)
        except torch.OutOfMemoryError:
            cap, big = max(space.batch_min, big // 2), batch
            logger.warning("probe: batch size %d ran out of memory; the search stays at or below %d", 2 * cap, cap)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    throughput: dict[int, float] = {}
    throughput_iqr: dict[int, tuple[float, float]] = {}
    rungs = ladder_rungs(run.n_train, settings, space.batch_min, batch_cap, space.prior.batch_round, cap)
    bar = progress_bar(progress, "probe: throughput ladder (your loop)", total=len(rungs), unit="rung")
    todo = ladder_plan(rungs, settings, budget_samples)
    while todo:
        b, warmup, n_timed = todo.pop(0)
        n_steps = warmup + n_timed + 1  # n steps give n - 1 intervals
        timed, tctx = run(b, lr_probe, n_steps * b, evaluate=False)
        bar.update(1)
        if timed.status is RunStatus.OOM:
            cap = max(space.batch_min, b // 2)
            logger.warning("probe: batch size %d ran out of memory; the search stays at or below %d", b, cap)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            # rungs are up to 4x apart: measure the cap itself (the search's new top), as run_probe does
            todo = [(cap, warmup, n_timed)] if max(throughput, default=0) < cap < b else []
            continue
        times = tctx.step_times[warmup:]
        if timed.status is not RunStatus.COMPLETED or not times:
            logger.warning("probe: no step time at batch size %d (%s)", b, timed.message or timed.status.value)
            continue
        rate, spread = step_rate(b, times)
        throughput[b], throughput_iqr[b] = rate, spread
    bar.close()
    trajectory = trajectory_rows(result.noise_trajectory)
    # widened as the task probe's is, by the trajectory before the still phase (in it the parameters stand still)
    b_simple_ci, seed_spread = seed_spread_interval(
        est.b_simple,
        est.ci,
        [(p.samples, p.b_simple, p.ci) for p in result.noise_trajectory if p.samples <= trained],
        trained,
        est.confidence,
    )
    return ProbeResult(
        batch_size=batch,
        lr_ceiling=ceiling,
        lr_ceiling_large=ceiling_big,
        lr_ceiling_at_max=reached_max(ceiling, lr_max),
        lr_ceiling_large_at_max=reached_max(ceiling_big, lr_max),
        large_batch=big,
        lr_probe=lr_probe,
        b_simple=est.b_simple,
        b_simple_ci=b_simple_ci,
        trajectory=trajectory,
        temperature=lr_probe / (batch * (1.0 - momentum)),
        throughput=throughput,
        throughput_iqr=throughput_iqr,
        batch_ceiling=cap,
        samples_used=run.samples,
        lr_range=curve,
        device=str(dev),
        seconds=time.perf_counter() - started,
        b_simple_sampling_ci=est.ci,
        b_simple_seed_spread=seed_spread,
        b_simple_at_samples=trained,
        n_train=run.n_train,
        run=as_first_trial,
    )


def _trial_run(result: TrainResult, ctx: TrialContext, budget: int, samples_before: int) -> dict[str, Any] | None:
    """The noise run up to its still phase as the trial it was (see :attr:`ProbeResult.run`): a run of
    ``budget`` samples at the study's seed and milestones, evaluated last at its final milestone before
    the still phase began. None where the loop did not report there: its last evaluation came after the
    still phase (metrics the function returned), which no trial would have seen."""
    trained = ctx.freeze_from
    assert trained is not None, "the noise run holds still after its training (run_function's still_after)"
    last = result.history[-1] if result.history else None
    if last is None or last.milestone != budget or last.samples > trained:
        logger.info(
            "probe: your loop did not report %s at the trial's last milestone (%s samples) before the probe's "
            "still phase; its run stays the probe's cost, not the study's first trial",
            ctx.objective,
            f"{budget:,}",
        )
        return None
    cfg = result.config
    steps = trained // cfg.batch_size
    times = ctx.step_times[: steps - 1]  # the intervals between the trial's own steps
    trial = replace(
        result,
        config=replace(cfg, max_samples=budget),  # as it trained: the noise tracker on, as the task probe's run
        samples=trained,
        steps=steps,
        train_time_s=sum(times) / len(times) * steps if times else result.train_time_s * trained / result.samples,
        message="",
    )
    return trial_run(trial) | {"samples_before": samples_before}
