"""report.md: what to use, why, and what it costs, readable in a terminal and on a code host."""

from __future__ import annotations

import math
from typing import Any

from bstune.metrics import Direction
from bstune.records import rank_key
from bstune.report._markdown_compute import compute_optimal_lines, throughput_lines
from bstune.report._markdown_critical import critical_batch_lines
from bstune.report._markdown_recommend import recommendation_lines
from bstune.report._text import num as _n

__all__ = ["render_markdown"]


def _probe_and_prior(
    probe: dict[str, Any] | None,
    prior: dict[str, Any] | None,
    trials: list[dict[str, Any]] | None = None,
    b_simple: float | None = None,
) -> list[str]:
    """What the probe's LR range tests found and where the prior sent the first trials (report.json's
    ``probe`` and ``prior``; ``trials`` say whether the probe's run was recorded as one; ``b_simple``: the
    probe's, which the prior takes as B_noise)."""
    if not probe:
        return []

    def ceiling(value: float, at_max: bool | None) -> str:
        return f"≥{_n(value, '.3g')} (the space's lr.max, reached unbroken)" if at_max else _n(value, ".3g")

    text = (
        "The probe's LR range test found a ceiling (the rate at its lowest smoothed loss) of "
        f"{ceiling(probe['lr_ceiling'], probe.get('lr_ceiling_at_max'))} at batch size {probe['batch_size']}"
    )
    if probe.get("large_batch", 0) > probe["batch_size"] and probe.get("lr_ceiling_at_max"):
        text += (
            f"; none ran at {probe['large_batch']}: a larger batch only raises the ceiling, so it is at least "
            "lr.max there too"
        )
    elif probe.get("large_batch", 0) > probe["batch_size"]:
        large = ceiling(probe["lr_ceiling_large"], probe.get("lr_ceiling_large_at_max"))
        text += f" and {large} at {probe['large_batch']}"
    text += f"; the probe spent {probe['samples_used']:,} samples"
    run = probe.get("run")
    if run:
        text += (
            f", its trial-long run (batch size {run['batch_size']}, learning rate {_n(run['lr'], '.3g')}) among them"
        )
        adopted = next((t["number"] for t in trials or [] if t.get("from_probe")), None)
        if adopted is not None:  # its samples are the trial's: "Samples spent" counts the probe without them
            text += f"; the study recorded that run as trial {adopted}, and counts its samples with the trials"
    out = ["", text + "."]
    if prior:
        b_noise = float(prior["b_noise"])
        shown = _n(b_noise, ".3g" if b_noise < 1000 else ",.0f")
        power = "" if prior["alpha"] == 1 else f"^{_n(prior['alpha'], 'g')}"
        band = f"batch sizes {prior['batch_low']}–{prior['batch_high']}"
        if prior.get("search_batch_range"):
            lo, hi = prior["search_batch_range"]
            if lo == hi:  # the space fixes the batch size
                band = f"batch size {lo} (the only one the search allows)"
            else:
                if prior["batch_low"] <= lo or prior["batch_high"] >= hi:  # pushed against a limit: slid, not cut
                    band += (
                        " (the band below B_noise, slid inside the batch sizes the search allows, keeping its width)"
                    )
                band += f" (the search could draw from {lo}–{hi})"
        out.append(
            f"The prior drew its first trials from {band}, at learning rates "
            f"within {_n(prior['lr_width'], 'g')}x of the rule η*(B) ∝ s(B){power}, s(B) = 1/(1/B + 1/B_noise), "
            + (
                f"with B_noise taken as the probe's B_simple, {shown}"
                if b_simple and math.isclose(b_noise, b_simple)
                else f"with B_noise taken as {shown} (the probe's B_simple was not resolved)"
            )
            + f", anchored at η*({prior['b_ref']}) = {_n(prior['lr_ref'], '.3g')}"
            + (
                f" (every rate clipped to the space's lr range, {_n(prior['lr_min'], '.3g')}–{_n(prior['lr_max'], '.3g')})"
                if "lr_min" in prior and not prior["lr_min"] <= prior["lr_ref"] <= prior["lr_max"]
                else ""
            )
            + "."
        )
    return out


def _curvature_lines(ns: dict[str, Any]) -> list[str]:
    """The curvature-aware B_noise beside B_simple, or why it was not measured."""
    cur = ns.get("curvature") or {}
    if ns.get("measured_with_curvature"):
        lo, hi = ns.get("b_noise_curvature_ci") or [None, None]
        value = ns.get("b_noise_curvature")
        n = cur.get("n_examples")
        same = f" (B_simple of the same {n} examples: {_n(cur.get('b_simple'))})" if cur.get("b_simple") else ""
        if value is None and not lo:  # inf with an interval of 0 .. inf: say what it means, not the numbers
            return [
                f"The curvature-aware B_noise = tr(HΣ)/(GᵀHG) was measured{f' on {n} examples' if n else ''} but "
                "bounds nothing: GᵀHG, the curvature along the gradient, is not resolved above zero (negative "
                f"curvature there, or too noisy){same}. B_simple above stands alone."
            ]
        line = (
            f"B_noise = tr(HΣ)/(GᵀHG) = {_n(value) if value is not None else 'inf'} (90% CI {_n(lo)} .. "
            f"{_n(hi) if hi is not None else 'inf'}) at the same parameters: the noise scale weighted by the "
            "loss's curvature H, which B_simple takes to be isotropic, so the two differ where the Hessian is far "
            f"from it (B_simple of the same {cur.get('n_examples', 'n/a')} examples: {_n(cur.get('b_simple'))})."
        )
        if not cur.get("resolved", True):
            line += " GᵀHG is not resolved above zero (negative curvature along the gradient, or too noisy): no upper bound."
        return [line]
    if "skipped" in cur:
        return [f"The curvature-aware B_noise = tr(HΣ)/(GᵀHG) was not measured: {cur['skipped']}."]
    return []


def render_markdown(data: dict[str, Any]) -> str:
    """report.md from report.json's data: one section after another, as a person reads them."""
    study = data.get("study", {})
    out = [f"# bstune report: {study.get('name', 'study')}", ""]
    out += recommendation_lines(data)
    out += _noise_scale(data)
    out += critical_batch_lines(data)
    out += throughput_lines(data)
    out += compute_optimal_lines(data)
    out += _gap_and_memory(data)
    out += _rescored(data)
    out += _trials(data)
    out += _spent(data)
    return "\n".join(out)


def _noise_scale(data: dict[str, Any]) -> list[str]:
    """B_simple with its interval, what it was measured at, and the probe and prior built on it."""
    study = data.get("study", {})
    ns = data["noise_scale"]
    out = ["", "## Gradient noise scale", ""]
    if "error" in ns:
        out.append(ns["error"])
    else:
        lo, hi = ns["b_simple_ci"]
        out.append(
            f"B_simple = {_n(ns['b_simple'])} (90% CI {_n(lo)} .. {_n(hi) if hi is not None else 'inf'}), "
            f"measured by the probe at effective temperature η/(B(1−m)) = {_n(ns['temperature'], '.3g')} "
            "(m = the SGD momentum, taken as 0 for Adam-family optimizers, which the SGD temperature describes only roughly)."
        )
        if ns.get("b_simple_sampling_ci") and ns.get("b_simple_seed_spread") is not None:
            slo, shi = ns["b_simple_sampling_ci"]
            spread = float(ns["b_simple_seed_spread"])
            out.append(
                "The interval is widened by the spread of the probe run's own B_simple trajectory near the "
                f"measurement (log-sd {spread:.2g}), a stand-in for the variation another seed would see; at the "
                f"measured parameters alone it is {_n(slo)} .. {_n(shi) if shi is not None else 'inf'}. Across "
                "seeds B_simple varies a lot (log-sd 0.41-0.66 over 10 seeds on the benchmark problems, "
                "benchmarks/results/b_simple_seeds.md), and a second seed's fell inside 81-94% of these intervals "
                "there"
                + (
                    f"; a spread as small as {spread:.2g} leaves the interval about as narrow as the sampling one, "
                    "and another seed's B_simple may well fall outside it."
                    if spread < 0.2
                    else "."
                )
            )
        elif ns.get("b_simple_sampling_ci"):
            out.append(
                "The interval is the sampling interval at the measured parameters alone: the probe's run recorded "
                "too few B_simple trajectory points near the measurement to add the variation another seed would see "
                "(a loop that evaluates at the study's milestones records one per milestone), so another seed's "
                "B_simple may fall outside it."
            )
        if ns.get("micro_batch_size"):
            out.append(
                f"Measured from micro-batches of {ns['micro_batch_size']}: the model has BatchNorm, whose "
                "per-example gradients are not defined in train mode, and each micro-batch is normalised by its own "
                "statistics. The value therefore includes that noise and depends on the micro-batch size (on a "
                "digits MLP with BatchNorm: 760–1,080 for micro-batches of 4–64, against 514 for the same parameters "
                "in eval mode); read it as a rough scale, not to within 2x."
            )
        out += _curvature_lines(ns)
        out += _noise_against_data(ns.get("b_simple"), study.get("n_train"))
        out += _probe_and_prior(data.get("probe"), data.get("prior"), data.get("trials"), ns.get("b_simple"))
    return out


def _gap_and_memory(data: dict[str, Any]) -> list[str]:
    """The generalization gap's trend, and where running out of memory capped the batch size."""
    gap = data["generalization_gap"]
    out = ["", "## Generalization gap", "", gap.get("trend") or f"Not computed: {gap.get('error')}"]
    if data.get("memory"):
        out += ["", "## Out of memory", ""]
        for e in data["memory"]["events"]:
            if e["trial"] is None:
                out.append(
                    f"- The probe ran out of memory measuring throughput: batch sizes were capped at {e['ceiling']} "
                    "from the start."
                )
            else:
                out.append(
                    f"- Trial {e['trial']} ran out of memory at batch size {e['batch_size']}: batch sizes were "
                    f"capped at {_n(e['ceiling'])} for the rest of the study."
                )
        out += ["", f"Batch-size ceiling at the end of the study: {_n(data['memory']['batch_ceiling'])}."]
    return out


def _trials(data: dict[str, Any]) -> list[str]:
    """Every trial, best first, and why the unfinished ones ended."""
    study = data.get("study", {})
    out = [
        "",
        "## Trials",
        "",
        "Effective temperature η/(B(1−m)) as each trial recorded it (m = the SGD momentum, taken as 0 for Adam-family optimizers, which the SGD temperature describes only roughly). "
        f"A trial's value is the best {study.get('objective', 'objective')} over its evaluations (a pruned trial's, "
        "over those it reached), as the study compared trials; its last evaluation is in report.json's history.",
        *_training_set_line(study.get("n_train")),
        *_pruner_line(study.get("pruner")),
        "",
        "| # | status | batch | lr | η/(B(1−m)) | value | samples |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    sign = Direction(study.get("direction", "minimize")).sign  # best first, as the console lists them
    for t in sorted(data["trials"], key=lambda t: rank_key(t, sign)):
        out.append(
            f"| {t['number']} | {t['status']} | {t['batch_size']} | {_n(t['lr'], '.3g')} | "
            f"{_n(t['temperature'], '.3g')} | {_n(t['value'])} | {t['samples']:,} |"
        )
    out += _unfinished(data["trials"])
    return out


def _pruner_line(pruner: str | None) -> list[str]:
    """Which pruner stopped trials early (nothing for a result written before it was kept)."""
    if pruner is None:
        return []
    if pruner == "none":
        return ["No pruner: every trial that did not fail trained its whole budget."]
    return [f"Pruner: {pruner}, at the study's equal-sample milestones (a pruned trial stopped at one of them)."]


def _rescored(data: dict[str, Any]) -> list[str]:
    """The re-scored candidates' values per seed."""
    out: list[str] = []
    rescored = data.get("rescored") or []
    if rescored:
        out += [
            "",
            "## Re-scored",
            "",
            (f"The {len(rescored)} best trials" if len(rescored) > 1 else "The best trial")
            + f" trained again at {len(rescored[0]['seeds'])} more seed{'s' if len(rescored[0]['seeds']) != 1 else ''} "
            "(one seed moves a config's value by several percent); the best mean is recommended. A trial's own "
            "seed is the draw it was picked on, so the mean over all seeds leans optimistic (the winner's curse); "
            "the mean over the new seeds alone leans less"
            + (" (the choice among the candidates used them too)." if len(rescored) > 1 else "."),
            "",
            "| # | batch | lr | value per seed (own first) | mean ± SE | new seeds' mean ± SE |",
            "|---:|---:|---:|---|---|---|",
        ]
        for r in rescored:
            values = ", ".join(_n(v) for v in r["values"])
            mean = f"{_n(r['mean'])} ± {_n(r['sem'], '.2g')}" if r.get("mean") is not None else "failed at a seed"
            fresh = "n/a"
            if r.get("fresh_mean") is not None:
                fresh = _n(r["fresh_mean"]) + (
                    f" ± {_n(r['fresh_sem'], '.2g')}" if r.get("fresh_sem") is not None else ""
                )
            out.append(f"| {r['trial']} | {r['batch_size']} | {_n(r['lr'], '.3g')} | {values} | {mean} | {fresh} |")
    return out


def _spent(data: dict[str, Any]) -> list[str]:
    """The samples the study spent, by what spent them."""
    study = data.get("study", {})
    adopted = next((t["number"] for t in data.get("trials") or [] if t.get("from_probe")), None)
    return [
        "",
        f"Samples spent: {study.get('samples_total', 0):,} (probe {study.get('samples_probe', 0):,}"
        + (f" besides its run, trial {adopted}" if adopted is not None else "")
        + f", re-scoring {study.get('samples_rescore', 0):,}"
        + (
            f", {study['samples_rescore_unused']:,} of it an earlier run's, for candidates or seeds this one does not use"
            if study.get("samples_rescore_unused")
            else ""
        )
        + ").",
        "",
    ]


_UNFINISHED_SHOWN = 10  # trials whose reason is listed; the rest are counted


def _unfinished(trials: list[dict[str, Any]]) -> list[str]:
    """Why each trial that failed, ran out of memory, diverged or was interrupted did so: its message's
    first line (the traceback stays in report.json)."""
    ended = [
        t
        for t in sorted(trials, key=lambda t: t["number"])
        if t["status"] in ("failed", "oom", "diverged", "interrupted") and (t.get("message") or "").strip()
    ]
    if not ended:
        return []
    out = ["", "Trials that did not finish, and why:", ""]
    for t in ended[:_UNFINISHED_SHOWN]:
        reason = t["message"].strip().splitlines()[0]
        reason = reason if len(reason) <= 240 else reason[:239] + "…"
        out.append(f"- Trial {t['number']} ({t['status']}, batch {t['batch_size']}): {reason}")
    if len(ended) > _UNFINISHED_SHOWN:
        out.append(f"- and {len(ended) - _UNFINISHED_SHOWN} more (report.json holds each trial's message)")
    return out


def _training_set_line(n_train: int | None) -> list[str]:
    """The training set's size, where a run showed it: no batch can be larger, and the search is capped there."""
    if not n_train:
        return []
    return [
        f"Training set: {n_train:,} examples. No batch can be larger, so once a run had shown this size (the "
        "probe, or a training function's first ctx.loader), the search drew batch sizes at or below it."
    ]


def _noise_against_data(b_simple: float | None, n_train: int | None) -> list[str]:
    """A word where B_simple is not small against the training set, where its usual reading no longer holds."""
    if not n_train or b_simple is None or b_simple < n_train / 2:
        return []
    if b_simple >= n_train:
        return [
            f"B_simple is at or above the training set's size ({n_train:,} examples): every batch the data allow "
            "is below the noise scale, where a larger batch still cuts the steps nearly in proportion, up to "
            "full-batch training. It bounds nothing inside the data; the recommendation rests on the trials."
        ]
    return [
        f"B_simple is over half the training set ({n_train:,} examples): batches near it are most of the data, "
        "where the batch gradient is far less noisy than the noise scale implies (drawn without replacement, "
        "a batch of the whole set has none), so read it as a rough scale only."
    ]
