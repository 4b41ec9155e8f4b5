"""The recommended config of a report: the chosen trial's settings, what its objective means, the
cost it is expected to take to the target, and the learning rate to use at other batch sizes (the
LR rule from the critical batch fit, capped where the probe's range tests saw training break)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from bstune.analysis import CriticalBatchFit, lr_table
from bstune.metrics import Direction
from bstune.optim import temperature
from bstune.records import ProbeResult, StudyData, TrialStatus, last_value
from bstune.space import PriorSettings

__all__ = ["recommend", "training_set_size"]


def training_set_size(result: StudyData) -> int | None:
    """The training set's size as the study learnt it: the probe's (a task's, or what a training function's
    ``ctx.loader`` held), else the largest a trial's loop reported; None where no run said."""
    if result.probe is not None and result.probe.n_train is not None:
        return int(result.probe.n_train)
    sizes = [t.n_train for t in result.trials if t.n_train is not None]
    return max(sizes) if sizes else None


def _effective_temperature(config: Mapping[str, Any]) -> float | None:
    """η/(B(1−m)) of a recommended config (m = 0 when it has no momentum); None if it cannot be computed."""
    try:
        return temperature(float(config["lr"]), int(config["batch_size"]), float(config.get("momentum") or 0.0))
    except (KeyError, TypeError, ValueError):
        return None


def recommend(
    result: StudyData,
    fit: CriticalBatchFit | None,
    advice: CriticalBatchFit | None,
    *,
    barely: Collection[int] = (),
) -> dict[str, Any]:
    """The recommended config; expected cost to the report's target from ``fit`` (the trials'), the LR table
    from ``advice`` (the most reliable fit: the direct measurement's when there is one). ``barely``: the
    trials that barely learned (:func:`~bstune.analysis.barely_learned`), no evidence for the table's rates."""
    best = dict(result.best_config)
    # the settings to train with, and nothing derived from them (older results held the temperature here)
    rec: dict[str, Any] = {k: v for k, v in best.items() if k != "temperature"}
    # the temperature the study recorded for the chosen trial (its optimizer's momentum, which a training
    # function's config does not name), else computed from the config
    chosen_trial = next((t for t in result.trials if t.number == result.best_trial), None)
    recorded = chosen_trial.temperature if chosen_trial is not None else None
    rec["derived"] = {"effective_temperature": recorded if recorded is not None else _effective_temperature(best)}
    rec["objective"] = {result.objective: result.best_value}
    if chosen_trial is not None and chosen_trial.unread_params:  # the loop ran with its own values for them
        rec["unread_params"] = sorted(chosen_trial.unread_params)
    if chosen_trial is not None and chosen_trial.other_optimizer:  # the loop built its own, not the space's
        rec["other_optimizer"] = chosen_trial.other_optimizer
    ran = sum(1 for t in result.trials if t.status != TrialStatus.INTERRUPTED)  # a cut trial's config ran again
    rec["why"] = (
        f"best {result.objective} ({result.best_value:.4g}) of {ran} trials "
        f"at a budget of {result.budget_samples:,} samples"
        # the value is one seed's draw, and the best of many draws leans lucky: say so where nothing re-scored it
        + ("; one seed each, not re-scored (rescore_top or rescore_seeds was 0)" if not result.rescored else "")
    )
    chosen = next((r for r in result.rescored if r.trial == result.best_trial), None)
    if chosen is not None and chosen.mean is not None:
        rec["why"] = (
            f"best mean {result.objective} ({chosen.mean:.4g} ± {chosen.sem or 0.0:.2g} standard error, over "
            f"{len(chosen.values)} seeds) of the {len(result.rescored)} best of {ran} trials, "
            f"each trained again at {len(chosen.seeds)} more seeds; budget {result.budget_samples:,} samples a trial"
        )
        if chosen.fresh_mean is not None:
            leans = "low" if Direction(result.direction) is Direction.MINIMIZE else "high"
            rec["why"] += (
                f"; over its {len(chosen.seeds)} new seeds alone {chosen.fresh_mean:.4g}"
                + (f" ± {chosen.fresh_sem:.2g}" if chosen.fresh_sem is not None else "")
                + f", less optimistic: its own trial's seed is the draw it was picked on, so the mean over all seeds "
                f"leans {leans}"
            )
    # a trial's value is its best evaluation; training the config to its budget ends at its last one
    final = (
        chosen.final_mean
        if chosen is not None and chosen.mean is not None
        else last_value(chosen_trial.history, result.objective)
        if chosen_trial is not None
        else None
    )
    if final is not None:
        rec["objective_at_end"] = {result.objective: final}
        over = (
            f"the mean over its {len(chosen.values)} seeds of "
            if chosen is not None and chosen.mean is not None
            else ""
        )
        rec["why"] += (
            f". That value is each run's best {result.objective} over its evaluations; {over}the last evaluation's, "
            f"what training it to the budget gives without keeping the best checkpoint, is {final:.4g}"
        )
        direction = Direction(result.direction)
        if direction.far_worse(final, than=result.best_value):
            rec["ends_far_worse"] = {"end": final, "best": result.best_value, "instead": _ends_best(result)}
    b = int(best["batch_size"])
    if fit is not None and fit.identified:  # a fit that does not identify B_crit predicts nothing to act on
        rec["expected_steps_to_target"] = fit.predict_steps(b)
        rec["expected_samples_to_target"] = fit.predict_samples(b)
        rec["expected_steps_to_target_ci"] = list(fit.steps_ci(b))  # at the fit's confidence (90%)
        rec["expected_samples_to_target_ci"] = list(fit.samples_ci(b))
    # a rate that did not train is no evidence that the rate trains
    trained = [
        (int(t.batch_size), float(t.lr))
        for t in result.trials
        if t.status == TrialStatus.COMPLETED
        and t.batch_size is not None
        and t.lr is not None
        and t.number not in barely
    ]
    # without an S(B) fit at this target (too few batch sizes reached it), the rule over the batch sizes trained
    low, high = (advice.batch_min, advice.batch_max) if advice is not None else _span_of(trained, b)
    if advice is not None or high > low:
        # only where the data speak: from half the smallest to twice the largest batch size fitted (or trained)
        # ... and no batch larger than the training set
        n_train = training_set_size(result) or math.inf
        sizes = sorted({2**k for k in range(0, 20) if low / 2 <= 2**k <= min(2 * high, n_train)} | {b})
        family, alpha = _lr_exponent(result, best)
        if advice is not None:
            kind, b_rule, rec["lr_rule"] = _lr_rule(advice, b, float(best["lr"]), alpha)
        else:
            kind, b_rule = ("linear" if alpha == 1.0 else "power"), math.inf
            rec["lr_rule"] = (
                ("linear in B, lr ∝ B" if alpha == 1.0 else f"a power of B, lr ∝ B^{alpha:g} (the Adam family's rule)")
                + f" from the recommended batch size {b}: no S(B) fit at this target (fewer than 3 batch sizes "
                "reached it), so the table assumes no flattening"
            )
        rec["lr_table"] = _capped_at_ceiling(
            lr_table(b_rule, b, float(best["lr"]), sizes, family, alpha), result.probe, trained
        )
        rec["lr_rule_kind"] = kind
        if kind == "fitted_b_crit":
            rec["lr_rule_b_crit"] = b_rule
    return rec


def _span_of(trained: list[tuple[int, float]], batch: int) -> tuple[int, int]:
    """The smallest and largest batch size the completed trials trained at (the recommended one's alone where none)."""
    sizes = [b for b, _ in trained] or [batch]
    return min(sizes), max(sizes)


def _ends_best(result: StudyData) -> dict[str, Any] | None:
    """The config whose training ends best, where it is not the recommended one: among the re-scored candidates
    by the mean of their last evaluations, else among the completed trials by their last evaluation."""
    direction = Direction(result.direction)
    ends: list[tuple[float, int]] = [
        (r.final_mean, r.trial) for r in result.rescored if r.mean is not None and r.final_mean is not None
    ]
    where = "re-scored"
    if not ends:
        where = "completed"
        for t in result.trials:
            value = last_value(t.history, result.objective) if t.status == TrialStatus.COMPLETED else None
            if value is not None:
                ends.append((value, t.number))
    if not ends:
        return None
    end, number = min(ends, key=lambda e: direction.sign * e[0])
    if number == result.best_trial:
        return None
    trial = next(t for t in result.trials if t.number == number)
    return {"trial": number, "batch_size": trial.batch_size, "lr": trial.lr, "end": end, "among": where}


def _capped_at_ceiling(
    table: list[tuple[int, float]],
    probe: ProbeResult | None,
    trained: Sequence[tuple[int, float]] = (),
) -> list[dict[str, Any]]:
    """The LR table's rows, none above the LR range tests' ceiling at its batch size.

    The rule extrapolates: linear in B when the data do not identify B_crit, it doubles the
    rate with every doubling of the batch, past where the probe saw training blow up. The
    ceiling only rises with the batch size, so the larger test's (``lr_ceiling_large``, at
    ``large_batch``) bounds every batch size up to it; beyond it nothing was measured, and
    the largest ceiling seen stays the bound. A capped row keeps the rule's rate beside it.
    Between the two tests, where the large test's ceiling is the higher and neither stopped at
    lr.max, the bound is the ceiling interpolated as a power of B between them (the large
    test's alone let a row jump 3x from one batch size to the next, past rates trials had
    already found too high). The range test is no hard bound: a completed trial (``trained``:
    batch size, rate) that trained at a higher rate at a batch size up to the row's raises the
    row's bound to it.
    """
    if probe is None:
        return [{"batch_size": bb, "lr": lr} for bb, lr in table]
    small, large = probe.lr_ceiling, max(probe.lr_ceiling_large, probe.lr_ceiling)
    between = (
        probe.batch_size < probe.large_batch
        and 0 < small < large
        and not (probe.lr_ceiling_at_max or probe.lr_ceiling_large_at_max)
    )
    rows: list[dict[str, Any]] = []
    for bb, lr in table:
        interpolated = between and probe.batch_size < bb < probe.large_batch
        at, ceiling, at_max = (
            (probe.batch_size, small, probe.lr_ceiling_at_max)
            if bb <= probe.batch_size
            else (bb, _power_between(bb, (probe.batch_size, small), (probe.large_batch, large)), False)
            if interpolated
            # a test at lr.max unbroken at the probe's batch: the larger one did not run (a larger batch only
            # raises the ceiling), so the bound and where it was measured are the probe's batch's
            else (probe.batch_size, small, True)
            if probe.lr_ceiling_at_max
            else (probe.large_batch, large, probe.lr_ceiling_large_at_max)
        )
        row: dict[str, Any] = {"batch_size": bb, "lr": lr}
        shown = max((r for b, r in trained if b <= bb), default=0.0)
        by_trial = _above(shown, ceiling)
        tested = ceiling  # the range tests' bound at this batch size, before a trial raised it
        if by_trial:
            at, ceiling, at_max = next(b for b, r in trained if b <= bb and r == shown), shown, False
        if _above(lr, ceiling):  # at lr.max unbroken: no rate above it was searched or tested
            cap: dict[str, Any] = {"lr_ceiling": ceiling, "batch_size": at, "lr_max": at_max}
            if by_trial:
                cap.update(by_trial=True, range_test_ceiling=tested)
            elif interpolated:
                cap["between"] = [[probe.batch_size, small], [probe.large_batch, large]]
            row.update(lr=ceiling, rule_lr=lr, capped_at=cap)
        rows.append(row)
    return rows


def _above(rate: float, bound: float) -> bool:
    """``rate`` above ``bound`` by more than rounding: a range test's ramp ends a hair off lr.max (0.0999999...
    against a trial's 0.1), which is no rate above it.

    Example:
        >>> _above(0.1, 0.09999999999999974), _above(0.11, 0.1)
        (False, True)
    """
    return rate > bound * (1 + 1e-6)


def _power_between(b: float, low: tuple[float, float], high: tuple[float, float]) -> float:
    """The value at ``b`` of the power of B through the points ``low`` and ``high`` (batch size, value).

    Example:
        >>> round(_power_between(128, (64, 0.1), (512, 0.8)), 6)  # linear in B through both
        0.2
    """
    slope = math.log(high[1] / low[1]) / math.log(high[0] / low[0])
    return float(low[1] * (b / low[0]) ** slope)


def _lr_exponent(result: StudyData, best: Mapping[str, Any]) -> tuple[str, float]:
    """The optimizer family of the recommended config and the exponent α of its LR rule: 1 for SGD; for the
    Adam family, the α the study's prior used, else the default (``PriorSettings.adam_alpha``). A training
    function's config names no optimizer: the search space's family, which the result keeps (SGD's rule for a
    result written before it did)."""
    family = str(best.get("optimizer") or getattr(result, "optimizer", None) or "sgd")
    if family == "sgd":
        return family, 1.0
    alpha = getattr(getattr(result, "prior", None), "alpha", None)
    return family, float(alpha) if alpha is not None else PriorSettings().adam_alpha


def _lr_rule(fit: CriticalBatchFit, best_batch: int, best_lr: float, alpha: float = 1.0) -> tuple[str, float, str]:
    """(kind, the B_crit the LR table uses, the rule in words): the fitted B_crit only where the data identify it.

    Not identified, the table makes no claim about where it bends: linear in B (B^α for the
    Adam family), or constant where steps to the target did not fall with B over the batch
    sizes fitted.
    """
    power = "" if alpha == 1.0 else f"^{alpha:g}"
    if fit.identified:
        b = fit.b_crit
        return (
            "fitted_b_crit",
            b,
            f"lr(B) = {best_lr:.4g} · (s(B)/s({best_batch})){power} with s(B) = 1/(1/B + 1/B_crit) and B_crit = {b:.3g} "
            f"from the fit: nearly {'linear in B' if alpha == 1.0 else f'∝ B{power}'} well below {b:.3g}, bending at it "
            "and flattening above",
        )
    # only where the data bound B_crit below every batch size fitted do steps not fall with B over them;
    # an interval reaching into the batch sizes fitted (or steps falling faster than 1/B) does not say that
    flat = fit.edge == "below" and fit.b_crit_ci[1] <= fit.batch_min and fit.faster_than_linear is None
    if flat:
        return (
            "constant",
            0.0,
            f"constant, the recommended rate at every batch size: the data do not identify B_crit, and steps to the "
            f"target did not fall with B over the batch sizes fitted ({fit.batch_min}–{fit.batch_max})",
        )
    leaning = (
        " (steps fell little with B over the batch sizes fitted, but the interval does not rule out that they would)"
        if fit.edge == "below" and fit.faster_than_linear is None
        else ""
    )
    return (
        "linear" if alpha == 1.0 else "power",
        math.inf,
        ("linear in B, lr ∝ B" if alpha == 1.0 else f"a power of B, lr ∝ B{power} (the Adam family's rule)")
        + f" from the recommended batch size {best_batch}: the data do not identify B_crit{leaning}, "
        "so the table assumes no flattening",
    )
