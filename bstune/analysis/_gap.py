"""The generalization gap across trials, and how it moves with batch size and temperature.

Keskar et al. 2017 report a larger gap (validation minus training loss) for large
batches at a fixed learning rate; Smith & Le 2018 argue that what matters is the SGD
noise scale, ∝ the temperature η/B, or η/(B(1−m)) with heavy-ball momentum m (the
effective temperature; m = 0 for Adam). In a study both vary, and they are correlated
(the prior couples η to B), so the summary gives the Spearman rank correlation of
the gap with log B and with η/(B(1−m)), and each partial rank correlation with the other
held fixed (from the three pairwise ρ; t-test with n−3 degrees of freedom).
Ranks make the answer independent of the scale of either axis: log B and B rank alike.

Only completed trials count, at their final evaluation: pruned trials stopped early,
when the gap is still small, and would confound the comparison with training length.
Nor do trials that barely learned: one whose training loss stays near the untrained model's
has a gap near 0 because it fits little, not because it generalizes, and at the edge of
the searched box such trials sit at one end of B or η/B, where they fake or hide a trend.
A trial counts as having barely learned when its final training loss got less than a
quarter of the way from the untrained loss to the lowest final training loss of the
study's completed trials (:data:`LEARNED_FRACTION`). The untrained loss is the probe's
first range-test batch, taken before any step (``untrained_loss``). Without a probe it is the
highest training loss at the first evaluation of any trial with two or more (pruned ones too),
which comes after some training, so a trial is then left out only if its own training loss
also stayed flat (fell by less than that quarter); those left out are listed.
Gaps are always validation − training: positive for a loss that generalises worse;
for an accuracy, *negative* when validation accuracy is lower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bstune._validate import is_number
from bstune.analysis._rank_stats import EXACT_N, holm, p_text, partial, partial_exact, spearman
from bstune.analysis._trials import TrialLike, batch_size_of, field_of, finite
from bstune.records import TrialStatus

__all__ = [
    "AtFixed",
    "GapSummary",
    "GapTrend",
    "TrialGap",
    "at_fixed_params",
    "barely_learned",
    "generalization_gap",
    "pruned_flat",
]


@dataclass(frozen=True)
class TrialGap:
    """Validation − training at one completed trial's final evaluation.

    Attributes:
        number: the trial's number (``None`` if it has none).
        batch_size, lr: its batch size and learning rate.
        temperature: η/(B(1−m)) as the study recorded it, else η/B.
        train_loss: the final training loss (eval mode, on the trainer's fixed training subset).
        loss_gap: val_loss − train_loss.
        metric_gaps: val_<name> − train_<name> for every metric recorded on both sets.
    """

    number: int | None
    batch_size: int
    lr: float
    temperature: float
    train_loss: float
    loss_gap: float
    metric_gaps: dict[str, float] = field(default_factory=dict)
    first_train_loss: float | None = None  # at the trial's first evaluation, where it had two or more
    others: dict[str, float] = field(default_factory=dict)  # the trial's other numeric searched parameters
    categorical: dict[str, str] = field(default_factory=dict)  # its other searched parameters that are not numbers


@dataclass(frozen=True)
class GapTrend:
    """Rank correlations of one gap with log B and with the temperature.

    ``partial_*`` are the same with the other variable held fixed. Every ρ and p is
    ``nan`` where it is undefined (fewer than 3 trials, or a constant variable;
    partials need 4).
    """

    name: str  # "loss" or the metric's name
    n: int
    rho_batch: float
    p_batch: float
    rho_temperature: float
    p_temperature: float
    partial_rho_batch: float
    partial_p_batch: float
    partial_rho_temperature: float
    partial_p_temperature: float

    def sentence(self, significance: float = 0.05) -> str:
        """The trend in words, e.g. "the validation − training loss gap rises with batch size (...)"."""
        what = f"the validation − training {self.name} gap"
        parts = []
        for label, rho, p, other, prho, pp in (
            (
                "batch size",
                self.rho_batch,
                self.p_batch,
                "effective temperature",
                self.partial_rho_batch,
                self.partial_p_batch,
            ),
            (
                "effective temperature η/(B(1−m))",
                self.rho_temperature,
                self.p_temperature,
                "batch size",
                self.partial_rho_temperature,
                self.partial_p_temperature,
            ),
        ):
            if p < significance:
                text = f"{_dir(rho)} with {label} (Spearman ρ={rho:.2f}, p{p_text(p)}"
                if math.isfinite(pp):
                    text += f"; partial ρ={prho:.2f}, p{p_text(pp)} at fixed {other}"
                parts.append(text + ")")
            elif pp < significance:  # hidden by the other variable until that is held fixed
                parts.append(
                    f"{_dir(prho)} with {label} at fixed {other} "
                    f"(partial Spearman ρ={prho:.2f}, p{p_text(pp)}; marginal ρ={rho:.2f}, p{p_text(p)})"
                )
        if not parts:
            return (
                f"no clear trend of {what} with batch size (Spearman ρ={self.rho_batch:.2f}, p{p_text(self.p_batch)}) "
                f"or effective temperature (ρ={self.rho_temperature:.2f}, p{p_text(self.p_temperature)}), {self.n} trials"
            )
        return f"{what} " + " and ".join(parts) + f", {self.n} trials"


def _dir(rho: float) -> str:
    return "rises" if rho > 0 else "falls"


@dataclass(frozen=True)
class GapSummary:
    """Per-trial gaps and their trends.

    Attributes:
        trials: one :class:`TrialGap` per completed trial with a finite final loss pair that learned;
            the trends are over these.
        loss: trend of the loss gap.
        metrics: trend of each metric's gap, by metric name.
        trend: ``loss.sentence()`` and what was left out: one paragraph for a report.
        barely_learned: completed trials left out because their training loss stayed near the untrained loss.
        untrained_loss: that reference loss (``None`` where there was none to take).
        untrained_from: where it came from: ``"probe"`` or ``"first evaluations"``.
        learned_below: a final training loss at or above this counts as having barely learned.
    """

    trials: list[TrialGap]
    loss: GapTrend
    metrics: dict[str, GapTrend]
    trend: str
    barely_learned: list[TrialGap] = field(default_factory=list)
    untrained_loss: float | None = None
    untrained_from: str | None = None
    learned_below: float | None = None


def _trend(name: str, gaps: Sequence[float], batch: Sequence[float], temp: Sequence[float]) -> GapTrend:
    rb, pb = spearman(gaps, batch)
    rt, pt = spearman(gaps, temp)
    r_bt, _ = spearman(batch, temp, with_p=False)
    n = len(gaps)
    prb, ppb = partial(rb, rt, r_bt, n)
    prt, ppt = partial(rt, rb, r_bt, n)
    if n <= EXACT_N:  # as _spearman: exact where few
        ppb = partial_exact(gaps, batch, temp, prb, r_bt) if math.isfinite(prb) else ppb
        ppt = partial_exact(gaps, temp, batch, prt, r_bt) if math.isfinite(prt) else ppt
    return GapTrend(name, n, rb, pb, rt, pt, prb, ppb, prt, ppt)


def _trial_gap(trial: TrialLike) -> TrialGap | None:
    if field_of(trial, "status") != TrialStatus.COMPLETED:
        return None
    b, lr = batch_size_of(trial), finite(field_of(trial, "lr"))
    history = field_of(trial, "history") or []
    if b is None or lr is None or not history:
        return None
    final = history[-1]
    train, val = finite(final.get("train_loss")), finite(final.get("val_loss"))
    if train is None or val is None:
        return None
    metric_gaps = {}
    for key in final:
        if key.startswith("val_") and key != "val_loss":
            name = key[4:]
            v, t = finite(final.get(key)), finite(final.get(f"train_{name}"))
            if v is not None and t is not None:
                metric_gaps[name] = v - t
    temp = finite(field_of(trial, "temperature"))
    number = field_of(trial, "number")
    params = field_of(trial, "params")
    params = dict(params) if isinstance(params, dict) else {}
    return TrialGap(
        number=number if isinstance(number, int) else None,
        batch_size=b,
        lr=lr,
        temperature=temp if temp is not None else lr / b,
        train_loss=train,
        loss_gap=val - train,
        metric_gaps=metric_gaps,
        first_train_loss=finite(history[0].get("train_loss")) if len(history) >= 2 else None,
        others=_other_params(params),
        categorical={k: repr(v) for k, v in params.items() if k not in _NOT_OTHERS and not is_number(v)},
    )


_NOT_OTHERS = frozenset({"batch_size", "lr", "batch_coord", "lr_coord", "temperature"})  # B, η and the search's own


def _other_params(params: Any) -> dict[str, float]:
    """The numeric searched parameters besides the batch size and learning rate (``model.hidden``, weight decay...)."""
    out = {}
    for name, value in dict(params).items() if isinstance(params, dict) else ():
        number = finite(value)  # None for a bool, a string, a non-finite number
        if name not in _NOT_OTHERS and number is not None:
            out[name] = number
    return out


@dataclass(frozen=True)
class AtFixed:
    """The gap's trend with log B, checked at another searched parameter ``name`` held fixed.

    ``rho_with_batch`` is that parameter's Spearman ρ with log B over the trials, ``rho_with_gap`` the gap's
    with it; ``partial_rho`` and ``partial_p`` the gap's partial Spearman ρ with log B at it held fixed,
    ``p_holm`` that p Holm-adjusted across the ``n_checked`` parameters checked. ``verdict``, on the partial:

    * ``"removed"``: holding it fixed leaves less than half the trend, or turns it (or it cannot be held fixed
      apart from B): the trials do not separate the batch size from it;
    * ``"survives"``: at least half the trend is left, with its sign, and the adjusted p is below the level (a
      rank partial at a dozen trials runs somewhat liberal: about 9% against a 5% level where the parameter
      is what drives the gap, in simulation);
    * ``"kept"``: at least half the trend is left, but not significantly.
    """

    name: str
    rho_with_batch: float
    rho_with_gap: float
    partial_rho: float
    partial_p: float
    p_holm: float
    n_checked: int
    verdict: str

    def text(self) -> str:
        numbers = f"partial ρ={self.partial_rho:.2f}, p{p_text(self.partial_p)}"
        if self.n_checked > 1:
            numbers += f", p{p_text(self.p_holm)} Holm-adjusted over {self.n_checked} parameters"
        if self.verdict == "survives":
            return f"the trend with batch size survives at fixed {self.name} ({numbers})"
        if self.verdict == "kept":
            return f"at fixed {self.name} the trend with batch size keeps its size but is not significant ({numbers})"
        if not math.isfinite(self.partial_rho):
            why = (
                f"moves in step with batch size (ρ={self.rho_with_batch:.2f})"
                if abs(self.rho_with_batch) >= 1 - 1e-9
                else f"orders the gap exactly (ρ={self.rho_with_gap:.2f})"
            )
            return (
                f"but {self.name}, which the search varied too, {why}: these trials do not separate the batch size's "
                "part in the gap from that parameter's"
            )
        return (
            f"but holding {self.name}, which the search varied too, fixed removes most of the trend with batch size "
            f"({numbers}; its ρ with batch size {self.rho_with_batch:.2f}): these trials do not separate the batch "
            "size's part in the gap from that parameter's"
        )


def at_fixed_params(rows: Sequence[TrialGap], trend: GapTrend, significance: float = 0.05) -> list[AtFixed]:
    """The loss gap's trend with log B (``trend``'s) at each other numeric parameter the search varied held fixed,
    one :class:`AtFixed` each, in the order of the parameters' names.

    Example:
        >>> rows = [TrialGap(number=i, batch_size=b, lr=0.1, temperature=0.1 / b, train_loss=0.1,
        ...                  loss_gap=g, others={"model.hidden": h})
        ...         for i, (b, g, h) in enumerate([(8, 0.1, 256), (16, 0.2, 128), (32, 0.3, 64), (64, 0.4, 32),
        ...                                        (128, 0.5, 16), (256, 0.6, 8)])]
        >>> log_b = [math.log(g.batch_size) for g in rows]
        >>> [c.verdict for c in at_fixed_params(rows, _trend("loss", [g.loss_gap for g in rows], log_b, log_b))]
        ['removed']
    """
    checked = []
    for name in sorted({name for g in rows for name in g.others}):
        have = [g for g in rows if name in g.others]
        if len(have) < MIN_TREND_TRIALS or len({g.others[name] for g in have}) < 2:
            continue
        gaps, other = [g.loss_gap for g in have], [g.others[name] for g in have]
        log_b = [math.log(g.batch_size) for g in have]
        rb, _ = spearman(gaps, log_b, with_p=False)
        rho_gx, _ = spearman(gaps, other, with_p=False)
        r_bx, _ = spearman(log_b, other, with_p=False)
        prb, ppb = partial(rb, rho_gx, r_bx, len(have))
        if len(have) <= EXACT_N and math.isfinite(prb):
            ppb = partial_exact(gaps, log_b, other, prb, r_bx)
        checked.append((name, r_bx, rho_gx, prb, ppb, rb))
    adjusted = holm([c[4] if math.isfinite(c[4]) else 1.0 for c in checked])
    out = []
    for (name, r_bx, rho_gx, prb, ppb, rb), p_adj in zip(checked, adjusted, strict=True):
        kept = math.isfinite(prb) and prb * trend.rho_batch > 0 and abs(prb) >= abs(rb) / 2  # half the trend, or more
        verdict = "removed" if not kept else "survives" if p_adj < significance else "kept"
        out.append(AtFixed(name, r_bx, rho_gx, prb, ppb, p_adj, len(checked), verdict))
    return out


def _lacks_train_loss(trial: TrialLike) -> bool:
    """A completed trial whose final evaluation has a validation loss and no training loss."""
    history = field_of(trial, "history") or []
    if field_of(trial, "status") != TrialStatus.COMPLETED or not history:
        return False
    return finite(history[-1].get("val_loss")) is not None and finite(history[-1].get("train_loss")) is None


MIN_TREND_TRIALS = 6  # fewer: no trend is stated
LEARNED_FRACTION = 0.25  # of the way from the untrained loss to the best final one; less: barely learned


def _first_losses(trials: Sequence[TrialLike]) -> list[float]:
    """The training loss at the first evaluation of every trial that had two or more, pruned ones too."""
    out = []
    for trial in trials:
        history = field_of(trial, "history") or []
        if len(history) >= 2 and (first := finite(history[0].get("train_loss"))) is not None:
            out.append(first)
    return out


def _learned_below(
    rows: Sequence[TrialGap], untrained_loss: float | None, firsts: Sequence[float]
) -> tuple[float | None, str | None, float | None]:
    """(reference untrained loss, where it came from, the final training loss a trial must get below)."""
    if untrained_loss is not None and math.isfinite(untrained_loss):
        start, source = untrained_loss, "probe"
    else:
        if not firsts:
            return None, None, None
        start, source = max(firsts), "first evaluations"
    best = min((g.train_loss for g in rows), default=math.inf)
    if not best < start:  # nothing learned below the reference: no way to tell learners apart
        return start, source, None
    return start, source, start - LEARNED_FRACTION * (start - best)


def _barely_learned(gap: TrialGap, start: float, below: float, source: str | None) -> bool:
    """Above ``below`` at its end; without the probe's untrained loss (the reference is then a first
    evaluation, itself after some training), also flat from its own first evaluation to its last: a slow
    trial that fell from 1.2 to 1.0 while the best reached 0.3 may have come down from 2.3 before it."""
    if gap.train_loss < below:
        return False
    if source == "probe":
        return True
    return gap.first_train_loss is not None and gap.first_train_loss - gap.train_loss < start - below


def generalization_gap(
    trials: Iterable[TrialLike], *, significance: float = 0.05, untrained_loss: float | None = None
) -> GapSummary:
    """Gap per completed trial and its rank correlation with log B and η/(B(1−m)); see the module docstring.

    ``untrained_loss`` is the training loss of the model before any step (the probe's first range-test
    batch); trials whose final training loss stayed near it are left out of the trends.

    Example:
        >>> trials = [{"status": "completed", "batch_size": b, "lr": 0.1, "number": i,
        ...            "history": [{"train_loss": 0.1, "val_loss": 0.1 + b / 1000}]}
        ...           for i, b in enumerate([16, 32, 64, 128, 256, 512])]
        >>> generalization_gap(trials).loss.rho_batch
        1.0
    """
    trials = list(trials)  # read twice
    every = [g for g in (_trial_gap(t) for t in trials) if g is not None]
    start, source, below = _learned_below(every, untrained_loss, _first_losses(trials))
    barely = [g for g in every if start is not None and below is not None and _barely_learned(g, start, below, source)]
    rows = [g for g in every if not any(g is b for b in barely)]
    log_b = [math.log(g.batch_size) for g in rows]
    temp = [g.temperature for g in rows]
    loss = _trend("loss", [g.loss_gap for g in rows], log_b, temp)
    names = sorted({name for g in rows for name in g.metric_gaps})
    metrics = {}
    for name in names:
        have = [i for i, g in enumerate(rows) if name in g.metric_gaps]
        metrics[name] = _trend(
            name,
            [rows[i].metric_gaps[name] for i in have],
            [log_b[i] for i in have],
            [temp[i] for i in have],
        )
    unpaired = sum(1 for t in trials if _lacks_train_loss(t))
    if not every and unpaired:
        trend = (
            f"no completed trial recorded a training loss beside its validation loss ({unpaired} completed): a "
            "training function reports it at each evaluation, ctx.report(val_loss=..., train_loss=...), for the gap"
        )
    elif len(rows) < MIN_TREND_TRIALS:
        # Spearman's t-approximation gives p < 0.001 for rho = 1 at n = 3, where the exact
        # p-value can be no smaller than 1/3: too few trials to state any trend.
        trend = (
            f"too few completed trials{' that learned' if barely else ''} ({len(rows)}; at least "
            f"{MIN_TREND_TRIALS} needed) to say how the gap depends on batch size or temperature"
        )
    else:
        trend = loss.sentence(significance)
        # a trend of the gap with batch size, claimed outright: checked at each other searched parameter held
        # fixed; one claimed only at fixed temperature, or with the temperature, would need the temperature held
        # fixed too: said to be unchecked
        varied = sorted(  # among the trials that set it
            name
            for name in {n for g in rows for n in (*g.others, *g.categorical)}
            if len({v for g in rows if (v := g.others.get(name, g.categorical.get(name))) is not None}) > 1
        )
        checks = at_fixed_params(rows, loss, significance) if loss.p_batch < significance else []
        if checks:
            trend += "; " + "; ".join(c.text() for c in checks)
        unchecked = [name for name in varied if name not in {c.name for c in checks}]
        if unchecked and checks:
            trend += f"; not checked against {', '.join(unchecked)}, which the search varied too (not numeric, or set in too few trials)"
        elif unchecked and not trend.startswith("no clear trend"):
            trend += (
                f"; not checked against {', '.join(unchecked)}, which the search varied too (only a trend with batch "
                "size alone is checked against the other parameters)"
            )
    if barely and start is not None and below is not None:
        trend += (
            f". Left out: {_trials_named(barely)}, whose final training loss got less than a quarter of the way "
            f"from the untrained loss ({start:.3g}, {_SOURCE[source or '']}) to the best ({min(g.train_loss for g in rows):.3g})"
            + (" and fell by less than that from their own first evaluation" if source != "probe" else "")
            + ": a model that has barely fit its training set has a gap near 0 whatever its batch size"
        )
    return GapSummary(
        trials=rows,
        loss=loss,
        metrics=metrics,
        trend=trend,
        barely_learned=barely,
        untrained_loss=start,
        untrained_from=source,
        learned_below=below,
    )


_SOURCE = {
    "probe": "the probe's first batch",
    "first evaluations": "the highest at any trial's first evaluation; no probe ran",
}


def _trials_named(gaps: Sequence[TrialGap]) -> str:
    numbers = [str(g.number) for g in gaps if g.number is not None]
    word = "trial" if len(gaps) == 1 else f"{len(gaps)} trials"
    return f"{word} {', '.join(numbers)}" if numbers else word


def barely_learned(trials: Iterable[TrialLike], untrained_loss: float | None = None) -> set[int]:
    """The numbers of the trials whose training loss barely moved from the untrained one: the completed ones
    :func:`generalization_gap` leaves out (at a rate that did not train; none where no reference loss can be
    had: no probe's, and one evaluation a trial), and the pruned ones :func:`pruned_flat` finds.

    Example:
        >>> trials = [{"status": "completed", "batch_size": 8, "lr": 0.1, "number": i,
        ...            "history": [{"train_loss": 2.3, "val_loss": 2.4}, {"train_loss": end, "val_loss": end + 0.1}]}
        ...           for i, end in enumerate([0.1, 0.2, 2.25])]
        >>> barely_learned(trials, untrained_loss=2.3)
        {2}
    """
    trials = list(trials)
    gap = generalization_gap(trials, untrained_loss=untrained_loss)
    return {g.number for g in gap.barely_learned if g.number is not None} | pruned_flat(trials, gap)


def pruned_flat(trials: Iterable[TrialLike], gap: GapSummary) -> set[int]:
    """The numbers of the pruned trials that never learned: two or more evaluations, the last above ``gap``'s
    :attr:`~GapSummary.learned_below`, and less of a fall from the first to the last than a learner's whole
    margin. A pruned trial is stopped early, so one merely slow at its first rung (falling between evaluations,
    or evaluated once) is kept: its bound on S(B) stands. One at chance throughout (1.82, 1.80, 1.81 against
    ln 6 = 1.79) ran at a rate that does not train, and bounds nothing. Only evaluations from the first at half the
    trial's rate or more count (its ``lr`` where each evaluation recorded the rate): a trial pruned inside a
    long warmup sat flat at a tenth of its rate, which says nothing of the rate it was sampled at; a decay's late
    evaluations still count.

    Example:
        >>> done = [{"status": "completed", "batch_size": 8, "lr": 0.1, "number": 0,
        ...          "history": [{"train_loss": 1.0, "val_loss": 1.1}, {"train_loss": 0.2, "val_loss": 0.3}]}]
        >>> stuck = {"status": "pruned", "number": 1, "history": [{"train_loss": 1.82}, {"train_loss": 1.81}]}
        >>> slow = {"status": "pruned", "number": 2, "history": [{"train_loss": 1.8}, {"train_loss": 1.3}]}
        >>> pruned_flat([*done, stuck, slow], generalization_gap(done, untrained_loss=1.79))
        {1}
    """
    start, below = gap.untrained_loss, gap.learned_below
    if start is None or below is None:
        return set()
    out = set()
    for trial in trials:
        number = field_of(trial, "number")
        if field_of(trial, "status") != TrialStatus.PRUNED or number is None:
            continue
        rate = finite(field_of(trial, "lr"))
        rows = list(field_of(trial, "history") or [])
        # the evaluations from the first at half its rate on: a warmup's leading ones left out, a decay's kept
        first = next(
            (i for i, r in enumerate(rows) if rate is None or (lr := finite(r.get("lr"))) is None or lr >= 0.5 * rate),
            len(rows),
        )
        losses = [x for r in rows[first:] if (x := finite(r.get("train_loss"))) is not None]
        if len(losses) >= 2 and losses[-1] >= below and losses[0] - losses[-1] < start - below:
            out.add(int(number))
    return out
