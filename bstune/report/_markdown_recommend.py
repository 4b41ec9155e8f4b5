"""report.md's first section: what to train with and why, its expected cost, the fastest batch size, and the
learning rate at other batch sizes (from report.json's ``recommended``, ``critical_batch``, ``compute_optimal``)."""

from __future__ import annotations

import itertools
from typing import Any

from bstune.report._markdown_critical import target_text
from bstune.report._schema import RECOMMENDATION_NOTES
from bstune.report._text import interval as _ci
from bstune.report._text import num as _n
from bstune.training import SCHEDULE_SETTINGS

__all__ = ["against_the_fit", "recommendation_lines"]


def _choice_ci(pair: Any) -> str:
    """The fastest batch size's interval, as the start of its parenthesis ("" where there is none)."""
    if not pair:
        return ""
    if pair[0] == pair[1]:
        return "the same anywhere in B_crit's 90% interval; "
    return _ci(pair, ",.0f", "90% interval {}; ")


def _lr_cell(row: dict[str, Any]) -> str:
    """An LR table cell: the rate, and where the rule went past the range test's ceiling, the rule's own."""
    if "capped_at" not in row:
        return _n(row["lr"], ".3g")
    cap = row["capped_at"]
    if cap.get("by_trial"):
        tested = cap.get("range_test_ceiling")
        return (
            f"{_n(row['lr'], '.3g')} (the rule gives {_n(row['rule_lr'], '.3g')}; capped at the highest rate a "
            f"completed trial trained at, {_n(cap['lr_ceiling'], '.3g')} at B={cap['batch_size']}, which is above "
            + (
                f"the LR range tests' ceiling here, {_n(tested, '.3g')})"
                if tested is not None
                else "the range tests' ceiling)"
            )
        )
    if cap.get("between"):
        (b0, c0), (b1, c1) = cap["between"]
        return (
            f"{_n(row['lr'], '.3g')} (the rule gives {_n(row['rule_lr'], '.3g')}, above the LR ceiling interpolated "
            f"here between the range tests' {_n(c0, '.3g')} at B={b0} and {_n(c1, '.3g')} at B={b1})"
        )
    if cap.get("lr_max"):
        larger = " (a larger batch only raises the ceiling)" if row["batch_size"] > cap["batch_size"] else ""
        return (
            f"{_n(row['lr'], '.3g')} (the rule gives {_n(row['rule_lr'], '.3g')}, above the space's lr.max, "
            f"where the LR range test at B={cap['batch_size']} still trained{larger}: raise lr.max to measure "
            "further)"
        )
    return (
        f"{_n(row['lr'], '.3g')} (the rule gives {_n(row['rule_lr'], '.3g')}, above the LR range test's "
        f"ceiling {_n(cap['lr_ceiling'], '.3g')} at B={cap['batch_size']})"
    )


def _throughput_doubt(throughput: dict[str, Any]) -> str:
    """A sentence where the probe's throughput itself was noisy: the steps' rates spread widely (more than 2x)
    at a batch size, or samples/s fell by more than a fifth as the batch grew (more parallel work per step
    rarely runs slower; a saturated device's plateau wobbles less); "" otherwise.

    Example:
        >>> _throughput_doubt({"samples_per_s": {"4": 6685, "16": 2922, "64": 11112},
        ...                    "samples_per_s_iqr": {"16": [662, 9648], "64": [2919, 16522]}})
        ' **Here it was noisy**: the middle half of its steps ran at 662–9,648 samples/s at batch size 16 (15x apart), and samples/s fell from 6,685 at batch size 4 to 2,922 at 16; so the fastest batch size is not settled: measure again on a quiet machine (bstune probe).'
    """
    rates = {int(b): float(r) for b, r in (throughput.get("samples_per_s") or {}).items()}
    spread = {int(b): (float(v[0]), float(v[1])) for b, v in (throughput.get("samples_per_s_iqr") or {}).items()}
    wide = [(b, lo, hi) for b, (lo, hi) in sorted(spread.items()) if lo > 0 and hi / lo > 2]
    sizes = sorted(rates)
    falls = [(a, b) for a, b in itertools.pairwise(sizes) if rates[b] < 0.8 * rates[a]]  # a plateau is no fall
    if not wide and not falls:
        return ""
    parts = []
    if wide:
        b, lo, hi = max(wide, key=lambda w: w[2] / w[1])
        parts.append(
            f"the middle half of its steps ran at {lo:,.0f}–{hi:,.0f} samples/s at batch size {b} ({hi / lo:.0f}x apart)"
        )
    if falls:
        a, b = falls[0]
        parts.append(f"samples/s fell from {rates[a]:,.0f} at batch size {a} to {rates[b]:,.0f} at {b}")
    return (
        f" **Here it was noisy**: {', and '.join(parts)}; so the fastest batch size is not settled: measure again on "
        "a quiet machine (bstune probe)."
    )


def against_the_fit(cb: dict[str, Any], batch: int, measured: bool) -> str:
    """A sentence where trials at batch sizes above those the trials' S(B) fit saw, up to ``batch``, ran without
    reaching the target for more steps than the fit predicts there: at their own learning rates, the fit is
    optimistic where the fastest batch size rests on it ("" where none did, or where the advice is a direct
    measurement's).

    Example:
        >>> cb = {"contradictions": [[19, 300.0, True, 0.1], [912, 17.0, True, 3.0]], "batch_max": 111,
        ...       "s_min": 2.0, "e_min": 7000.0}
        >>> print(against_the_fit(cb, 1024, False).strip())
        **The trials say otherwise**: at batch size 912 a trial at learning rate 3 ran 17 steps without reaching the target, where the fit predicts 9.68. A miss may be its rate's (no trial there was tuned), but if it is not, the fit is optimistic beyond the batch sizes it saw (up to 111) and the fastest batch size is smaller.
    """
    if measured:
        return ""
    above = [c for c in cb.get("contradictions") or [] if c[2] and cb["batch_max"] < c[0] <= batch]
    if not above:
        return ""
    s_min, e_min = float(cb.get("s_min") or 0.0), float(cb.get("e_min") or 0.0)
    said = "; ".join(
        f"at batch size {c[0]} a trial"
        + (f" at learning rate {_n(c[3], '.3g')}" if len(c) > 3 and c[3] is not None else "")
        + f" ran {_n(c[1], ',.3g')} steps without reaching the target, where the fit predicts "
        f"{_n(s_min + e_min / c[0], '.3g')}"
        for c in above
    )
    return (
        f" **The trials say otherwise**: {said}. A miss may be its rate's (no trial there was tuned), but if it is "
        f"not, the fit is optimistic beyond the batch sizes it saw (up to {cb['batch_max']}) and the fastest batch "
        "size is smaller."
    )


def _which_batch(rec: dict[str, Any], fastest: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """One sentence on the two batch sizes the recommendation gives, where they differ: which answers what."""
    if fastest["batch_size"] == rec["batch_size"]:
        return []
    rows = {row["batch_size"]: row["lr"] for row in rec.get("lr_table") or []}
    lr = rows.get(fastest["batch_size"])
    tried = data["critical_batch"].get("batch_sizes_tried")
    budget = data["study"].get("budget_samples")
    what = f"the best {data['study'].get('objective')}" + (
        f" for {budget:,} training samples" if budget else " for the study's budget of samples"
    )
    return [
        f"Which batch size: {rec['batch_size']} is the study's answer for {what} (what its trials were compared "
        f"on); {fastest['batch_size']} is the answer where wall-clock time to the target on this hardware is what "
        "you are short of"
        + (f", trained at the table's rate for it ({_n(lr, '.3g')})" if lr is not None else "")
        + (", at the cost of more samples to the target" if fastest["batch_size"] > rec["batch_size"] else "")
        + (
            f"; it lies beyond every batch size a trial ran ({tried['max']}), so no trial checked its "
            f"{data['study'].get('objective')}"
            if tried and fastest["batch_size"] > tried["max"]
            else ""
        )
        + "."
    ]


def _headline(rec: dict[str, Any], unread: set[str]) -> str:
    """The recommendation's first line: the batch size and rate to train with, where the loop applied them."""
    batch, lr = rec["batch_size"], _n(rec["lr"])
    if {"batch_size", "lr"} <= unread:
        return "**No batch size or learning rate to recommend: the loop trained at its own**"
    if "batch_size" in unread:
        return (
            f"**Train with learning rate {lr}, at the loop's own batch size (the search's {batch} never reached it)**"
        )
    if "lr" in unread:
        return (
            f"**Train with batch size {batch}, at the loop's own learning rate (the search's {lr} never reached it)**"
        )
    return f"**Train with batch size {batch} and learning rate {lr}**"


def recommendation_lines(data: dict[str, Any]) -> list[str]:
    """What to train with and why; its expected cost, the fastest batch size, the LR at other batch sizes."""
    rec = data["recommended"]
    unread = set(rec.get("unread_params") or [])
    if rec.get("other_optimizer"):  # the space's momentum or betas are not what the loop trained with
        unread |= {"momentum", "betas"}
    settings = ", ".join(
        f"{k} = {_n(v)}"
        for k, v in rec.items()
        if k not in RECOMMENDATION_NOTES and k not in ("batch_size", "lr") and k not in unread
    )
    out = ["## Recommendation", "", _headline(rec, unread) + (f" ({settings})." if settings else "."), ""]
    missing = [what for key, what in (("batch_size", "batch size"), ("lr", "learning rate")) if key in unread]
    if missing:
        it = "them" if len(missing) == 2 else "it"
        read = (
            f"the training function never read the trial's {' or '.join(missing)} (ctx.config, ctx.batch_size, "
            f"ctx.lr, ctx.train_config) nor had bstune apply {it} (ctx.loader, ctx.make_optimizer, ctx.lr_scheduler)"
        )
        if "lr" in unread:  # or read the rate (a config logged whole) while the optimizer stepped at others
            read = (
                f"either {read}, or it read the learning rate (a config logged whole, say) while its optimizer "
                "stepped at rates other than the trial's (a hard-coded lr=, or the trial's rate scaled)"
            )
        out += [
            f"**The loop trained at its own {' and '.join(missing)}**: {read}. The trials trained at the loop's own, "
            "not at what the search drew: the trials below are named by configs they did not train with, and what "
            "this report derives from the batch size and rate (temperatures, B_crit, the LR table) does not "
            "describe the loop.",
            "",
        ]
    out.append(f"Why: {rec['why']}.")
    if rec.get("direction_doubt"):
        out.append(f"**Check the direction**: {rec['direction_doubt']}.")
    if rec.get("ends_far_worse"):
        far, objective = rec["ends_far_worse"], next(iter(rec.get("objective") or {"objective": 0}))
        instead = far.get("instead")
        out.append(
            f"**Ends far from its best**: trained to the budget, this config ends at {objective} "
            f"{_n(far['end'])}, against its best evaluation's {_n(far['best'])}: the rate that found the best went "
            "on past it. Keep the best checkpoint (evaluate as the trials did)"
            + (
                f", or train the {far['instead']['among']} trial whose training ends best, trial {instead['trial']} "
                f"(batch size {instead['batch_size']}, learning rate {_n(instead['lr'], '.3g')}: "
                f"{objective} {_n(instead['end'])} at its last evaluation)."
                if instead
                else "."
            )
        )
    if rec.get("other_optimizer"):
        out.append(
            f"**Not the space's optimizer**: {rec['other_optimizer']}. The study's effective temperatures and its "
            "LR rule assume the space's, so they are not the loop's: declare the optimizer the loop uses under the "
            "space's `optimizer:` (family, momentum), or build it with ctx.make_optimizer."
        )
    others = [k for k in rec.get("unread_params") or [] if k not in ("batch_size", "lr")]  # those said above
    if others:
        never_read = set(others)
        drawn = ", ".join(f"{k} = {_n(rec[k])}" if k in rec else k for k in others)
        it = "it" if len(never_read) == 1 else "them"
        helpers = (
            f", nor had ctx.make_optimizer or ctx.lr_scheduler apply {it}"
            if any(not k.startswith("model.") for k in never_read)
            else ""
        )
        # a schedule's settings read (to log them) while a scheduler of the loop's own set the rates count too
        followed = (
            " (or, for the schedule's, read them while its optimizer's rate followed a schedule of its own)"
            if never_read & SCHEDULE_SETTINGS
            else ""
        )
        out.append(
            f"**Not applied**: the search drew {drawn}, but the training function never read {it} from ctx.config "
            f"or ctx.model_kwargs{helpers}{followed}: the loop trained with values of its own, so the trials say nothing about "
            f"{'this setting' if len(never_read) == 1 else 'these settings'}. Read {it} in the loop, or leave {it} out "
            "of the space."
        )
    derived = rec.get("derived") or {}
    if derived.get("effective_temperature") is not None and not unread & {"momentum", "batch_size", "lr"}:
        # (a loop's optimizer other than the space's: momentum counts as unread above)
        out.append(
            f"Derived from these settings, not one of them: effective temperature η/(B(1−m)) = "
            f"{_n(derived['effective_temperature'], '.3g')} (m = the SGD momentum, taken as 0 for Adam-family optimizers, which the SGD temperature describes only roughly)."
        )
    if "expected_steps_to_target" in rec:
        cb = data["critical_batch"]
        steps_ci, samples_ci = rec.get("expected_steps_to_target_ci"), rec.get("expected_samples_to_target_ci")
        out.append(
            f"Expected cost to reach {target_text(cb)}: "
            f"{_n(rec['expected_steps_to_target'], ',.0f')} steps{_ci(steps_ci)}, "
            f"{_n(rec['expected_samples_to_target'], ',.0f')} samples{_ci(samples_ci)} (from the S(B) fit"
            + (
                "; 90% intervals of the fitted curve, from one run per batch size, so one run at another seed can "
                "land outside them"
                if steps_ci
                else ""
            )
            + ")"
            + _past_budget(rec["expected_samples_to_target"], data["study"].get("budget_samples"))
            + "."
        )
    co = data.get("compute_optimal", {})
    measured_advice = data["critical_batch"].get("advice_from") == "measured"
    if "device" in co:
        d, w = co["device"], co["wall"]
        cb = data["critical_batch"]
        goal = "the measured run's final loss" if measured_advice else target_text(cb) if cb.get("target") else "target"
        line = (
            f"Fastest to {goal} on one device: batch size {d['batch_size']} ({_choice_ci(d.get('batch_size_ci'))}"
            f"{_n(d['seconds'], '.3g')} s{_ci(d.get('seconds_ci'), '.3g')} of training at the probe's measured "
            "throughput"
            + ("; at the edge of the batch sizes measured, so possibly larger still" if d.get("at_range_edge") else "")
            + ("; beyond the batch sizes the S(B) fit saw, so an extrapolation" if d.get("extrapolated") else "")
            + ")"
        )
        if co["n_workers"] > 1:
            line += (
                f"; with {co['n_workers']} workers: batch size {w['batch_size']}"
                f" ({_choice_ci(w.get('batch_size_ci'))}{_n(w['seconds'], '.3g')} s{_ci(w.get('seconds_ci'), '.3g')}"
                + ("; beyond the batch sizes the S(B) fit saw, so an extrapolation" if w.get("extrapolated") else "")
                + ")"
            )
        out.append(
            line
            + "."
            + against_the_fit(cb, d["batch_size"], measured_advice)
            + (
                " The intervals carry the S(B) fit's uncertainty and the spread of the probe's timed steps; on a "
                "shared or busy machine the throughput can also differ several-fold from one run to the next, "
                "which they do not carry."
                if (data.get("throughput") or {}).get("samples_per_s_iqr")
                else " The intervals carry the S(B) fit's uncertainty; the throughput is taken as the probe "
                "measured it, and on a shared or busy machine it can differ several-fold from one run to the next."
            )
            + _throughput_doubt(data.get("throughput") or {})
        )
        out += _which_batch(rec, d, data)
    if rec.get("lr_table"):
        out += [
            "",
            "Learning rate for other batch sizes ("
            + rec["lr_rule"]
            + ("; B_crit from the direct measurement" if measured_advice else "")
            + "):",
            "",
            "| batch size | learning rate |",
            "|---:|---:|",
        ]
        out += [f"| {row['batch_size']} | {_lr_cell(row)} |" for row in rec["lr_table"]]
    return out


def _past_budget(samples: float | None, budget: int | None) -> str:
    """A remark where the expected cost exceeds the trials' budget: at that batch size the fitted curve puts the
    target past the end of a trial's training (a newcomer read 30,623 samples for a 30,000-sample study)."""
    if samples is None or not budget or samples <= budget:
        return ""
    return (
        f", more than a trial's budget of {budget:,} samples: by the fitted curve a run of the study's length at "
        "this batch size ends short of the target (the curve is fitted across batch sizes; the chosen trial's own "
        "run may have reached it sooner)"
    )
