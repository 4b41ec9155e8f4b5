"""The terminal summary of a study, printed by ``bstune run`` and ``bstune report``."""

from __future__ import annotations

import shlex
from typing import Any

from bstune.metrics import Direction
from bstune.records import TrialStatus, last_value, rank_key
from bstune.training import SCHEDULE_SETTINGS

__all__ = ["format_summary"]


def format_summary(result: dict[str, Any], *, top: int | None = 10, folder: str | None = None) -> str:
    """A terminal summary of a study's result.json (``StudyResult.to_dict()``): probe, prior, trials, best config.

    The trial table ranks completed trials by value, then pruned ones by the value they were
    stopped at, then those without one (failed, diverged, interrupted); it shows the ``top`` first rows (None: all) and says how many
    more there are, of which kinds, and how to list them all (``bstune report FOLDER --all-trials``).
    """
    # interrupted trials' configs ran again as others; waiting (queued) and running ones have not ended
    aside = {
        kind.value: sum(1 for t in result["trials"] if t["status"] == kind) for kind in TrialStatus if not kind.finished
    }
    said = ", ".join(f"{n} {kind}" for kind, n in aside.items() if n)
    counted = f"{len(result['trials']) - sum(aside.values())} trials" + (f" (and {said})" if said else "")
    lines = [
        f"study {result['study_name']} ({result['mode']} mode): {counted}, "
        f"{result['samples_total']:,} training samples in all (probe {result['samples_probe']:,}, "
        f"re-scoring {result.get('samples_rescore', 0):,})"
    ]
    if result.get("rescored"):
        k, m = len(result["rescored"]), len(result["rescored"][0]["seeds"])
        which = "the best trial" if k == 1 else f"the {k} best trials"
        lines.append(
            f"re-scored {which} at {m} more seed{'s' if m != 1 else ''}; recommended trial "
            f"{result.get('best_trial')}, the best mean"
        )
    measured = result.get("critical_measured")
    if measured and measured.get("summary"):  # the direct measurement's number and cost, not only in the report
        head = str(measured["summary"]).split(". B_crit over training")[0].rstrip(".")
        lines.append(
            f"critical batch size {head}; cost {measured.get('cost_samples', 0):,} samples "
            f"({measured.get('cost_budgets', 0):.1f}x one trial's budget, not in the total above)"
        )
    probe, prior = result.get("probe"), result.get("prior")
    if probe and prior:
        lo, hi = probe["b_simple_ci"]
        large = probe["large_batch"]
        if large == probe["batch_size"]:  # one batch size: the space's, or the training set's, allows no larger
            at_large = ""
        elif probe.get("lr_ceiling_at_max") and large > probe["batch_size"]:
            at_large = f", no test at B={large} (a larger batch only raises it)"
        else:
            at_large = f", {_ceiling(probe['lr_ceiling_large'], probe.get('lr_ceiling_large_at_max'))} at B={large}"
        lines.append(
            f"probe: B_simple {_bound(probe['b_simple']).replace('inf', 'unresolved')} (90% CI {_bound(lo)} .. {_bound(hi)}"
            + (", widened for another seed" if probe.get("b_simple_sampling_ci") else "")
            + ") at lr "
            f"{probe['lr_probe']:.3g}; LR ceiling {_ceiling(probe['lr_ceiling'], probe.get('lr_ceiling_at_max'))} "
            f"at B={probe['batch_size']}{at_large}"
        )
        if probe.get("lr_ceiling_at_max"):
            lines.append(
                "  the LR range test reached the space's lr.max with the loss still falling: the ceiling, and the "
                "lr rule anchored on it, are lower bounds; raise lr.max to let the probe find it"
            )
        lines.append(
            f"prior: first trials drawn from batch sizes {prior['batch_low']}..{prior['batch_high']}"
            + (f" (the search: {prior['search_low']}..{prior['search_high']})" if prior.get("search_low") else "")
            + ", "
            f"lr rule anchored at eta*({prior['b_ref']}) = {prior['lr_ref']:.3g}"
        )
    lines.append("trials: " + _counts(result["trials"]))
    sign = Direction(result["direction"]).sign
    ranked = sorted(result["trials"], key=lambda t: rank_key(t, sign))
    shown = ranked if top is None else ranked[:top]
    # the temperature column holds what the trial recorded: lr/(B(1-m)), the effective temperature
    lines.append(
        f"{'#':>4} {'status':>11} {'batch':>6} {'lr':>9} {'lr/(B(1-m))':>11} {result['objective']:>10} {'samples':>9}"
    )
    for t in shown:
        lines.append(
            f"{t['number']:>4} {t['status']:>11} {_num(t['batch_size'], 'd'):>6} {_num(t['lr'], '.3g'):>9} "
            f"{_num(t.get('temperature'), '.3g'):>11} {_num(t['value'], '.4f'):>10} {t['samples']:>9,}"
        )
    hidden = ranked[len(shown) :]
    if hidden:
        how = (
            f"`bstune report {shlex.quote(folder)} --all-trials` lists all"
            if folder is not None
            else "with --out DIR, `bstune report DIR --all-trials` lists all"
        )
        lines.append(f"... {len(hidden)} more trials ({_counts(hidden)}) not shown; {how}")
    lines.append(
        "     lr/(B(1-m)): effective temperature, m = the SGD momentum (taken as 0 for Adam-family optimizers)"
    )
    lines.append(f"     {result['objective']}: the best over the trial's evaluations, not its last")
    settings = {k: v for k, v in result["best_config"].items() if k != "temperature"}  # derived, in older results
    best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
    chosen = next((r for r in result.get("rescored") or [] if r.get("trial") == result.get("best_trial")), None)
    if chosen is not None and chosen.get("mean") is not None:  # best_value is the mean over its seeds
        how = f"{result['objective']} {result['best_value']:.4f}, the mean of {len(chosen['values'])} seeds"
        if chosen.get("fresh_mean") is not None:  # older results lack it
            n = len(chosen["values"]) - 1
            how += f" ({chosen['fresh_mean']:.4f} over its {n} new seed{'s' if n != 1 else ''}, less optimistic)"
    else:
        how = f"{result['objective']} {result['best_value']:.4f}"
    trial = f"trial {result['best_trial']}: " if result.get("best_trial") is not None else ""
    best_record = next((t for t in result["trials"] if t["number"] == result.get("best_trial")), None)
    rescored = chosen is not None and chosen.get("mean") is not None
    end = chosen.get("final_mean") if chosen is not None and rescored else None  # a mean over the same seeds
    if not rescored and best_record is not None:
        end = last_value(best_record.get("history") or [], result["objective"])
    if end is not None:  # what training it to the budget ends at, beside the best evaluation trials are ranked by
        how += f"; {end:.4f} at the last evaluation"
    lines.append(f"best config ({trial}{how}): {best}")
    if end is not None and Direction(result["direction"]).far_worse(end, than=result["best_value"]):
        lines.append(
            f"  its last evaluation is far worse than its best: trained to the budget it ends at {end:.4g}; keep "
            "the best checkpoint (evaluate as the trials did); report.md names a config whose training ends better, "
            "where one does"
        )
    other = (best_record or {}).get("other_optimizer")
    if other:
        lines.append(f"  not the space's optimizer: {other} (the temperatures assume the space's)")
    unread = (best_record or {}).get("unread_params") or []
    if unread:
        # or read them (a config logged whole) while the optimizer's rates followed a schedule, or a rate, of its own
        one = len(unread) == 1
        them = "it" if one else "them"
        values = "value above is the search's draw" if one else "values above are the search's draws"
        how = f"never read {them}"
        if set(unread) & (SCHEDULE_SETTINGS | {"lr"}):
            how = f"either never read {them} or stepped its optimizer at rates other than the trial's"
        lines.append(
            f"  not applied: {', '.join(unread)} (the training function {how}; the {values}, not what the loop "
            "trained with)"
        )
    return "\n".join(lines)


def _counts(trials: list[dict[str, Any]]) -> str:
    """``"3 completed, 1 failed"``: how many trials of each status."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _bound(value: float | None) -> str:
    """A noise scale or an end of its interval; None is how JSON keeps an unbounded one (|G|² not resolved)."""
    return "inf" if value is None or value == float("inf") else f"{value:.4g}"


def _ceiling(value: float, at_max: bool | None) -> str:
    """A range test's ceiling, or where it ran to the space's lr.max unbroken, that bound (``>=``)."""
    return f">={value:.3g} (lr.max)" if at_max else f"{value:.3g}"
