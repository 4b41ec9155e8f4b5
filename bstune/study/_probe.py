"""The probe: a short look at the problem before the search.

Three measurements, each counted in samples against the study's budget:

1. **LR range test** (Smith 2017) at the probe batch size: the learning rate grows
   geometrically step by step until the loss blows up. The largest rate that still
   reduces the loss bounds what any trial at this batch size can use. A second test
   at a batch ``large_batch_factor`` times larger bounds the rule's flat part; a
   larger batch only raises the ceiling (less noise), so it starts a decade below the
   first ceiling, at the same resolution, instead of at the space's lowest rate: on
   the benchmark problems that halves its cost. When the first test never blew up
   (its ceiling is the space's ``lr.max``) the second cannot find a higher one, and is
   skipped.
2. **Noise scale**: a run at a safe fraction of that ceiling with ``track_noise=True``,
   then B_simple measured with its interval at the parameters it reached. That interval
   (``b_simple_sampling_ci``) covers the sampling noise at those parameters only; the
   reported ``b_simple_ci`` is widened by the run's own B_simple trajectory near them
   (:func:`bstune.noise.seed_spread_interval`), which stands in for what another seed would
   measure. Where the model is small and has no BatchNorm, the curvature-aware B_noise =
   tr(HΣ)/(GᵀHG) is measured at the same parameters (:func:`bstune.noise.measure_curvature_noise_scale`);
   its gradient and Hessian examples count as samples, though its n Hessian-vector products per
   Hessian group cost more compute than that (the probe's ``seconds`` include them), and it is
   skipped when its timed first HVPs project past ``curvature_time_fraction`` of the run's
   training time (or ``CURVATURE_MIN_SECONDS``, where that is more). B_simple is
   measured at a sane learning rate because it scales as 1/T. Told the study's trial
   budget (``budget_samples``), this run is one trial's length, at the study's seed and
   milestones, and :attr:`ProbeResult.run` keeps it as a trial keeps its run, so the
   study can count it as a trial rather than as overhead; B_simple is still measured
   where the probe's own length rule ends (at the first milestone past it, on a copy of
   the parameters there), since it grows as training goes on. The run needs only the
   first range test, so it trains right after it, and the second range test (which only
   the rule, for the trials after it, needs) comes after the run: a study's first trial is
   done after one range test (``run["samples_before"]`` samples) rather than after all of
   the probe.
3. **Throughput**: a few steps at each batch size of a ladder (the ends of the space's
   batch range and every fourth power of two between) on the trial device, each step
   timed alone and the median kept, with the interquartile range of the per-step rates
   beside it; a batch size that runs out of memory caps the search at half of it, and
   that cap is measured too. Told the trial budget, the ladder spends at most
   ``throughput_fraction`` of it (the large batches get fewer timed steps, never fewer
   than three, after one warm-up step).

The range test is :mod:`bstune.study._range_test`, the throughput :mod:`bstune.study._throughput`, and
what each stage spends :mod:`bstune.study._probe_plan` (shared with :mod:`bstune.study._probe_function`).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from bstune._progress import progress_bar
from bstune.errors import BstuneError, ConfigError, UserCodeError
from bstune.noise import (
    TrajectoryPoint,
    curvature_skip_reason,
    measure_curvature_noise_scale,
    measure_noise_scale,
    resolve_device,
    seed_spread_interval,
)
from bstune.records import ProbeResult, clean_dict
from bstune.space import SearchSpace
from bstune.study._probe_plan import (
    ProbeSettings,
    failed_run_advice,
    ladder_plan,
    ladder_rungs,
    probe_batch,
    run_eval_every,
    run_length,
)
from bstune.study._range_test import large_batch_sweep, lr_range_test, reached_max
from bstune.study._status import trial_status
from bstune.study._throughput import measure_throughput
from bstune.study._trial import history_row
from bstune.task import Task, has_batchnorm
from bstune.training import EvalRecord, RunStatus, TrainConfig, TrainResult, train

__all__ = ["curvature_ci", "probe_space", "run_probe", "trajectory_rows", "trial_run"]

logger = logging.getLogger(__name__)

CURVATURE_MIN_SECONDS = 10.0  # the curvature-aware B_noise may always take this long (a tiny problem's run is faster)


def run_probe(
    task: Task,
    settings: ProbeSettings,
    *,
    batch_min: int,
    batch_max: int,
    lr_min: float,
    lr_max: float,
    batch_round: int = 1,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    budget_samples: int | None = None,
    eval_every_samples: int | None = None,
    num_workers: int = 0,
) -> ProbeResult:
    """Measure the LR ceiling, the noise scale and the throughput of ``task`` (see module doc).

    With ``progress``, each phase (LR range test, B_simple trajectory and measurement,
    throughput ladder) shows a progress bar on stderr.

    ``budget_samples`` (a study's trial budget) makes the probe's training run one
    trial: ``budget_samples`` long, evaluated every ``eval_every_samples`` (the study's
    milestones; default ten evaluations), at ``seed``; :attr:`ProbeResult.run` keeps it,
    and ``samples_used`` counts it. B_simple is measured at the first of its milestones
    past the length the probe would run without it (``ProbeSettings.train_samples``).
    It also bounds the throughput ladder (``ProbeSettings.throughput_fraction`` of it).
    Without it, the run ends at ``train_samples`` and every rung of the ladder runs in full.

    Raises:
        UserCodeError: the task's code raised (a label out of range, a bad shape deep in
            the data...); the message is one line, its ``traceback`` the whole story.
        ConfigError: the probe run diverged at the rate the range test chose.
    """
    try:
        return _run_probe(
            task,
            settings,
            batch_min=batch_min,
            batch_max=batch_max,
            lr_min=lr_min,
            lr_max=lr_max,
            batch_round=batch_round,
            seed=seed,
            device=device,
            progress=progress,
            budget_samples=budget_samples,
            eval_every_samples=eval_every_samples,
            num_workers=num_workers,
        )
    except (BstuneError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise UserCodeError(
            f"the probe failed in the task's code: {type(exc).__name__}: {exc}", traceback=traceback.format_exc()
        ) from exc


def _run_probe(
    task: Task,
    settings: ProbeSettings,
    *,
    batch_min: int,
    batch_max: int,
    lr_min: float,
    lr_max: float,
    batch_round: int,
    seed: int,
    device: str,
    progress: bool,
    budget_samples: int | None,
    eval_every_samples: int | None,
    num_workers: int,
) -> ProbeResult:
    started = time.perf_counter()
    dev = resolve_device(device)
    spec = task.optimizer_spec
    batch = probe_batch(task.n_train, settings, batch_min, batch_max)
    samples = 0
    with progress_bar(progress, f"probe: LR range test at B={batch}", total=settings.lr_steps, unit="step") as bar:
        ceiling, curve = lr_range_test(
            task, batch, lr_min, lr_max, settings.lr_steps, momentum=None, seed=seed, device=dev, on_step=bar.update
        )
    samples += len(curve) * batch
    before_run = samples  # the run needs only this test: the study's first trial, it trains next
    lr_probe = max(lr_min, settings.lr_fraction * ceiling)
    logger.info("probe: LR range test at B=%d: ceiling %.3g, probe lr %.3g", batch, ceiling, lr_probe)

    # B_simple is measured where the probe's own length rule ends (it grows as training goes on); told the
    # trial budget, the run goes on to it, a trial the study can count, from a snapshot of the parameters there
    measure_at = run_length(task.n_train, settings, batch, None)
    train_samples = run_length(task.n_train, settings, batch, budget_samples)
    # Probe run: split every step in two for the B_simple trajectory (BatchNorm: fine, micro-batch estimator).
    cfg = TrainConfig(
        batch_size=batch,
        lr=lr_probe,
        max_samples=train_samples,
        seed=seed,
        device=str(dev),
        track_noise=True,
        eval_every_samples=run_eval_every(batch, train_samples, eval_every_samples, trial=budget_samples is not None),
        num_workers=num_workers,  # the trials' loading (a generic dataset's random augmentation draws as in one)
    )
    with progress_bar(progress, "probe: B_simple trajectory", total=train_samples, unit="sample") as bar:
        model = task.make_model(seed=seed)  # as train makes it; trained in place, so advance can snapshot it
        snapshot: dict[str, torch.Tensor] | None = None
        snapshot_samples = 0

        def advance(record: EvalRecord) -> None:
            nonlocal snapshot, snapshot_samples
            bar.update(record.samples - bar.n)
            if snapshot is None and measure_at <= record.samples < train_samples:  # the first milestone past it
                snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
                snapshot_samples = record.samples

        run = train(task, cfg, advance, model=model)
    samples += run.samples
    if snapshot is None and (run.status is not RunStatus.COMPLETED or run.model is None):
        raise ConfigError(
            f"the probe run at batch_size={batch}, lr={lr_probe:.3g} ended {run.status.value}: {run.message}; "
            + failed_run_advice(run.message, lr_probe, lr_min),
            source="probe",
        )
    if run.status is not RunStatus.COMPLETED:  # past the point B_simple is measured at: a trial that ended so
        logger.warning("probe: its trial-length run ended %s: %s", run.status.value, run.message)
    if snapshot is not None:  # into a fresh module: none of the run's noise-tracking hooks, and the run untouched
        measured = task.make_model(seed=seed)
        measured.load_state_dict(snapshot)
    else:
        assert run.model is not None  # a run that completed returns its model (checked above)
        measured = run.model
    method = "micro_batch" if has_batchnorm(measured) else "per_example"
    # |G|² is resolved only by batches of size ~B_simple or more: grow the measurement
    # batch until the interval closes (at B = D the finite-population correction makes
    # the |G|² estimate exact).
    measure_batch = batch
    with progress_bar(progress, "probe: B_simple measurement", unit="sample") as bar:
        while True:
            est = measure_noise_scale(
                task,
                measured,
                batch_size=measure_batch,
                method=method,  # type: ignore[arg-type]
                rel_precision=settings.rel_precision,
                max_samples=settings.measure_samples or 50 * measure_batch,
                seed=seed,
                device=dev,
                warn_if_imprecise=False,
            )
            samples += est.n_examples
            bar.update(est.n_examples)
            if est.rel_half_width <= 2 * settings.rel_precision or measure_batch >= task.n_train:
                break
            measure_batch = min(task.n_train, 4 * measure_batch)
            logger.info(
                "probe: B_simple unresolved at batch %d (%s); measuring with batch %d",
                est.batch_size,
                est.ci,
                measure_batch,
            )
    if method == "micro_batch":
        logger.warning(
            "probe: the model has BatchNorm, whose per-example gradients are not defined in train mode, so B_simple "
            "(%.4g) was measured from micro-batches of %d, each normalised by its own statistics: the value "
            "includes that noise and depends on the micro-batch size (read it as a rough scale, not to 2x)",
            est.b_simple,
            est.micro_batch_size,
        )
    if est.rel_half_width > 2 * settings.rel_precision:
        logger.warning(
            "probe: B_simple %.4g is uncertain (90%% CI %.4g .. %.4g from sampling alone) even with batches of %d",
            est.b_simple,
            est.ci[0],
            est.ci[1],
            est.batch_size,
        )
    # the interval at these parameters, widened by what another seed would see (the trajectory's spread near them)
    measured_at = snapshot_samples if snapshot is not None else run.samples
    b_simple_ci, seed_spread = seed_spread_interval(
        est.b_simple, est.ci, [(p.samples, p.b_simple, p.ci) for p in run.noise_trajectory], measured_at, est.confidence
    )
    max_seconds = max(settings.curvature_time_fraction * run.train_time_s, CURVATURE_MIN_SECONDS)
    b_noise, curvature = _curvature(task, measured, settings, seed, dev, est.confidence, max_seconds)
    if curvature is not None and "n_examples" in curvature:
        samples += curvature["n_examples"] + curvature["n_hessian_examples"]
    # the large-batch range test bounds the rule's flat part: needed by the trials after the first
    big = min(batch_max, task.n_train, max(batch, settings.large_batch_factor * batch))
    ceiling_big = ceiling
    cap: int | None = None
    if big > batch and reached_max(ceiling, lr_max):  # the first test never blew up: nor would this one
        logger.info("probe: LR range test at B=%d reached lr.max %.3g; none at B=%d", batch, lr_max, big)
    elif big > batch:
        start, steps = large_batch_sweep(ceiling, lr_min, lr_max, settings.lr_steps)
        try:
            with progress_bar(progress, f"probe: LR range test at B={big}", total=steps, unit="step") as bar:
                ceiling_big, curve_big = lr_range_test(
                    task, big, start, lr_max, steps, momentum=None, seed=seed, device=dev, on_step=bar.update
                )
            samples += len(curve_big) * big
            # a larger batch only raises the ceiling; a test that blew up sooner from its higher start
            # must not cap the rule below what the small batch already bore
            ceiling_big = max(ceiling_big, ceiling)
        except torch.OutOfMemoryError:
            cap, big = max(batch_min, big // 2), batch
            logger.warning("probe: batch size %d ran out of memory; the search stays at or below %d", 2 * cap, cap)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    momentum = spec.momentum
    temperature = lr_probe / (batch * (1.0 - momentum))

    throughput: dict[int, float] = {}
    throughput_iqr: dict[int, tuple[float, float]] = {}
    rungs = ladder_rungs(task.n_train, settings, batch_min, batch_max, batch_round, cap)
    bar = progress_bar(progress, "probe: throughput ladder", total=len(rungs), unit="rung")
    todo = ladder_plan(rungs, settings, budget_samples)
    while todo:
        b, warmup, timed = todo.pop(0)
        rate, used, spread = measure_throughput(task, b, timed, lr=lr_probe, seed=seed, device=dev, warmup=warmup)
        samples += used
        bar.update(1)
        if rate is not None:
            throughput[b] = rate
            if spread is not None:
                throughput_iqr[b] = spread
            continue
        cap = max(batch_min, b // 2)
        logger.warning("probe: batch size %d ran out of memory; the search stays at or below %d", b, cap)
        # rungs are up to 4x apart: measure the cap itself (the search's new top) unless a rung already did
        todo = [(cap, warmup, timed)] if max(throughput, default=0) < cap < b else []
    trajectory = trajectory_rows(run.noise_trajectory)
    bar.close()  # the throughput ladder's
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
        temperature=temperature,
        throughput=throughput,
        throughput_iqr=throughput_iqr,
        batch_ceiling=cap,
        samples_used=samples,
        lr_range=curve,
        device=str(dev),
        seconds=time.perf_counter() - started,
        run=trial_run(run) | {"samples_before": before_run} if budget_samples is not None else None,
        b_simple_sampling_ci=est.ci,
        b_simple_seed_spread=seed_spread,
        b_simple_at_samples=measured_at,
        b_noise=b_noise,
        b_noise_ci=(curvature_ci(curvature) if curvature is not None else None),
        curvature=curvature,
        n_train=task.n_train,
        b_simple_micro_batch=est.micro_batch_size if method == "micro_batch" else None,
    )


def _curvature(
    task: Task,
    model: torch.nn.Module,
    settings: ProbeSettings,
    seed: int,
    device: torch.device,
    confidence: float,
    max_seconds: float | None = None,
) -> tuple[float | None, dict[str, Any] | None]:
    """The curvature-aware B_noise at B_simple's parameters, where it is cheap: ``(b_noise, its estimate's
    dict)``; ``(None, {"skipped": reason})`` where it is not, ``(None, None)`` where turned off."""
    if settings.curvature_examples <= 0:
        return None, None
    reason = curvature_skip_reason(model)
    if reason is not None:
        logger.info("probe: no curvature-aware B_noise: %s", reason)
        return None, {"skipped": reason}
    n = min(settings.curvature_examples, task.n_train)
    try:
        cest = measure_curvature_noise_scale(
            task, model, n_examples=n, seed=seed, device=device, confidence=confidence, max_seconds=max_seconds
        )
    except BstuneError as exc:  # a model torch.func cannot differentiate twice: B_simple stands alone
        logger.warning("probe: no curvature-aware B_noise: %s", exc)
        return None, {"skipped": str(exc)}
    logger.info("probe: %s", cest)
    return cest.b_noise, cest.to_dict()


def curvature_ci(curvature: dict[str, Any]) -> tuple[float, float] | None:
    """B_noise's interval from :attr:`ProbeResult.curvature` (``None`` upper end: unbounded)."""
    ci = curvature.get("ci")
    if ci is None:
        return None
    return (float(ci[0]), math.inf if ci[1] is None else float(ci[1]))


def trial_run(run: TrainResult) -> dict[str, Any]:
    """The probe's training run as a study's trial keeps its run (see :attr:`ProbeResult.run`)."""
    cfg = run.config
    return clean_dict(
        {
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "samples": run.samples,
            "steps": run.steps,
            "status": trial_status(run.status),
            "message": run.message,
            "throughput": run.throughput,
            "history": [history_row(r) for r in run.history],
            "config": cfg.to_dict(),
        }
    )


def trajectory_rows(points: Sequence[TrajectoryPoint]) -> list[dict[str, Any]]:
    """A B_simple trajectory as the probe record keeps it (non-finite values as ``None``)."""
    return [
        {
            "samples": p.samples,
            "b_simple": p.b_simple if math.isfinite(p.b_simple) else None,
            "ci": [v if math.isfinite(v) else None for v in p.ci],
            "temperature": p.temperature,
        }
        for p in points
    ]


def probe_space(
    task: Task,
    space: SearchSpace,
    settings: ProbeSettings | None = None,
    *,
    batch_cap: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    budget_samples: int | None = None,
    eval_every_samples: int | None = None,
    num_workers: int = 0,
) -> ProbeResult:
    """The probe over a search space's ranges: what a study in the prior mode runs first.

    ``batch_cap`` (default: the space's largest batch size, at most the training set) bounds the batch
    sizes it tries; ``budget_samples``, ``eval_every_samples`` and ``num_workers`` (a study's trial budget,
    milestones and loading) make its training run one trial (see :func:`run_probe`).
    """
    cap = batch_cap if batch_cap is not None else min(space.batch_max or task.n_train, task.n_train)
    if space.optimizer_named and task.optimizer_spec != space.optimizer:  # as a study trains it: the space's
        task = replace(task, optimizer=space.optimizer, validate=False)
    return run_probe(
        task,
        settings or ProbeSettings(),
        batch_min=space.batch_min,
        batch_max=cap,
        lr_min=space.lr_min,
        lr_max=space.lr_max,
        batch_round=space.prior.batch_round,
        seed=seed,
        device=device,
        progress=progress,
        budget_samples=budget_samples,
        eval_every_samples=eval_every_samples,
        num_workers=num_workers,
    )
