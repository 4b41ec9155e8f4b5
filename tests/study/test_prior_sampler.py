"""PriorSampler: the prior's draws mixed into another sampler's, and a search that can leave the band."""

from __future__ import annotations

import math

import optuna
import pytest

from bstune.study._prior import Prior
from bstune.study._prior_sampler import PriorSampler


def _prior(weight: float = 3.0) -> Prior:
    # search: B 2..4096, v in ±ln 30; band: B 64..256 (u ~ 0.45..0.64), v in ±ln 3
    return Prior(
        b_noise=256.0, b_ref=512, lr_ref=0.1, alpha=1.0, batch_low=64, batch_high=256, lr_width=3.0,
        lr_min=1e-6, lr_max=1e3, momentum_ref=0.0, search_low=2, search_high=4096, lr_search_width=30.0,
        weight=weight,
    )  # fmt: skip


def _suggest(trial: optuna.Trial, prior: Prior) -> tuple[float, float]:
    return trial.suggest_float("batch_coord", 0.0, 1.0), trial.suggest_float("lr_coord", *prior.v_range)


def _in_band(prior: Prior, params: dict[str, float]) -> bool:
    (u_lo, u_hi), (v_lo, v_hi) = prior.band_coords, prior.band_v_range
    return u_lo <= params["batch_coord"] <= u_hi and v_lo <= params["lr_coord"] <= v_hi


def test_prior_draws_come_from_the_band_and_the_rest_from_the_wrapped_sampler() -> None:
    prior = _prior()
    study = optuna.create_study(sampler=PriorSampler(optuna.samplers.RandomSampler(seed=1), prior, seed=0))
    study.optimize(lambda t: sum(_suggest(t, prior)), n_trials=200)
    drawn = [t for t in study.trials if prior.from_prior(t.number, 0)]
    asked = [t for t in study.trials if not prior.from_prior(t.number, 0)]
    assert [t.number for t in study.trials[:3]] == [t.number for t in drawn[:3]]  # the first `weight` trials
    assert all(_in_band(prior, t.params) for t in drawn)
    assert all(t.params == prior.draw(t.number, 0) for t in drawn)
    # the random sampler's trials cover the whole search box: most of them outside the band
    assert len(asked) > 150 and sum(not _in_band(prior, t.params) for t in asked) > 0.8 * len(asked)
    assert min(t.params["batch_coord"] for t in asked) < 0.05 and max(t.params["batch_coord"] for t in asked) > 0.95


def test_a_search_drawn_from_a_wrong_prior_still_finds_the_optimum_outside_the_band() -> None:
    """The optimum sits at B ~ 2900 and 10x above the rule, far outside the band: a search confined to
    the band could not get below (0.96 - 0.64)^2 ~ 0.1; TPE, fed the prior's draws, leaves them."""
    prior = _prior()

    def objective(trial: optuna.Trial) -> float:
        u, v = _suggest(trial, prior)
        return (u - 0.96) ** 2 + ((v - math.log(10)) / 6.8) ** 2

    inner = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=6)
    study = optuna.create_study(sampler=PriorSampler(inner, prior, seed=0))
    study.optimize(objective, n_trials=40)
    band_best = min(t.value for t in study.trials if _in_band(prior, t.params))  # type: ignore[type-var]
    assert band_best > 0.09
    assert study.best_value < 0.02
    assert not _in_band(prior, study.best_params)


def test_the_spaces_other_params_are_always_the_wrapped_samplers() -> None:
    prior = _prior(weight=100.0)  # every trial of this test a prior draw
    inner = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=3)
    study = optuna.create_study(sampler=PriorSampler(inner, prior, seed=0))

    def objective(trial: optuna.Trial) -> float:
        u, v = _suggest(trial, prior)
        schedule = trial.suggest_categorical("schedule", ["constant", "cosine"])
        decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        return u + v + (schedule == "cosine") + math.log10(decay)

    study.optimize(objective, n_trials=12)
    assert all(_in_band(prior, t.params) for t in study.trials)
    assert len({t.params["schedule"] for t in study.trials}) == 2
    assert len({t.params["weight_decay"] for t in study.trials}) == 12


def test_a_trial_function_naming_its_coordinates_otherwise_gets_the_wrapped_samplers() -> None:
    prior = _prior()
    study = optuna.create_study(sampler=PriorSampler(optuna.samplers.RandomSampler(seed=0), prior, seed=0))
    study.optimize(lambda t: t.suggest_float("batch_coord", 2.0, 3.0), n_trials=3)  # outside the draw's range
    assert all(2.0 <= t.params["batch_coord"] <= 3.0 for t in study.trials)


@pytest.mark.parametrize("liar", [False, True])
def test_runs_under_tpe_with_or_without_the_constant_liar(liar: bool) -> None:
    """Parallel workers wrap TPE with the constant liar: trials asked while others run still work."""
    prior = _prior()
    inner = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=3, constant_liar=liar)
    study = optuna.create_study(sampler=PriorSampler(inner, prior, seed=0))
    running = [study.ask() for _ in range(4)]
    for t in running:
        _suggest(t, prior)
    for t in running:
        study.tell(t, t.params["batch_coord"])
    study.optimize(lambda t: sum(_suggest(t, prior)), n_trials=10)
    assert len(study.trials) == 14 and all(t.state.is_finished() for t in study.trials)
