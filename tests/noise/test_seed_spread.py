"""seed_spread_interval: B_simple's sampling interval widened by the trajectory's spread near the measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bstune.noise import seed_spread_interval

Point = tuple[int, float | None, tuple[float, float] | None]


def _trajectory(log_sd: float, n: int = 8, seed: int = 0, level: float = 200.0) -> list[Point]:
    """Points whose B_simple varies by log_sd, each known exactly (no interval)."""
    rng = np.random.default_rng(seed)
    return [(1000 * (k + 1), float(level * math.exp(log_sd * rng.standard_normal())), None) for k in range(n)]


def test_flat_trajectory_leaves_the_interval_nearly_as_it_was() -> None:
    ci = (180.0, 222.0)
    (lo, hi), spread = seed_spread_interval(200.0, ci, _trajectory(1e-4), at_samples=5000)
    assert spread is not None and spread < 1e-3
    assert lo == pytest.approx(180.0, rel=1e-3) and hi == pytest.approx(222.0, rel=1e-3)


def test_spread_adds_in_quadrature_in_log_space() -> None:
    """Sampling half-width h = log 1.1 on each side, trajectory log-sd s: the new half-width is √(h² + z²s²)."""
    points: list[Point] = [(4000, 200.0 / 1.5, None), (5000, 200.0, None), (6000, 200.0 * 1.5, None)]
    s = math.log(1.5)  # the sd of log b over the three points (ddof 1)
    (lo, hi), spread = seed_spread_interval(200.0, (200.0 / 1.1, 220.0), points, at_samples=5000, confidence=0.9)
    assert spread == pytest.approx(s)
    half = math.hypot(math.log(1.1), 1.6448536 * s)
    assert lo == pytest.approx(200.0 * math.exp(-half), rel=1e-6)
    assert hi == pytest.approx(200.0 * math.exp(half), rel=1e-6)


def test_wider_spread_wider_interval_and_it_always_contains_the_sampling_one() -> None:
    ci = (150.0, 260.0)
    widths = []
    for sd in (0.05, 0.2, 0.5):
        (lo, hi), _ = seed_spread_interval(200.0, ci, _trajectory(sd, seed=1), at_samples=5000)
        assert lo <= ci[0] and hi >= ci[1]
        widths.append(math.log(hi / lo))
    assert widths == sorted(widths) and widths[-1] > 2 * widths[0]


def test_only_points_near_the_measurement_count() -> None:
    near: list[Point] = [(4000, 100.0, None), (5000, 100.0, None), (6000, 100.0, None)]
    far: list[Point] = [(100, 1.0, None), (500_000, 1e6, None)]  # early training and long after: outside a factor of 2
    (lo, hi), spread = seed_spread_interval(100.0, (90.0, 110.0), near + far, at_samples=5000)
    assert spread == 0.0 and (lo, hi) == pytest.approx((90.0, 110.0))
    # a short run's few points: the three nearest count though they lie outside the window
    sparse: list[Point] = [(800, 50.0, None), (1600, 100.0, None), (3200, 100.0, None), (6400, 100.0, None)]
    _, spread = seed_spread_interval(100.0, (90.0, 110.0), sparse, at_samples=6400)
    assert spread == 0.0
    _, spread = seed_spread_interval(100.0, (90.0, 110.0), sparse, at_samples=6400, min_points=4)
    assert spread is not None and spread > 0.3


def test_open_sides_stay_open_and_too_few_points_change_nothing() -> None:
    (lo, hi), _ = seed_spread_interval(200.0, (120.0, math.inf), _trajectory(0.3), at_samples=5000)
    assert hi == math.inf and lo < 120.0
    (lo, hi), _ = seed_spread_interval(200.0, (0.0, 300.0), _trajectory(0.3), at_samples=5000)
    assert lo == 0.0 and hi > 300.0
    lone: list[Point] = [(5000, 210.0, None), (6000, None, None)]
    assert seed_spread_interval(200.0, (150.0, 260.0), lone, 5000) == ((150.0, 260.0), None)
    assert seed_spread_interval(math.inf, (150.0, math.inf), _trajectory(0.3), 5000) == ((150.0, math.inf), None)


def test_the_points_own_sampling_noise_is_not_counted_as_variation() -> None:
    """subtract_sampling: noisy windows scattered by exactly their own intervals' noise leave no spread, and
    windows whose interval is open are left out; the default counts every finite point, noise and all."""
    z = 1.6448536
    se = 0.3  # each window's log-scale standard error, its 90% interval exp(±z·se)
    logs = [-0.3, 0.3, -0.3, 0.3, 0.0]  # sample variance 0.09 = se²
    points: list[Point] = [
        (4000 + 500 * k, 100 * math.exp(v), (100 * math.exp(v - z * se), 100 * math.exp(v + z * se)))
        for k, v in enumerate(logs)
    ]
    points.append((5200, 3000.0, (10.0, math.inf)))  # unresolved: says nothing
    (lo, hi), spread = seed_spread_interval(100.0, (90.0, 111.0), points, at_samples=5000, subtract_sampling=True)
    assert spread == pytest.approx(0.0, abs=1e-3) and (lo, hi) == pytest.approx((90.0, 111.0), rel=1e-4)
    (lo, hi), spread = seed_spread_interval(100.0, (90.0, 111.0), points, 5000)  # the default: the raw spread
    assert spread is not None and spread > 1.0 and hi > 1000  # the windows' noise and the unresolved one in it
