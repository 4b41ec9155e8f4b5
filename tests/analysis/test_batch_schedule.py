"""recommend_batch_schedule: batch sizes that follow a critical-batch trajectory, rates by the LR rule."""

from __future__ import annotations

import math
from typing import Any

import pytest

import bstune
from bstune.analysis import BatchSchedule
from bstune.analysis import recommend_batch_schedule as recommend
from bstune.errors import ConfigError
from bstune.noise import TrajectoryPoint
from bstune.space import PriorSettings
from bstune.training import RunStatus, TrainConfig
from bstune.training._schedule import step_batch_sizes


def recommend_batch_schedule(trajectory: Any, **kwargs: Any) -> BatchSchedule:
    """The rules point by point (no sliding median) unless a test says otherwise."""
    return recommend(trajectory, **({"window": 1} | kwargs))


def s(b: float, b_noise: float) -> float:
    return b / (1 + b / b_noise)  # McCandlish: ε_opt(B) ∝ B/(1 + B/B_noise)


def test_sgd_rates_follow_the_mccandlish_rule_at_each_change() -> None:
    traj = [(1000, 20.0), (2000, 35.0), (4000, 90.0), (6000, 100.0), (8000, 400.0)]
    sched = recommend_batch_schedule(traj, base_batch=64, base_lr=0.1, budget_samples=10_000, batch_max=256)
    assert [(st.start_samples, st.batch_size, st.b_crit) for st in sched.stages] == [
        (0, 16, 20.0),  # the first window stands for the start
        (4000, 64, 90.0),  # 35 < 2 x 20: no change at 2000
        (8000, 256, 400.0),  # 100 < 2 x 90: none at 6000
    ]
    assert [st.lr for st in sched.stages] == pytest.approx(
        [0.1 * s(16, 20) / s(64, 20), 0.1, 0.1 * s(256, 400) / s(64, 400)]
    )
    assert [st.lr for st in sched.stages] == pytest.approx([0.058333, 0.1, 0.282927], rel=1e-5)


def test_adam_rates_take_the_rule_to_the_power_alpha() -> None:
    traj = [(0, 20.0), (5000, 400.0)]
    default = recommend_batch_schedule(
        traj, base_batch=64, base_lr=1e-3, budget_samples=10_000, batch_max=256, family="adam"
    )
    assert default.alpha == PriorSettings().adam_alpha == 0.8
    assert [st.lr for st in default.stages] == pytest.approx(
        [1e-3 * (s(16, 20) / s(64, 20)) ** 0.8, 1e-3 * (s(256, 400) / s(64, 400)) ** 0.8]
    )
    half = recommend_batch_schedule(
        traj, base_batch=64, base_lr=1e-3, budget_samples=10_000, batch_max=256, family="adamw", alpha=0.5
    )
    assert half.stages[1].lr == pytest.approx(1e-3 * math.sqrt(s(256, 400) / s(64, 400)))


def test_batches_never_shrink_and_stay_within_the_bounds() -> None:
    traj = [(0, 3.0), (100, 50.0), (200, 10.0), (300, 90.0), (400, 5000.0), (500, 9000.0)]
    sched = recommend_batch_schedule(traj, base_batch=32, base_lr=0.1, budget_samples=1000, batch_min=8, batch_max=512)
    sizes = [st.batch_size for st in sched.stages]
    assert sizes == [8, 32, 512]  # 3 -> batch_min; the dip to 10 keeps 32; 90 < 2 x 50; 5000 -> batch_max
    assert [st.start_samples for st in sched.stages] == [0, 100, 400]  # 9000 < 2 x 5000


def test_a_change_waits_for_the_trajectory_to_double() -> None:
    grow = recommend_batch_schedule(
        [(0, 40.0), (100, 79.0), (200, 80.0)], base_batch=32, base_lr=0.1, budget_samples=1000, batch_max=1024
    )
    assert [(st.start_samples, st.batch_size) for st in grow.stages] == [(0, 32), (200, 64)]
    slower = recommend_batch_schedule(
        [(0, 40.0), (100, 100.0), (200, 130.0)],
        base_batch=32,
        base_lr=0.1,
        budget_samples=1000,
        batch_max=1024,
        growth=3.0,
    )
    assert [(st.start_samples, st.batch_size) for st in slower.stages] == [(0, 32), (200, 128)]


def test_rounding_to_a_step_and_following_the_interval_s_lower_end() -> None:
    traj: list[Any] = [(0, 40.0, (30.0, 55.0)), (100, 200.0, (70.0, 400.0)), (200, 300.0, (130.0, 600.0))]
    step = recommend_batch_schedule(traj, base_batch=32, base_lr=0.1, budget_samples=1000, batch_max=1024, round_to=24)
    assert [st.batch_size for st in step.stages] == [24, 192]
    low = recommend_batch_schedule(traj, base_batch=32, base_lr=0.1, budget_samples=1000, batch_max=1024, use_ci=True)
    assert [(st.start_samples, st.batch_size, st.b_crit) for st in low.stages] == [(0, 16, 30.0), (100, 64, 70.0)]


def test_trajectory_points_mappings_and_unresolved_windows() -> None:
    def point(samples: int, b: float) -> TrajectoryPoint:
        return TrajectoryPoint(samples, samples // 8, b, (b / 2, b * 2), 1.0, b, 4, 0.1, 0.0125)

    traj = [point(800, math.inf), point(1600, 20.0), point(2400, math.nan), point(3200, 70.0), point(4000, 500.0)]
    sched = recommend_batch_schedule(traj, base_batch=64, base_lr=0.1, budget_samples=4000, batch_max=1024)
    assert [(st.start_samples, st.batch_size) for st in sched.stages] == [(0, 16), (3200, 64)]  # 4000: the budget's end
    as_dicts = [p.to_dict() for p in traj]
    assert (
        recommend_batch_schedule(as_dicts, base_batch=64, base_lr=0.1, budget_samples=4000, batch_max=1024).stages
        == sched.stages
    )
    assert (
        recommend_batch_schedule(
            [{"samples": 0, "b_crit": 100.0}], base_batch=64, base_lr=0.1, budget_samples=4000, batch_max=1024
        )
        .stages[0]
        .batch_size
        == 64
    )


def test_the_sliding_median_ignores_one_outlying_window() -> None:
    traj = [(0, 40.0), (100, 45.0), (200, 2000.0), (300, 50.0), (400, 90.0), (500, 100.0), (600, 95.0)]
    sched = recommend(traj, base_batch=32, base_lr=0.1, budget_samples=1000, batch_max=1024)
    assert sched.stages[1].start_samples == 400 and sched.stages[1].batch_size == 64  # median(50, 90, 2000)
    assert [st.batch_size for st in sched.stages] == [32, 64]
    assert [
        st.batch_size
        for st in recommend(traj, base_batch=32, base_lr=0.1, budget_samples=1000, batch_max=1024, window=1).stages
    ] == [32, 1024]


def test_relative_batches_keep_the_base_run_s_place_against_the_critical_batch() -> None:
    traj = [(0, 20.0), (1000, 40.0), (2000, 80.0), (3000, 160.0)]  # geometric mean 56.6
    args: dict[str, Any] = {"base_batch": 40, "base_lr": 0.1, "budget_samples": 4000, "batch_max": 1024}
    prop = recommend_batch_schedule(traj, relative=1.0, **args)  # 40·level/56.6: 14, 28, 57, 113
    assert [(st.start_samples, st.batch_size) for st in prop.stages] == [(0, 16), (1000, 32), (2000, 64), (3000, 128)]
    root = recommend_batch_schedule(traj, relative=0.5, **args)  # 40·sqrt(level/56.6): 24, 34, 48, 67
    assert [(st.start_samples, st.batch_size) for st in root.stages] == [(0, 32), (2000, 64)]  # sqrt(4) = 2: grown
    assert [st.lr for st in root.stages] == pytest.approx([0.1 * s(32, 20) / s(40, 20), 0.1 * s(64, 80) / s(40, 80)])
    assert root.relative == 0.5 and prop.relative == 1.0
    assert recommend_batch_schedule(traj, **args).relative is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"trajectory": []}, "trajectory"),
        ({"trajectory": [(0, math.nan), (10, -1.0)]}, "trajectory"),
        ({"trajectory": [(0,)]}, "trajectory"),
        ({"trajectory": [(-5, 10.0)]}, "trajectory"),
        ({"batch_min": 64, "batch_max": 32}, "batch_max"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"base_batch": 0}, "base_batch"),
        ({"family": "lamb"}, "family"),
        ({"growth": 1.0}, "growth"),
        ({"round_to": 0}, "round_to"),
        ({"window": 0}, "window"),
        ({"relative": 0.0}, "relative"),
        ({"relative": 1.5}, "relative"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "trajectory": [(0, 10.0)],
        "base_batch": 32,
        "base_lr": 0.1,
        "budget_samples": 100,
        "batch_max": 64,
    } | kwargs
    with pytest.raises(ConfigError) as info:
        recommend(**args)
    assert info.value.field == field and info.value.source == "recommend_batch_schedule"


def test_the_recommendation_runs_in_the_trainer(blob_task: bstune.Task) -> None:
    sched = recommend_batch_schedule(
        [(0, 10.0), (400, 40.0)], base_batch=16, base_lr=0.1, budget_samples=1200, batch_max=64
    )
    assert isinstance(sched, BatchSchedule) and sched.batch_schedule[0][:2] == (0, 8)
    cfg = sched.apply(TrainConfig(batch_size=16, lr=0.1, max_samples=1200))
    assert (cfg.batch_size, cfg.lr) == sched.batch_schedule[0][1:]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    run = bstune.train(blob_task, cfg)
    assert run.status is RunStatus.COMPLETED and run.steps == cfg.steps == len(list(step_batch_sizes(cfg)))
    assert sched.to_dict()["stages"][1]["batch_size"] == 32
    with pytest.raises(ConfigError) as info:  # a config whose budget ends before the last stage
        sched.apply(TrainConfig(batch_size=16, lr=0.1, max_samples=300))
    assert info.value.field == "batch_schedule"
