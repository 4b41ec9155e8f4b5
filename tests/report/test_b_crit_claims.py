"""What the report claims about B_crit matches the trials, and the LR table does what its rule says.

Synthetic trials whose training loss reaches the target after exactly ``steps`` steps;
a small budget makes a trial stop short of it (a lower bound on its steps).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from bstune.report import build_report
from bstune.study import StudyResult, TrialRecord
from tests.report.test_build import TARGET, _result


def _trial(number: int, batch: int, steps: float, budget: int = 200_000, lr: float = 0.1) -> TrialRecord:
    """train_loss(t) = TARGET^(t/steps): reaches TARGET at exactly ``steps`` steps if the budget lasts."""
    history = []
    every = max(1, round(steps * batch / 10))  # ten evaluations before the target, if the budget lasts
    for samples in range(every, budget + 1, every):
        train = TARGET ** ((samples / batch) / steps)
        history.append({"samples": samples, "step": samples // batch, "lr": lr, "train_loss": train})
    history[-1]["val_loss"] = history[-1]["train_loss"] * 1.1
    return TrialRecord(
        number=number,
        status="completed",
        batch_size=batch,
        lr=lr,
        temperature=lr / batch,
        value=history[-1]["val_loss"],
        samples=budget,
        params={},
        config={},
        history=history,
    )


def _study(trials: list[TrialRecord]) -> StudyResult:
    best = min(trials, key=lambda t: t.value or math.inf)
    config = {"batch_size": best.batch_size, "lr": best.lr, "momentum": 0.0, "schedule": "constant"}
    return dataclasses.replace(_result(), trials=trials, best_config=config, best_value=float(best.value or 0))


def _report(trials: list[TrialRecord]) -> tuple[dict[str, Any], str]:
    report = build_report(_study(trials), {"metric": "train_loss", "value": TARGET})
    return report.data, report.to_markdown()


NOISE = [1.04, 0.95, 1.03, 0.97, 1.02]  # a few percent, as seeds move steps to a target


def _check_lr_table_follows_its_rule(rec: dict[str, Any]) -> None:
    """The table's numbers bend exactly where the rule's words say, and nowhere else."""
    rule, table = rec["lr_rule"], {r["batch_size"]: r["lr"] for r in rec["lr_table"]}
    b0, lr0 = rec["batch_size"], rec["lr"]
    if rule.startswith("linear in B"):
        for b, lr in table.items():
            assert lr == pytest.approx(lr0 * b / b0, rel=1e-12), f"{rule!r}, yet lr({b}) = {lr}"
        assert rec["lr_rule_kind"] == "linear"
    elif rule.startswith("constant"):
        assert rec["lr_rule_kind"] == "constant" and all(lr == pytest.approx(lr0, rel=1e-12) for lr in table.values())
    else:
        found = re.search(r"B_crit = ([0-9.e+]+) from the fit", rule)
        assert found and rec["lr_rule_kind"] == "fitted_b_crit", rule
        b_crit = float(found.group(1))
        assert b_crit == pytest.approx(rec["lr_rule_b_crit"], rel=5e-3)  # the text rounds to 3 digits

        def s(b: float) -> float:
            return 1 / (1 / b + 1 / rec["lr_rule_b_crit"])

        for b, lr in table.items():
            assert lr == pytest.approx(lr0 * s(b) / s(b0), rel=1e-12)


def test_b_crit_is_never_placed_above_a_batch_size_smaller_than_ones_tried() -> None:
    """The issue's report: reached up to 64, 124 and 158 tried and short of the target; best fit above 64."""
    law = {b: 300 * (1 + 128 / b) * n for b, n in zip((8, 16, 32, 64), NOISE, strict=False)}
    trials = [_trial(i, b, s) for i, (b, s) in enumerate(law.items())]
    trials += [_trial(4, 124, 300 * (1 + 128 / 124), budget=30_000), _trial(5, 158, 300 * 1.81, budget=30_000)]
    data, md = _report(trials)
    _check_lr_table_follows_its_rule(data["recommended"])  # the old report: "linear in B" over a bent table
    cb = data["critical_batch"]
    assert [p["reached"] for p in cb["points"]] == [True] * 4 + [False] * 2
    assert cb["identified"] is False and cb["batch_max"] == 64
    claims = re.findall(r"(?:largest|above)[^(.;]*\((\d+)\)", md)
    assert claims == ["64"] and "lies above the largest batch size fitted (64)" in md  # of the fitted set, by name
    assert "above the largest batch size tried" not in md
    assert "Steps to train_loss ≤ 0.2, fitted as S(B) = S_min (1 + B_crit/B): the data do not identify B_crit: " in md
    assert "2 batch sizes that did not reach it (124, 158) only bound the fit" in md
    assert "Trials ran at 6 batch sizes, 8–158;" in md
    assert data["recommended"]["lr_rule_kind"] == "linear"  # not a bend at an unidentified B_crit
    assert "Learning rate for other batch sizes (linear in B, lr ∝ B from the recommended batch size" in md


def test_an_unidentified_b_crit_is_said_plainly() -> None:
    """Steps still ∝ 1/B over every batch size: no B_crit, no '∞ (90% CI ...–∞)' as if it were a finding."""
    trials = [_trial(i, b, 6400 / b * n) for i, (b, n) in enumerate(zip((16, 32, 64, 128, 256), NOISE, strict=True))]
    data, md = _report(trials)
    section = md.split("## Critical batch size")[1].split("##")[0]
    assert "fitted as S(B) = S_min (1 + B_crit/B): the data do not identify B_crit: " in section
    lower = data["critical_batch"]["b_crit_ci"][0]
    assert f"its 90% interval {lower:.3g}–∞ has no upper end; B_crit is at least {lower:.3g}" in section
    assert "estimate ∞" not in md and "(90% CI" not in section and "B_crit / B_simple" not in section
    assert "Learning rate for other batch sizes (linear in B, lr ∝ B from the recommended batch size 32:" in md
    settings = md.split("**Train with")[1].split("\n")[0]
    assert "lr_rule" not in settings and "derived" not in settings
    _check_lr_table_follows_its_rule(data["recommended"])


def test_too_few_batch_sizes_say_the_data_do_not_identify_b_crit() -> None:
    trials = [_trial(i, b, 6400 / b) for i, b in enumerate((16, 32))]
    data, md = _report(trials)
    assert "error" in data["critical_batch"]
    target = data["critical_batch"]["target"]
    assert f"The data do not identify B_crit for train_loss ≤ {target:.4g} (no fit): fitting S(B)" in md  # which target
    # a newcomer's table went missing at such a target, with nothing said: it is the rule's, and says why
    assert data["recommended"]["lr_rule_kind"] == "linear"
    assert "(linear in B, lr ∝ B from the recommended batch size 16: no S(B) fit at this target (fewer than 3" in md
    assert [row["batch_size"] for row in data["recommended"]["lr_table"]] == [8, 16, 32, 64]
    _check_lr_table_follows_its_rule(data["recommended"])


def test_a_trial_that_barely_learned_neither_widens_the_lr_table_nor_raises_its_cap() -> None:
    """A reviewer: without a fit the table ran up to 1024, capped at lr 3 "a completed trial trained at", a trial
    at B=912 whose training loss had barely moved."""
    trials = [_trial(i, b, 6400 / b) for i, b in enumerate((16, 32))]
    stuck = _trial(2, 1024, 5.0, lr=3.0)  # completed, its loss never left the untrained one
    for i, rec in enumerate(stuck.history):
        rec["train_loss"] = rec["val_loss"] = 2.31 - 0.001 * i
    stuck = dataclasses.replace(stuck, value=stuck.history[-1]["val_loss"])  # the worst trial, not the best
    data, md = _report([*trials, stuck])
    rows = data["recommended"]["lr_table"]
    # nor is it a bound on S(B): the fit leaves it out, and says so (a reviewer: "the trials say otherwise" rested
    # on such a trial)
    assert data["critical_batch"]["left_out_barely_learned"] == [{"trial": 2, "batch_size": 1024, "pruned": False}]
    assert "Left out of the fit: trial 2 (B=1024), which never reached the target and ended less than a quarter" in md
    assert max(row["batch_size"] for row in rows) == 64  # twice the largest batch that learned
    assert not any((row.get("capped_at") or {}).get("by_trial") for row in rows)


def test_a_pruned_trial_at_chance_bounds_nothing_and_a_slow_one_stays_a_bound() -> None:
    """A newcomer's trial sat at chance (1.816, 1.796, 1.813; ln 6 = 1.79) until pruned, and the fit kept it as a
    bound ("18 | 556 | 0.17 | no (lower bound)"), where a completed one like it was left out."""
    trials = [_trial(i, b, 6400 / b) for i, b in enumerate((16, 32, 64))]
    stuck = dataclasses.replace(_trial(3, 512, 100, budget=20_480, lr=3.0), status="pruned")
    slow = dataclasses.replace(_trial(4, 8, 6400, budget=20_480, lr=1e-3), status="pruned")
    for i, rec in enumerate(stuck.history):
        rec["train_loss"] = 2.31 + 0.01 * (-1) ** i
    for i, rec in enumerate(slow.history):
        rec["train_loss"] = 2.3 - 0.25 * i  # falling: merely slow when the pruner stopped it
    data, md = _report([*trials, stuck, slow])
    cb = data["critical_batch"]
    assert cb["left_out_barely_learned"] == [{"trial": 3, "batch_size": 512, "pruned": True}]
    assert "Left out of the fit: trial 3 (B=512, pruned), which never reached the target" in md
    assert 8 in [p["batch_size"] for p in cb["points"]] and 512 not in [p["batch_size"] for p in cb["points"]]
    # the same flat trial pruned inside a long warmup (its rate a tenth, then a fifth of its own): it sat flat at
    # rates it was not sampled at, so its bound stands
    warming = dataclasses.replace(stuck, history=[dict(r) for r in stuck.history])
    for rec, share in zip(warming.history, (0.1, 0.2, 0.3), strict=False):
        rec["lr"] = share * warming.lr
    warming.history[3:] = []
    data, _ = _report([*trials, warming, slow])
    assert "left_out_barely_learned" not in data["critical_batch"]
    assert 512 in [p["batch_size"] for p in data["critical_batch"]["points"]]
    # flat at its rate, then decayed below half of it: still flat, still left out (a decay's evaluations count)
    decayed = dataclasses.replace(stuck, history=[dict(r) for r in stuck.history])
    for rec, share in zip(decayed.history, (1.0, 1.0, 0.4, 0.2), strict=False):
        rec["lr"] = share * decayed.lr
    data, _ = _report([*trials, decayed, slow])
    assert data["critical_batch"]["left_out_barely_learned"] == [{"trial": 3, "batch_size": 512, "pruned": True}]


def test_steps_flat_in_b_get_a_constant_lr_table_that_says_so() -> None:
    trials = [_trial(i, b, 40 * n) for i, (b, n) in enumerate(zip((64, 128, 256, 512), NOISE, strict=False))]
    data, md = _report(trials)
    assert data["critical_batch"]["identified"] is False and data["critical_batch"]["edge"] == "below"
    assert data["recommended"]["lr_rule_kind"] == "constant"
    assert "Learning rate for other batch sizes (constant, the recommended rate at every batch size" in md
    _check_lr_table_follows_its_rule(data["recommended"])


def test_an_interval_reaching_into_the_batch_sizes_fitted_gets_no_constant_lr_table() -> None:
    """Best fit below the smallest batch, but its interval reaches past it: the data do not say that steps
    stopped falling with B over the batch sizes fitted (a newcomer's report said so, beside 160 -> 100 steps)."""
    trials = [_trial(i, b, s) for i, (b, s) in enumerate(zip((16, 32, 64, 128), (160, 120, 118, 100), strict=True))]
    data, md = _report(trials)
    cb = data["critical_batch"]
    assert cb["edge"] == "below" and cb["b_crit_ci"][0] < 16 < cb["b_crit_ci"][1]
    assert data["recommended"]["lr_rule_kind"] == "linear"
    assert "did not fall with B" not in md
    _check_lr_table_follows_its_rule(data["recommended"])


def test_an_identified_b_crit_bends_the_lr_table_where_the_rule_says() -> None:
    data, md = _report(
        [_trial(i, b, 300 * (1 + 128 / b) * NOISE[i % 5]) for i, b in enumerate(2**k for k in range(3, 12))]
    )
    cb = data["critical_batch"]
    assert cb["identified"] is True and cb["summary"].startswith("B_crit ≈ ")
    rec = data["recommended"]
    assert rec["lr_rule_kind"] == "fitted_b_crit" and rec["lr_rule_b_crit"] == pytest.approx(cb["b_crit"])
    _check_lr_table_follows_its_rule(rec)
    assert f"B_crit = {cb['b_crit']:.3g} from the fit: nearly linear in B well below" in md


@pytest.mark.parametrize("alpha", [None, 0.6])  # None: a study without a prior (baseline mode): the default
def test_an_adam_studys_lr_table_grows_as_the_adam_rule_not_sgds(alpha: float | None) -> None:
    """η ∝ s(B)^α with the Adam family's α (the prior's, else PriorSettings.adam_alpha), not SGD's α = 1."""
    from bstune.space import PriorSettings
    from bstune.study import Prior

    law = {b: 300 * (1 + 128 / b) * n for b, n in zip((16, 32, 64, 128, 256, 512), [*NOISE, 1.0], strict=True)}
    result = _study([_trial(i, b, s) for i, (b, s) in enumerate(law.items())])
    prior = None if alpha is None else Prior(
        b_noise=100.0, b_ref=64, lr_ref=0.01, alpha=alpha, batch_low=16, batch_high=100, lr_width=3.0,
        lr_min=1e-5, lr_max=1.0, momentum_ref=0.0,
    )  # fmt: skip
    adam = dataclasses.replace(result, best_config=result.best_config | {"optimizer": "adam"}, prior=prior)
    rec = build_report(adam, {"metric": "train_loss", "value": TARGET}).data["recommended"]
    a = PriorSettings().adam_alpha if alpha is None else alpha
    table, b0, lr0 = {r["batch_size"]: r["lr"] for r in rec["lr_table"]}, rec["batch_size"], rec["lr"]
    b_rule = rec.get("lr_rule_b_crit", math.inf)

    def s(b: float) -> float:
        return b if math.isinf(b_rule) else 1 / (1 / b + 1 / b_rule)

    assert len(table) > 3
    for b, lr in table.items():
        assert lr == pytest.approx(lr0 * (s(b) / s(b0)) ** a, rel=1e-12)
    assert f"^{a:g}" in rec["lr_rule"]
    sgd = build_report(result, {"metric": "train_loss", "value": TARGET}).data["recommended"]
    assert "^" not in sgd["lr_rule"] and sgd["lr_table"] != rec["lr_table"]  # an SGD study's: linear in s(B)
