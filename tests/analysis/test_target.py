"""Steps to a target: interpolation, censoring, the default target, best learning rate per batch size."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bstune.analysis import (
    BatchPoint,
    bin_points,
    choose_target,
    fit_critical_batch,
    nearby_targets,
    steps_by_batch,
    steps_to_target,
)
from bstune.errors import ConfigError, EstimationError
from bstune.study import TrialRecord


def _exp_history(batch: int, rate: float, every: int, n: int, l0: float = 2.0) -> list[dict[str, Any]]:
    """Loss l0·exp(−rate·steps), evaluated at 0 and every ``every`` samples."""
    return [
        {"samples": k * every, "step": k * every // batch, "train_loss": l0 * math.exp(-rate * k * every / batch)}
        for k in range(n + 1)
    ]


@pytest.mark.parametrize("target", [1.5, 0.3, 0.05, 0.011])
def test_interpolation_is_exact_on_an_exponential_curve(target: float) -> None:
    batch, rate = 16, 0.01
    hit = steps_to_target(_exp_history(batch, rate, every=1600, n=6), batch, target)
    exact = math.log(2.0 / target) / rate  # l0·exp(−rate·S) = target
    assert hit.reached and not hit.upper_bound
    assert hit.steps == pytest.approx(exact, rel=1e-9)
    assert hit.samples == pytest.approx(exact * batch, rel=1e-9)


def test_linear_interpolation_for_a_maximized_metric_and_for_non_positive_values() -> None:
    hist = [{"samples": 100, "acc": 0.5}, {"samples": 300, "acc": 0.9}]
    hit = steps_to_target(hist, 10, 0.8, "acc", direction="maximize")
    assert hit.reached and hit.samples == pytest.approx(250.0)
    neg = [{"samples": 100, "nll": 1.0}, {"samples": 200, "nll": -1.0}]  # log undefined: linear
    assert steps_to_target(neg, 10, 0.0, "nll").samples == pytest.approx(150.0)


def test_unreached_gives_the_last_recorded_steps_as_a_lower_bound() -> None:
    hist = [*_exp_history(32, 0.01, every=3200, n=4), {"samples": 20000, "train_loss": None}]  # diverged at the end
    hit = steps_to_target(hist, 32, 1e-6)
    assert not hit.reached and hit.lower_bound
    assert hit.samples == 12800 and hit.steps == 400  # the last finite record, not the None one
    assert steps_to_target([], 8, 0.1) == steps_to_target([{"samples": 10, "train_loss": None}], 8, 0.1)


def test_reached_at_the_first_evaluation_is_an_upper_bound() -> None:
    hit = steps_to_target([{"samples": 640, "train_loss": 0.1}, {"samples": 1280, "train_loss": 0.05}], 64, 0.2)
    assert hit.reached and hit.upper_bound and hit.steps == 10


def test_bad_arguments_raise() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        steps_to_target([], 0, 0.1)
    with pytest.raises(ConfigError, match="direction"):
        steps_to_target([], 4, 0.1, direction="down")


def _trial(
    number: int, batch: int, lr: float, losses: list[float | None], status: str = "completed", every: int = 1024
) -> dict[str, Any]:
    history = [{"samples": (k + 1) * every, "train_loss": v} for k, v in enumerate(losses)]
    return {"number": number, "batch_size": batch, "lr": lr, "status": status, "history": history}


def test_choose_target_is_the_hardest_that_two_thirds_of_batch_sizes_reach() -> None:
    bests = {8: 0.10, 16: 0.12, 32: 0.20, 64: 0.25, 128: 0.40, 256: 0.90}
    trials = [_trial(i, b, 0.1, [1.0, v]) for i, (b, v) in enumerate(bests.items())]
    trials.append(_trial(9, 256, 0.3, [1.0, 0.95]))  # a worse lr at 256 does not change its best
    target = choose_target(trials)
    assert target == 0.25
    reached = sum(v <= target for v in bests.values())
    assert reached >= 2 / 3 * len(bests)
    assert sum(v <= 0.2 for v in bests.values()) < 2 / 3 * len(bests)  # anything harder: too few
    assert choose_target(trials, reach_fraction=1.0) == 0.90
    assert choose_target(trials, reach_fraction=0.1) == 0.20  # never fewer than the 3 a fit needs


def test_a_default_target_every_run_reaches_by_its_first_evaluation_gives_way_to_a_timed_one() -> None:
    """A study that pruned most batch sizes at the first rung: their best is their first evaluation.

    The two-thirds rule then lands on a value the full runs reach by their first evaluation too,
    so every point is an upper bound and nothing can be fitted. The default moves to the value
    the most batch sizes reach later than that (the hardest of those), and the fit has its points.
    """
    full = [_trial(i, b, 0.1, [0.45, 0.2, 0.1, 0.05]) for i, b in enumerate((8, 32, 128, 512))]
    pruned = [_trial(10 + i, b, 0.1, [0.5], status="pruned") for i, b in enumerate((11, 16, 23, 45, 64, 90, 181, 256))]
    trials = [*full, *pruned]
    # the rule's target: the 8th best of the 12 batch sizes' bests (4 x 0.05, 8 x 0.5), reached by all of them ...
    assert all(p.upper_bound for p in steps_by_batch(trials, 0.5))  # ... by their first evaluation
    target = choose_target(trials)
    assert target == 0.05
    timed = [p for p in bin_points(steps_by_batch(trials, target)) if not p.censored]
    assert [p.batch_size for p in timed] == [8, 32, 128, 512]
    assert fit_critical_batch(bin_points(steps_by_batch(trials, target))).n_points == 4


def test_nearby_targets_are_where_one_batch_size_fewer_or_more_reaches() -> None:
    bests = {8: 0.10, 16: 0.12, 32: 0.20, 64: 0.25, 128: 0.40, 256: 0.90}
    trials = [_trial(i, b, 0.1, [1.0, v]) for i, (b, v) in enumerate(bests.items())]

    def reaching(target: float) -> int:
        return sum(v <= target for v in bests.values())

    for target in (0.25, 0.3, 0.12, 0.9, 0.5):
        near = nearby_targets(trials, target)
        assert sorted(reaching(v) for v in near) == [
            n for n in (reaching(target) - 1, reaching(target) + 1) if 1 <= n <= len(bests)
        ], target
    assert nearby_targets(trials, 0.05) == [0.10]  # none reaches it: only an easier neighbour
    assert nearby_targets(trials, 0.95) == [0.40]  # all reach it: only a harder one
    accuracy = [_trial(i, b, 0.1, [0.0, v]) for i, (b, v) in enumerate(bests.items())]
    for t in accuracy:
        t["history"] = [{"samples": h["samples"], "accuracy": h["train_loss"]} for h in t["history"]]
    # maximised: a harder target is a higher one; 0.25 is reached by 0.25, 0.40, 0.90
    assert nearby_targets(accuracy, 0.25, "accuracy", direction="maximize") == [0.40, 0.20]


def test_of_two_runs_that_missed_the_target_in_one_bin_the_longer_bounds_the_fit() -> None:
    """A newcomer's fit kept a pruned trial's 'at least 33 steps' at B=104 and dropped a full run at B=97 that
    trained 310 steps without reaching the target; the fit then put S(97) at 166 steps, against that run."""
    full = _trial(1, 97, 0.1, [0.9, 0.8, 0.7, 0.6, 0.55], every=6016)  # 310 steps, never at 0.5
    pruned = _trial(2, 104, 0.2, [0.95], status="pruned", every=3432)  # 33 steps
    (point,) = bin_points(steps_by_batch([full, pruned], 0.5))
    assert (point.batch_size, point.lower_bound, point.trial) == (97, True, 1)
    assert point.steps == pytest.approx(5 * 6016 / 97)
    reached = _trial(3, 100, 0.1, [0.9, 0.4], every=5000)  # a run that reached it beats both bounds
    (point,) = bin_points(steps_by_batch([full, pruned, reached], 0.5))
    assert (point.batch_size, point.lower_bound) == (100, False)


def test_choose_target_maximize_and_errors() -> None:
    trials = [
        {"batch_size": b, "history": [{"samples": 1, "val_acc": a}]}
        for b, a in [(8, 0.9), (16, 0.8), (32, 0.7), (64, 0.5)]
    ]
    assert choose_target(trials, "val_acc", direction="maximize") == 0.7
    with pytest.raises(EstimationError, match="no trial recorded a finite 'train_loss'"):
        choose_target(trials)
    with pytest.raises(ConfigError, match="reach_fraction"):
        choose_target(trials, "val_acc", reach_fraction=0.0)


def test_steps_by_batch_keeps_the_best_lr_and_the_right_bounds() -> None:
    trials = [
        _trial(0, 16, 0.1, [0.8, 0.4, 0.2, 0.1]),
        _trial(1, 16, 0.2, [0.6, 0.2, 0.1]),  # faster: reaches 0.2 at 2048 samples = 128 steps
        _trial(2, 64, 0.4, [0.9, 0.7], status="pruned"),
        _trial(3, 64, 0.8, [0.9, 0.8, 0.7, 0.6]),  # ran longest without reaching: the bound
        _trial(4, 128, 5.0, [0.9, None], status="diverged"),  # unreached and diverged: no bound
        _trial(5, 256, 5.0, [0.9, 0.15, None], status="diverged"),  # reached before diverging: counts
        _trial(6, 512, 0.1, [0.1, 0.05]),  # at the target at its first evaluation
    ]
    points = {p.batch_size: p for p in steps_by_batch(trials, 0.2)}
    assert sorted(points) == [16, 64, 256, 512]
    assert points[16] == BatchPoint(16, 2048 / 16, 2048.0, 0.2, trial=1, n_trials=2)
    assert (
        points[64].lower_bound and points[64].steps == 4096 / 64 and points[64].trial == 3 and points[64].n_trials == 2
    )
    assert not points[256].censored and points[256].lr == 5.0
    assert 1024 / 256 < points[256].steps < 2048 / 256
    assert points[512].upper_bound and points[512].censored


def test_trial_records_and_their_dicts_give_the_same_points() -> None:
    raw = [_trial(i, b, 0.1 * b, [1.0, 0.5, 0.25 * 8 / b]) for i, b in enumerate([8, 16, 32])]
    records = [
        TrialRecord(
            number=t["number"],
            status=t["status"],
            batch_size=t["batch_size"],
            lr=t["lr"],
            temperature=None,
            value=None,
            samples=0,
            params={},
            config={},
            history=t["history"],
        )
        for t in raw
    ]
    assert (
        steps_by_batch(records, 0.3) == steps_by_batch([r.to_dict() for r in records], 0.3) == steps_by_batch(raw, 0.3)
    )
    assert choose_target(records) == choose_target(raw)
