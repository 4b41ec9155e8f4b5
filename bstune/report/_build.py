"""Building the report: from a study's trials to the numbers a person acts on.

The sections follow report.json, the machine-readable contract: noise_scale,
critical_batch, throughput, compute_optimal, generalization_gap, recommended, trials.
A section that the data cannot support (too few batch sizes reached the target,
no throughput measured) says why in its ``error`` field instead of guessing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bstune._files import replace_text
from bstune.analysis import (
    BatchPoint,
    CriticalBatchFit,
    GapSummary,
    bin_points,
    choose_target,
    compute_optimal,
    direction_doubt,
    fit_critical_batch,
    generalization_gap,
    nearby_targets,
    pruned_flat,
    recommend_batch_schedule,
    step_noise_of,
    steps_by_batch,
    steps_to_target,
)
from bstune.errors import BstuneError, ConfigError
from bstune.metrics import Direction
from bstune.records import ProbeResult, StudyData, TrialStatus, clean_dict
from bstune.report._recommend import recommend, training_set_size

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """A study's report. ``data`` is report.json; :meth:`save` writes every format.

    Example:
        >>> report = Report({"recommended": {"batch_size": 64, "lr": 0.1}, "trials": []})
        >>> report.recommended["batch_size"]
        64
    """

    data: dict[str, Any]

    @property
    def recommended(self) -> dict[str, Any]:
        """Batch size, learning rate and the other settings to train with, and why; what is
        computed from the settings (the effective temperature) sits apart, under ``derived``."""
        return dict(self.data["recommended"])

    def to_dict(self) -> dict[str, Any]:
        return clean_dict(self.data)

    def to_markdown(self) -> str:
        from bstune.report._markdown import render_markdown

        return render_markdown(self.data)

    def to_html(self) -> str:
        """report.html: the markdown's content with the figures, self-contained (see :mod:`bstune.report._html`)."""
        from bstune.report._html import render_html

        return render_html(self.data)

    def save(self, path: str) -> dict[str, str]:
        """Write report.json, report.md and report.html into folder ``path``; returns format -> file.

        Every format is rendered before any file is written, and each file replaces the
        old one whole (written beside it, then renamed), so a failure leaves the previous
        report as it was.
        """
        folder = Path(path)
        texts = {
            "json": json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n",
            "md": self.to_markdown(),
            "html": self.to_html(),  # the figures take a moment
        }
        folder.mkdir(parents=True, exist_ok=True)
        files = {fmt: folder / f"report.{fmt}" for fmt in texts}
        for fmt, text in texts.items():
            replace_text(files[fmt], text)
        return {k: str(v) for k, v in files.items()}


def _point_dict(p: BatchPoint) -> dict[str, Any]:
    return {
        "batch_size": p.batch_size,
        "steps": p.steps,
        "samples": p.samples,
        "lr": p.lr,
        "reached": not p.lower_bound,
        "first_evaluation": p.upper_bound,  # reached by then: its steps are an upper bound, not in the fit
        "trial": p.trial,
    }


def _curvature_fields(probe: ProbeResult | None) -> dict[str, Any]:
    """report.json's noise_scale keys beyond B_simple: its sampling-only interval and the spread that
    widened it (absent from older probes), and the curvature-aware B_noise where the probe measured it."""
    if probe is None:
        return {"measured_with_curvature": False}
    out: dict[str, Any] = {}
    if probe.b_simple_sampling_ci is not None:
        out["b_simple_sampling_ci"] = list(probe.b_simple_sampling_ci)
        out["b_simple_seed_spread"] = probe.b_simple_seed_spread
    # measured where it has a value, or a record that was not skipped (an unbounded B_noise is inf in memory,
    # null once saved: measured all the same)
    measured = probe.b_noise is not None or bool(probe.curvature and "skipped" not in probe.curvature)
    out["measured_with_curvature"] = measured
    if measured:
        finite = probe.b_noise is not None and math.isfinite(probe.b_noise)
        out["b_noise_curvature"] = probe.b_noise if finite else None
        out["b_noise_curvature_ci"] = list(probe.b_noise_ci) if probe.b_noise_ci is not None else None
    if probe.curvature is not None:
        out["curvature"] = probe.curvature
    return out


def _probe_dict(probe: ProbeResult) -> dict[str, Any]:
    """The probe's measurements besides the noise scale: its batch sizes, LR range tests and cost."""
    run = probe.run or {}
    return {
        "batch_size": probe.batch_size,
        "lr_probe": probe.lr_probe,
        "lr_ceiling": probe.lr_ceiling,  # the range test's at batch_size
        "lr_ceiling_at_max": probe.lr_ceiling_at_max,  # True: it reached lr.max unbroken, a lower bound
        "large_batch": probe.large_batch,
        "lr_ceiling_large": probe.lr_ceiling_large,
        "lr_ceiling_large_at_max": probe.lr_ceiling_large_at_max,
        "batch_ceiling": probe.batch_ceiling,  # None: every batch size tried fit in memory
        "samples_used": probe.samples_used,
        "seconds": probe.seconds,
        "device": probe.device,
        "run": {k: run[k] for k in ("batch_size", "lr", "seed") if k in run} or None,  # its trial-long run
    }


def _fit_dict(fit: CriticalBatchFit, b_simple: float | None) -> dict[str, Any]:
    out = fit.to_dict()
    if b_simple and math.isfinite(b_simple) and fit.identified:
        out["b_crit_over_b_simple"] = fit.b_crit / b_simple
    return out


def _nearby(trials: list[Any], target: float, metric: str, direction: Direction) -> list[dict[str, Any]]:
    """The S(B) fit at the targets next to ``target`` (one batch size fewer or more reaches them): whether
    the verdict on B_crit holds there, or turns on the choice of target."""
    out: list[dict[str, Any]] = []
    for value in nearby_targets(trials, target, metric, direction=direction):
        try:
            fit = fit_critical_batch(bin_points(steps_by_batch(trials, value, metric, direction=direction)))
        except BstuneError:  # too few batch sizes reach it to fit: no verdict there to compare
            continue
        out.append(
            {"target": value, "identified": fit.identified, "b_crit": fit.b_crit, "b_crit_ci": list(fit.b_crit_ci)}
        )
    return out


def build_report(result: StudyData, target: Mapping[str, Any] | None = None, *, n_workers: int = 1) -> Report:
    """Analyse ``result``'s trials into a :class:`Report`.

    Args:
        result: a finished study (or one loaded with :meth:`bstune.study.StudyResult.load`).
        target: ``{"metric": "train_loss", "value": 1.0}`` (and ``"direction"``, where the result does not
            say the metric's: a training function's study knows only its objective's and the losses'); the metric defaults to
            ``train_loss`` (steps to a training-loss target, as McCandlish et al. measure),
            the value to the hardest one that two thirds of the batch sizes reach (a
            harder one where they reach that by their first evaluation: see
            :func:`bstune.analysis.choose_target`). A
            target is reached in the metric's direction (``result.direction_of``): at or
            below it for a loss, at or above it for an accuracy.
        n_workers: data-parallel workers for the wall-time optimum.

    Raises:
        ConfigError: a bad target, or a metric the study did not record (nothing is built).
    """
    target = dict(target or {})
    unknown = set(target) - {"metric", "value", "direction"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)}; expected 'metric', 'value' and 'direction'",
            source="report",
            field="target",
        )
    metric = str(target.get("metric", "train_loss"))
    direction = result.direction_of(metric, source="report", field="target.metric", given=target.get("direction"))
    # trials whose code raised keep what they trained (the samples spent) but say nothing of steps to a target
    trials = [t for t in result.trials if t.history and t.batch_size and t.status != TrialStatus.FAILED]
    probe = result.probe
    b_simple = probe.b_simple if probe else None
    data: dict[str, Any] = {
        "study": {
            "name": result.study_name,
            "mode": result.mode,
            "objective": result.objective,
            "direction": Direction(result.direction).value,
            "budget_samples": result.budget_samples,
            "samples_total": result.samples_total,
            "samples_probe": result.samples_probe,
            "samples_rescore": result.samples_rescore,
            "samples_rescore_unused": getattr(result, "samples_rescore_unused", 0),
            "n_trials": len(result.trials),
            "directions": {k: v.value for k, v in result.metric_directions().items()},
            "n_train": training_set_size(result),
            "subject": getattr(result, "subject", None),  # "task", "function" (the user's loop), None: not said
            "pruner": getattr(result, "pruner", None),  # None: a result written before it was kept
        }
    }
    data["noise_scale"] = (
        {
            "b_simple": b_simple,
            "b_simple_ci": list(probe.b_simple_ci) if probe else None,
            "trajectory": probe.trajectory if probe else [],
            "temperature": probe.temperature if probe else None,
            "lr_ceiling": probe.lr_ceiling if probe else None,
            "lr_ceiling_at_max": probe.lr_ceiling_at_max if probe else None,  # then a lower bound: lr.max
            # measured from micro-batches of this size (BatchNorm in train mode); None: per-example gradients
            "micro_batch_size": probe.b_simple_micro_batch if probe else None,
            **_curvature_fields(probe),
        }
        if probe
        else {"error": "no probe in this study (baseline mode)"}
    )

    if probe is not None:  # what the probe measured, so report.json alone says what the prior rests on
        data["probe"] = _probe_dict(probe)
    prior = getattr(result, "prior", None)
    if prior is not None:
        data["prior"] = {
            k: getattr(prior, k)
            for k in (
                "b_noise",
                "batch_low",
                "batch_high",
                "b_ref",
                "lr_ref",
                "alpha",
                "lr_width",
                "weight",
                "lr_min",
                "lr_max",
            )
        } | {  # older priors searched the band alone: no range of their own
            "search_batch_range": list(prior.batch_range) if prior.search_low is not None else None
        }

    # one reading of the gap serves three sections: its own, and the trials that barely learned, which the S(B)
    # fit and the LR table leave out (a rate that did not train bounds nothing)
    gap = _gap_of(result)
    stuck = (
        {g.number for g in gap.barely_learned if g.number is not None} | pruned_flat(result.trials, gap)
        if isinstance(gap, GapSummary)
        else set()
    )
    fit: CriticalBatchFit | None = None
    critical: dict[str, Any] = {"metric": metric, "direction": direction.value}
    tried = sorted({int(t.batch_size) for t in trials if t.batch_size})
    if tried:  # every batch size a trial ran at; the fit keeps one point per half-octave of them
        critical["batch_sizes_tried"] = {"min": tried[0], "max": tried[-1], "n": len(tried)}
    try:
        value = float(target["value"]) if "value" in target else choose_target(trials, metric, direction=direction)
        critical["target"] = value
        critical["target_chosen"] = "given" if "value" in target else "default"
        # a trial that ended barely better than untrained (it diverged, or did not train) and never reached the
        # target ran at a rate that did not train: no bound on S(B)
        barely = {
            t.number
            for t in trials
            if t.number in stuck
            and not steps_to_target(t.history, int(t.batch_size or 1), value, metric, direction=direction).reached
        }
        fitted = [t for t in trials if t.number not in barely]
        if left_out := sorted(
            (t.number, int(t.batch_size or 0), t.status == TrialStatus.PRUNED) for t in trials if t.number in barely
        ):
            critical["left_out_barely_learned"] = [{"trial": n, "batch_size": b, "pruned": p} for n, b, p in left_out]
        points = bin_points(steps_by_batch(fitted, value, metric, direction=direction))
        critical["points"] = [_point_dict(p) for p in points]
        fit = fit_critical_batch(points)
        critical.update(_fit_dict(fit, b_simple))
        critical["nearby_targets"] = near = _nearby(fitted, value, metric, direction)
        critical["verdict_turns_on_target"] = any(v["identified"] != fit.identified for v in near)
    except BstuneError as exc:
        critical["error"] = str(exc)
    measured = getattr(result, "critical_measured", None)
    if measured:
        critical["measured"] = measured
    critical["headline"] = _headline(critical, measured)
    if measured:
        critical["schedule"] = _schedule(measured, result.best_config)
    data["critical_batch"] = critical
    # the batch-size advice (LR table, compute-optimal batch) rests on the most reliable fit: the direct
    # measurement's whole-run fit where it identifies B_crit, else the trials'
    advice, critical["advice_from"] = fit, "fitted" if fit is not None else "none"
    measured_fit = _measured_fit(measured)
    if measured_fit is not None and (measured_fit.identified or fit is None or not fit.identified):
        advice, critical["advice_from"] = measured_fit, "measured"
    elif measured:  # measured, and set aside: say why, where the measurement's paragraph would claim the advice
        why = "; ".join(measured_fit.unidentified_because()) if measured_fit is not None else "it gives no fit"
        critical["measured_set_aside"] = f"the whole run's fit does not identify B_crit ({why})"

    throughput = dict(probe.throughput) if probe else {}
    data["throughput"] = {
        "samples_per_s": {str(b): r for b, r in sorted(throughput.items())},
        # (q25, q75) of the per-step rates; samples_per_s is their median
        "samples_per_s_iqr": {str(b): list(v) for b, v in sorted(probe.throughput_iqr.items())} if probe else {},
        "device": probe.device if probe else None,
    }
    optimum = None
    if advice is not None and advice.b_crit_ci[0] == 0 and math.isinf(advice.b_crit_ci[1]):
        data["compute_optimal"] = {
            "error": f"the S(B) fit bounds B_crit on neither side (its {100 * advice.confidence:g}% interval is "
            "0–∞), so the data cannot say which batch size reaches the target soonest"
        }
    elif advice is not None and len(throughput) >= 2:
        try:
            # no batch, one worker's or all workers' together, larger than the training set
            n_train = data["study"].get("n_train")
            optimum = compute_optimal(
                advice,
                throughput,
                n_workers=n_workers,
                batch_range=(1, int(n_train)) if n_train else None,
                throughput_spread=probe.throughput_iqr if probe else None,
            )
            data["compute_optimal"] = {
                "device": vars(optimum.device),
                "wall": vars(optimum.wall),
                "n_workers": n_workers,
                "summary": optimum.summary,
            }
        except BstuneError as exc:
            data["compute_optimal"] = {"error": str(exc)}
    else:
        data["compute_optimal"] = {"error": "needs the critical-batch fit and throughput at two or more batch sizes"}

    if isinstance(gap, GapSummary):
        data["generalization_gap"] = {
            "trend": gap.trend,
            "trials": [vars(t) for t in gap.trials],
            "barely_learned": [vars(t) for t in gap.barely_learned],
            "untrained_loss": gap.untrained_loss,
            "untrained_from": gap.untrained_from,
            "learned_below": gap.learned_below,
            "loss": vars(gap.loss),
        }
    else:
        data["generalization_gap"] = {"error": gap}

    memory = _memory(result)
    if memory is not None:
        data["memory"] = memory
    data["recommended"] = recommend(result, fit, advice, barely=stuck)
    doubt = direction_doubt(result.trials, result.objective, result.direction)
    if doubt is not None:
        data["recommended"]["direction_doubt"] = doubt
    by_number = {t.number: t for t in result.trials}
    data["rescored"] = [  # the candidates the recommendation was chosen from, by their mean over seeds
        r.to_dict() | {"batch_size": by_number[r.trial].batch_size, "lr": by_number[r.trial].lr}
        for r in result.rescored
        if r.trial in by_number
    ]
    data["trials"] = [t.to_dict() for t in result.trials]
    return Report(clean_dict(data))


def _gap_of(result: StudyData) -> GapSummary | str:
    """The study's generalization gap, or why it cannot be read (no training loss recorded, ...)."""
    first = result.probe.lr_range[0][1] if result.probe is not None and result.probe.lr_range else None
    try:
        return generalization_gap(result.trials, untrained_loss=first)
    except BstuneError as exc:
        return str(exc)


def _headline(critical: Mapping[str, Any], measured: Mapping[str, Any] | None) -> dict[str, Any]:
    """The most reliable B_crit the report has: the direct measurement's whole-run fit, else the trials' fit.

    ``source`` says which (``"measured"``, ``"fitted"`` or ``"none"``); ``identified`` whether the
    data pin it down (else ``b_crit`` is an extrapolation or a bound, see the section's text); for the
    fit, ``turns_on_target`` whether that verdict differs at a nearby target.
    """
    whole = (measured or {}).get("whole")
    if whole:
        return {
            "source": "measured",
            "b_crit": whole["b_crit"],
            "b_crit_ci": whole["b_crit_ci"],
            "identified": whole["identified"],
        }
    if "b_crit" in critical:
        return {
            "source": "fitted",
            "b_crit": critical["b_crit"],
            "b_crit_ci": critical["b_crit_ci"],
            "identified": critical.get("identified", False),
            # the verdict differs at a nearby target (one batch size fewer or more reaching): fragile
            "turns_on_target": critical.get("verdict_turns_on_target", False),
        }
    return {"source": "none"}


def _schedule(measured: Mapping[str, Any], best: Mapping[str, Any]) -> dict[str, Any]:
    """A batch-size warmup that follows the measured local B_crit (:func:`recommend_batch_schedule`)."""
    points = []
    for seg in measured.get("segments", []):
        fit = seg.get("fit") or {}
        if fit.get("b_crit") is not None and fit.get("identified"):
            points.append((int(seg["start_samples"]), float(fit["b_crit"])))
    ref = measured["reference"]
    ladder = [int(b) for b in measured.get("ladder", [])] or [int(ref["batch_size"])]
    family = str(best.get("optimizer") or "sgd")
    try:
        schedule = recommend_batch_schedule(
            points,
            base_batch=int(ref["batch_size"]),
            base_lr=float(ref["lr"]),
            budget_samples=int(ref["budget_samples"]),
            batch_min=min(ladder[0], int(ref["batch_size"])),
            batch_max=max(ladder[-1], int(ref["batch_size"])),
            family=family,
            alpha=float(ref["alpha"]) if family != "sgd" and ref.get("alpha") is not None else None,
            window=1,  # a few fitted points, each with its interval: no median against noisy windows
        )
    except BstuneError as exc:
        return {"error": f"no schedule: {exc}"}
    return {
        "stages": [
            {"start_samples": s.start_samples, "batch_size": s.batch_size, "lr": s.lr, "b_crit": s.b_crit}
            for s in schedule.stages
        ],
        "batch_schedule": [list(s) for s in schedule.batch_schedule],
        "budget_samples": schedule.budget_samples,
    }


def _measured_fit(measured: Mapping[str, Any] | None) -> CriticalBatchFit | None:
    """The direct measurement's whole-run fit, refitted from its points (a dict in report.json, a fit here)."""
    points = (measured or {}).get("whole_points")
    if not points:
        return None
    level = float((measured or {}).get("settings", {}).get("confidence", 0.9))
    batch_points = [
        BatchPoint(int(p["batch_size"]), p["steps"], p["samples"], p["lr"], bool(p["lower_bound"])) for p in points
    ]
    try:
        return fit_critical_batch(batch_points, confidence=level, step_noise=step_noise_of(batch_points))
    except BstuneError:
        return None


def _memory(result: StudyData) -> dict[str, Any] | None:
    """Where running out of memory capped the batch size: the probe's cap, then each OOM trial's; None if nowhere."""
    events: list[dict[str, Any]] = []
    if result.probe is not None and result.probe.batch_ceiling is not None:
        events.append({"trial": None, "batch_size": None, "ceiling": result.probe.batch_ceiling})
    for t in sorted(result.trials, key=lambda t: t.number):
        if t.status == TrialStatus.OOM:
            events.append({"trial": t.number, "batch_size": t.batch_size, "ceiling": t.batch_ceiling})
    if not events:
        return None
    ceilings = [e["ceiling"] for e in events if e["ceiling"] is not None]
    return {"batch_ceiling": min(ceilings) if ceilings else None, "events": events}
