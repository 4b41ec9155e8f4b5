"""report.md's critical-batch section: B_crit measured directly (branches at a ladder of batch sizes),
and fitted to the study's own trials' steps to the target."""

from __future__ import annotations

import math
from typing import Any

from bstune.metrics import Direction
from bstune.report._text import num as _n

__all__ = ["critical_batch_lines", "target_text"]


def target_text(cb: dict[str, Any]) -> str:
    """``val_accuracy ≥ 0.9`` or ``train_loss ≤ 0.3``: the target, with the side on which it counts as reached."""
    side = "≥" if Direction(cb.get("direction", "minimize")) is Direction.MAXIMIZE else "≤"
    return f"{cb['metric']} {side} {_n(cb.get('target'))}"


def _b_crit(fit: dict[str, Any]) -> str:
    """``B_crit = 350 [200–∞]`` from a fit's numbers in report.json."""
    lo, hi = fit["b_crit_ci"]  # an open end is null in report.json
    top = "∞" if hi is None or math.isinf(float(hi)) else f"{float(hi):,.0f}"
    return f"B_crit = {float(fit['b_crit']):,.0f} [{float(lo or 0):,.0f}–{top}]"


def _harder(value: float, cb: dict[str, Any]) -> bool:
    """Whether ``value`` is a harder target than the section's own."""
    sign = Direction(cb.get("direction", "minimize")).sign
    return bool(sign * value < sign * float(cb["target"]))


def _nearby(cb: dict[str, Any], subject: str | None = None) -> list[str]:
    """Whether the verdict on B_crit holds at the targets next to this one, or turns on the choice of target."""
    near = cb.get("nearby_targets") or []
    if not near:
        return []
    at = (
        f"At the nearest targets either side ({', '.join(_n(v['target']) for v in near)}; one batch size fewer or "
        "more reaches each)"
        if len(near) > 1
        else f"At the nearest target ({_n(near[0]['target'])}, which one batch size "
        + ("fewer" if _harder(near[0]["target"], cb) else "more")
        + " reaches)"
    )
    if all(bool(v["identified"]) == bool(cb["identified"]) for v in near):
        if not cb["identified"]:
            return [f"{at} the fit does not identify B_crit either."]
        return [f"{at} the fit identifies B_crit too: " + "; ".join(f"{_n(v['target'])}: {_b_crit(v)}" for v in near)
                + "."]  # fmt: skip
    flipped = [v for v in near if bool(v["identified"]) != bool(cb["identified"])]
    said = "; ".join(
        f"at {_n(v['target'])}, where one batch size {'fewer' if _harder(v['target'], cb) else 'more'} reaches it, "
        + (f"the fit does identify it ({_b_crit(v)})" if v["identified"] else "it does not")
        for v in flipped
    )
    settle = (
        "a direct measurement, which needs a bstune.Task, would settle it"
        if subject == "function"
        else 'a direct measurement (`critical_batch="measure"`, `bstune crit`) settles it'
    )
    return [
        f"**Whether the data identify B_crit turns on the target**: {said}. Read the verdict above as fragile; {settle}."
    ]


def _direct_measurement(data: dict[str, Any]) -> str:
    """How to measure B_crit on purpose, as far as this study's subject allows it."""
    if data.get("study", {}).get("subject") == "function":
        return (
            'A number measured on purpose (`critical_batch="measure"`, `bstune crit`) needs a bstune.Task: it '
            "branches copies of one run's model and optimizer from checkpoints, which a training function's own loop "
            "does not hand over."
        )
    return (
        "For a number measured on purpose (branches at a ladder of batch sizes, two seeds, over training) run the "
        'study with `critical_batch="measure"`, or `bstune crit SCRIPT FOLDER`.'
    )


def _measured(m: dict[str, Any], set_aside: str | None = None) -> list[str]:
    """The direct measurement's paragraph and its trajectory table (the section's lead)."""
    ref = m["reference"]
    whole = m.get("whole")
    settings = m.get("settings", {})
    seeds = settings.get("seeds", 2)
    head = (
        "**Measured directly**"
        + ("" if set_aside else " (the most reliable number here)")
        + f": from the recommended config (batch size "
        f"{ref['batch_size']}, learning rate {_n(ref['lr'], '.3g')}) trained at a constant rate for "
        f"{ref['budget_samples']:,} samples, branches at batch sizes {', '.join(str(b) for b in m['ladder'])} "
        f"and {seeds} seeds each, from initialisation to the reference's final loss and from checkpoints to the "
        f"loss the reference reached next (learning rate by the η/B rule and a search around it). "
    )
    if whole:
        head += (
            f"For the whole run, from initialisation to train_loss {_n(m['final_loss'], '.4g')}: {whole['summary']}. "
            + (
                f"The recommendation's batch-size advice (LR table, compute-optimal batch size) rests on the "
                f"trials' fit instead: {set_aside}."
                if set_aside
                else "The recommendation's batch-size advice rests on this number: its interval holds the "
                "scatter between the seeds."
            )
        )
    else:
        head += f"The whole run gives no fit: {m.get('whole_error')}."
    if m.get("whole_b_tolerance") is not None:
        tol = 100 * settings.get("tolerance", 0.2)
        head += (
            f" The largest batch size branched at whose sample cost stays within {tol:.0f}% of the cheapest: "
            f"{m['whole_b_tolerance']}."
        )
    head += f" Cost: {m['cost_samples']:,} samples ({_n(m['cost_budgets'], '.1f')}x one trial's budget), not in the study's total."
    out = [
        head,
        "",
        "B_crit over training (each segment: S(B) from its checkpoint to the loss the reference reached at the "
        "next; B_crit grows as the loss falls, so a batch size that suits the end is too large at the start):",
        "",
        "| from sample | to sample | B_crit (local) | 90% CI | B_simple at the start | within tolerance |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for seg in m["segments"]:
        fit = seg.get("fit")
        if fit and fit["identified"]:
            b, ci = _n(fit["b_crit"]), f"{_n(fit['b_crit_ci'][0])}–{_n(fit['b_crit_ci'][1])}"
        elif fit:
            lo, hi = fit["b_crit_ci"]
            b = "not identified"
            ci = f"{_n(lo)}–{_n(hi) if hi is not None else '∞'}"
        else:
            b, ci = "no fit", "–"
        out.append(
            f"| {seg['start_samples']:,} | {seg['end_samples']:,} | {b} | {ci} | {_n(seg['b_simple'])} "
            f"| {seg['b_tolerance'] if seg['b_tolerance'] is not None else '–'} |"
        )
    return out


def _schedule(schedule: dict[str, Any] | None) -> list[str]:
    """The batch-size warmup the measured trajectory suggests, with what it is worth."""
    if not schedule:
        return []
    if "error" in schedule:
        return ["", f"Batch-size schedule: {schedule['error']}."]
    stages = "; ".join(
        f"batch size {s['batch_size']} at learning rate {_n(s['lr'], '.3g')} from sample {s['start_samples']:,}"
        for s in schedule["stages"]
    )
    if len(schedule["stages"]) == 1:
        return ["", f"Batch-size schedule: none; the measured B_crit does not grow enough to change it ({stages})."]
    return [
        "",
        f"Batch-size schedule following the measured B_crit (the LR rule at each change): {stages}. "
        f"Run it with `TrainConfig(batch_schedule={schedule['batch_schedule']})`. It trades samples for steps: on "
        "bstune's benchmarks such schedules took fewer steps than the fixed batch at more samples, or fewer samples "
        "at more steps, never both (benchmarks/results/batch_schedule.md): worth it when steps (wall time on "
        "parallel hardware) cost more than samples.",
    ]


def critical_batch_lines(data: dict[str, Any]) -> list[str]:
    """B_crit: measured directly where the study measured it, and fitted to the trials' steps to the target."""
    cb = data["critical_batch"]
    out = ["", "## Critical batch size", ""]
    measured = cb.get("measured")
    if measured:
        out += _measured(measured, cb.get("measured_set_aside"))
        out += _schedule(cb.get("schedule"))
        out += [
            "",
            "**Fitted to the study's own trials** (less reliable: the trials were not tuned per batch size, ran "
            "at one seed and seldom span both sides of B_crit; against exhaustive sweeps this fit came within 2x "
            "on two of four benchmark problems):",
            "",
        ]
    elif "error" not in cb:
        out.append(
            "Fitted to the study's own trials, which were not tuned per batch size, ran at one seed and seldom "
            "span both sides of B_crit: against exhaustive sweeps this fit came within 2x on two of four benchmark "
            f"problems. {_direct_measurement(data)}"
        )
    if "error" in cb:
        target = f" for {target_text(cb)}" if cb.get("target") is not None else ""
        out.append(f"The data do not identify B_crit{target} (no fit): {cb['error']}.")
    else:
        out.append(f"Steps to {target_text(cb)}, fitted as S(B) = S_min (1 + B_crit/B): {cb['summary']}.")
        out += _nearby(cb, data.get("study", {}).get("subject"))
    if cb.get("target_chosen") == "default":
        out.append(
            f"The target {_n(cb['target'])} is the default: the hardest {cb['metric']} that two thirds of the batch "
            "sizes reach (a late target describes the regime you train in), or, where that leaves fewer than 3 "
            "timed points, the value most batch sizes reach after their first evaluation; set your own with "
            'report(target={"metric": ..., "value": ...}) or bstune report --target-metric/--target-value.'
        )
    tried = cb.get("batch_sizes_tried")
    if tried:
        out.append(
            (
                f"Trials ran at {tried['n']} batch sizes, {tried['min']}–{tried['max']}"
                if tried["n"] != 1
                else f"Trials ran at one batch size, {tried['min']}"
            )
            + "; the fit takes, per "
            "half-octave of batch size, the trial that reached the target in the fewest steps"
            + (" (the table below)" if "error" not in cb else "")
            + "; in a half-octave where none reached it, the trial that trained longest without reaching it, as a "
            "bound (the batch sizes said not to reach it are those trials', one per half-octave)."
        )
    left = cb.get("left_out_barely_learned") or []
    if left:
        shown = ", ".join(f"{t['trial']} (B={t['batch_size']}{', pruned' if t.get('pruned') else ''})" for t in left)
        out.append(
            f"Left out of the fit: trial{'s' if len(left) > 1 else ''} {shown}, which never reached the target and "
            "ended less than a quarter of the way from the untrained training loss to the best (diverged, or did not "
            "train"
            + (
                "; a pruned one, without falling that far between its evaluations either"
                if any(t.get("pruned") for t in left)
                else ""
            )
            + "): a run at a rate that did not train bounds nothing about S(B)."
        )
    if "error" not in cb:
        if "b_crit_over_b_simple" in cb:
            out.append(
                f"B_crit / B_simple = {_n(cb['b_crit_over_b_simple'], '.2f')} (McCandlish et al. find "
                "agreement within an order of magnitude, B_simple above B_crit on image tasks)."
            )
        out += ["", "| batch size | steps to target | learning rate | reached |", "|---:|---:|---:|:---:|"]
        out += [
            f"| {p['batch_size']} | {_n(p['steps'], ',.0f')} | {_n(p['lr'], '.3g')} | {_reached(p)} |"
            for p in cb["points"]
        ]
    return out


def _reached(point: dict[str, Any]) -> str:
    """A point's "reached" cell: a lower bound when it did not, an upper bound when it did by its first evaluation."""
    if not point["reached"]:
        return "no (lower bound)"
    return "by its first evaluation (upper bound)" if point.get("first_evaluation") else "yes"
