"""A sampler's draws become one trial's configuration: batch size, learning rate, temperature, caps."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from bstune.errors import ConfigError
from bstune.space import SearchSpace
from bstune.study._prior import Prior
from bstune.study._trial_plan import TrialPlan, TrialPlanner, split_params

SPACE = {"name": "tiny", "batch_size": {"min": 8, "max": 256}, "lr": {"min": 1e-3, "max": 1.0}}
PRIOR = Prior(
    b_noise=128.0, b_ref=256, lr_ref=0.2, alpha=1.0, batch_low=8, batch_high=128, lr_width=3.0, lr_min=1e-3,
    lr_max=1.0, momentum_ref=0.9, search_low=8, search_high=256, lr_search_width=30.0, weight=3.0,
)  # fmt: skip


def planner(mode: str = "baseline", space: dict | None = None) -> TrialPlanner:
    return TrialPlanner(
        space=SearchSpace.coerce(space or SPACE),
        mode=mode,  # type: ignore[arg-type]
        prior=PRIOR if mode == "prior" else None,
        batch_cap=256,
        budget_samples=9000,
        eval_every=1000,
        seed=4,
        device="cpu",
        default_momentum=0.9,
    )


def test_a_plans_temperature_is_its_rate_over_batch_and_one_minus_the_momentum_it_trains_with() -> None:
    plan = planner().plan({"batch_size": 64, "lr": 0.32})
    assert (plan.config.batch_size, plan.config.lr, plan.config.seed, plan.config.max_samples) == (64, 0.32, 4, 9000)
    assert plan.temperature == pytest.approx(0.32 / (64 * (1 - 0.9)))  # the optimizer's momentum, not searched
    searched = {**SPACE, "params": {"momentum": {"type": "float", "low": 0.0, "high": 0.95}}}
    plan = planner(space=searched).plan({"batch_size": 64, "lr": 0.32, "momentum": 0.5})
    assert plan.temperature == pytest.approx(0.32 / (64 * 0.5)) and plan.config.momentum == 0.5


def test_batches_above_the_cap_train_at_the_cap_which_memory_and_data_lower() -> None:
    p = planner()
    assert p.learn_oom(200) == 100 and p.plan({"batch_size": 256, "lr": 0.1}).config.batch_size == 100
    assert p.learn_oom(10) == 8  # never below the space's smallest batch
    assert p.learn_data_size(5_000) == 8
    with pytest.raises(ConfigError, match=r"batch_size.min.*larger than the training set \(6 examples\)"):
        planner().learn_data_size(6)


def test_prior_coordinates_give_the_rules_rate_and_plan_at_finds_the_draw_of_a_given_config() -> None:
    p = planner("prior")
    b = 64
    plan = p.plan({"batch_coord": PRIOR.coord_of(b), "lr_coord": 0.0})
    assert plan.config.batch_size == b and plan.config.lr == pytest.approx(PRIOR.lr_rule(b))
    found = p.plan_at(b, 0.05)
    assert found is not None and (found.config.batch_size, found.config.lr) == (b, pytest.approx(0.05))
    assert p.plan_at(b, PRIOR.lr_rule(b) * 40) is None  # outside the 30x either side the search covers
    assert p.plan_at(512, 0.05) is None  # above the cap
    searched = {**SPACE, "params": {"model.width": {"type": "int", "low": 4, "high": 8}}}
    assert planner("prior", searched).plan_at(b, 0.05) is None  # a draw would also pick a width


def test_a_planner_asks_for_the_coordinates_of_its_mode_and_the_plan_travels_as_json() -> None:
    searched = {**SPACE, "params": {"model.width": {"type": "int", "low": 4, "high": 8}}}
    for mode, names in (("baseline", {"batch_size", "lr"}), ("prior", {"batch_coord", "lr_coord"})):
        p = planner(mode, searched)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
        params = p.sample(trial)
        assert set(params) == names | {"model.width"}
        plan = p.plan(params)
        assert plan.model_kwargs == {"width": params["model.width"]}
        again = TrialPlan.from_dict(plan.to_dict())
        assert again == plan
        assert set(plan.params_for_user()) == {"batch_size", "lr", "model.width"}
        parallel = dataclasses.replace(plan, data_parallel=2).on_devices(("cuda:0", "cuda:1"))
        assert parallel.config.device == "cuda:0" and parallel.devices == ("cuda:0", "cuda:1")
        assert TrialPlan.from_dict(parallel.to_dict()) == parallel


def test_split_params_sends_model_keywords_to_the_factory_and_warmup_in_samples() -> None:
    train, model = split_params({"model.depth": 3, "warmup_fraction": 0.25, "weight_decay": 0.01}, 4000)
    assert train == {"warmup_samples": 1000, "weight_decay": 0.01} and model == {"depth": 3}
    assert math.isclose(split_params({"warmup_fraction": 0.0}, 4000)[0]["warmup_samples"], 0)


def test_a_planner_pickled_before_planning_had_its_own_module_loads() -> None:
    """Ray pickles the planner with its searcher's state (PlannerSpace): a study interrupted before the planner
    moved to _trial_plan named it bstune.study._trial.TrialPlanner, and Tuner.restore must still find it there."""
    import pickle

    p = planner("prior")
    old = pickle.dumps(p, protocol=0).replace(b"bstune.study._trial_plan\n", b"bstune.study._trial\n")
    assert b"bstune.study._trial\nTrialPlanner" in old
    again = pickle.loads(old)
    assert again == p and type(again) is TrialPlanner
