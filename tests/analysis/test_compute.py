"""Compute-optimal batch size against the analytic optimum of a saturating throughput."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bstune.analysis import CriticalBatchFit, compute_optimal, fit_critical_batch, throughput_at
from bstune.errors import ConfigError

S_MIN, B_CRIT = 200.0, 512.0
A, B = 0.01, 1e-4  # one step of batch B takes a + b·B seconds: throughput B/(a + bB) saturates at 1/b


def _fit() -> CriticalBatchFit:
    return fit_critical_batch([(b, S_MIN * (1 + B_CRIT / b)) for b in (16, 64, 256, 1024, 4096)])


def _throughput(batches: list[int]) -> dict[int, float]:
    return {b: b / (A + B * b) for b in batches}


def test_device_optimum_matches_the_analytic_one() -> None:
    # T(B) = S_min(1 + Bc/B)(a + bB) is least at B* = sqrt(a·Bc/b)
    best = math.sqrt(A * B_CRIT / B)  # ≈ 226
    result = compute_optimal(_fit(), _throughput(list(range(1, 4097))))
    grid = np.arange(1, 4097)
    analytic = S_MIN * (1 + B_CRIT / grid) * (A + B * grid)
    assert result.device.batch_size == grid[np.argmin(analytic)]
    assert result.device.batch_size == pytest.approx(best, abs=1)
    assert result.device.seconds == pytest.approx(analytic.min(), rel=1e-6)
    assert result.device.steps == pytest.approx(S_MIN * (1 + B_CRIT / result.device.batch_size), rel=1e-6)
    assert result.device.samples == pytest.approx(result.device.steps * result.device.batch_size)
    assert not result.device.at_range_edge and not result.device.extrapolated
    assert result.wall == result.device  # one worker: the same choice


def test_a_coarse_power_of_two_ladder_lands_near_the_optimum() -> None:
    result = compute_optimal(_fit(), _throughput([2**k for k in range(13)]))
    assert result.device.batch_size == pytest.approx(math.sqrt(A * B_CRIT / B), rel=0.15)
    exact = S_MIN * (1 + B_CRIT / result.device.batch_size) * (A + B * result.device.batch_size)
    assert result.device.seconds == pytest.approx(exact, rel=0.05)  # interpolation error only


@pytest.mark.parametrize("ladder", [[4**k for k in range(7)], [2, 8, 32, 128, 512, 2048, 4096]])
def test_the_probes_ladder_at_every_factor_of_four_lands_near_the_optimum(ladder: list[int]) -> None:
    """The probe measures every 4x (bstune.study._probe_plan._ladder): the pick's true time stays within 1 % of the best."""
    result = compute_optimal(_fit(), _throughput(ladder))
    best = math.sqrt(A * B_CRIT / B)
    true = S_MIN * (1 + B_CRIT / result.device.batch_size) * (A + B * result.device.batch_size)
    assert true <= 1.01 * S_MIN * (1 + B_CRIT / best) * (A + B * best)
    assert result.device.seconds == pytest.approx(true, rel=0.06)  # interpolation error only


@pytest.mark.parametrize("workers", [2, 8])
def test_wall_time_optimum_with_data_parallel_workers(workers: int) -> None:
    # wall(B) = S(B)·(a + b·B/N): least at B* = sqrt(N·a·Bc/b), each worker B*/N
    result = compute_optimal(_fit(), _throughput(list(range(1, 4097))), n_workers=workers)
    best = math.sqrt(workers * A * B_CRIT / B)
    assert result.wall.batch_size == pytest.approx(best, rel=0.02)
    assert result.wall.batch_size == workers * result.wall.per_worker_batch
    assert result.wall.device_seconds == pytest.approx(workers * result.wall.seconds)
    assert result.wall.seconds < result.device.seconds < result.wall.device_seconds  # faster, but more device time
    assert result.wall_seconds(result.wall.batch_size, workers) == pytest.approx(result.wall.seconds)
    assert str(workers) in result.summary


def test_throughput_is_interpolated_log_log_and_never_extrapolated() -> None:
    thr = {16: 100.0, 64: 400.0, 256: 800.0}
    assert throughput_at(thr, 32.0) == pytest.approx(200.0)
    assert throughput_at(thr, 1.0) == pytest.approx(100.0) and throughput_at(thr, 4096.0) == pytest.approx(800.0)
    # linear scaling up to 256 with B_crit = 512: the best B is beyond what was measured; it is not searched
    result = compute_optimal(_fit(), {b: 50.0 * b for b in (16, 64, 256)})
    assert result.device.batch_size == 256 and result.device.at_range_edge
    narrow = compute_optimal(_fit(), _throughput(list(range(1, 4097))), batch_range=(300, 1000))
    assert narrow.device.batch_size == 300 and narrow.device.at_range_edge


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="throughput"):
        compute_optimal(_fit(), {})
    with pytest.raises(ConfigError, match="positive and finite"):
        compute_optimal(_fit(), {16: 0.0})
    with pytest.raises(ConfigError, match="n_workers"):
        compute_optimal(_fit(), {16: 1.0}, n_workers=0)
    with pytest.raises(ConfigError, match=r"no per-worker batch size in the measured throughput range \[16, 64\]"):
        compute_optimal(_fit(), {16: 1.0, 64: 2.0}, batch_range=(128, 256))


def _noisy_fit(seed: int, sigma: float = 0.15) -> CriticalBatchFit:
    noise = np.exp(np.random.default_rng(seed).normal(0.0, sigma, 5))
    return fit_critical_batch(
        [(b, S_MIN * (1 + B_CRIT / b) * z) for b, z in zip((16, 64, 256, 1024, 4096), noise, strict=True)]
    )


def test_the_choices_interval_is_the_analytic_optimum_at_either_end_of_b_crits() -> None:
    fit = _noisy_fit(0)
    lo, hi = fit.b_crit_ci
    choice = compute_optimal(fit, _throughput(list(range(1, 4097)))).device
    # T(B) ∝ (B + B_crit)(a + bB)/B is least at sqrt(a·B_crit/b)
    assert choice.batch_size_ci[0] == pytest.approx(math.sqrt(A * lo / B), abs=1)
    assert choice.batch_size_ci[1] == pytest.approx(math.sqrt(A * hi / B), abs=1)
    assert choice.batch_size_ci[0] <= choice.batch_size <= choice.batch_size_ci[1]
    assert choice.steps_ci == fit.steps_ci(choice.batch_size)
    ratio = choice.seconds / choice.steps
    assert choice.seconds_ci == pytest.approx((choice.steps_ci[0] * ratio, choice.steps_ci[1] * ratio))


def test_the_choices_interval_covers_the_true_optimum_about_90_percent_of_the_time() -> None:
    truth = compute_optimal(_fit(), _throughput(list(range(1, 4097)))).device.batch_size
    ladder = _throughput(list(range(1, 4097)))
    covered = [
        lo <= truth <= hi for lo, hi in (compute_optimal(_noisy_fit(s), ladder).device.batch_size_ci for s in range(60))
    ]
    assert 0.8 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_an_open_b_crit_interval_opens_the_choice_to_the_fastest_measured_batch() -> None:
    noise = np.exp(np.random.default_rng(3).normal(0.0, 0.05, 4))
    linear = fit_critical_batch([(b, 6400 / b * z) for b, z in zip((2, 4, 8, 16), noise, strict=True)])
    ladder = _throughput([2, 8, 32, 128, 512])
    choice = compute_optimal(linear, ladder).device
    assert math.isinf(linear.b_crit_ci[1]) and choice.batch_size_ci[1] == 512  # B_crit → ∞: the most samples/s


def _timed_ladder(rng: np.random.Generator, rungs: list[int], sd: float, n_timed: int = 7) -> tuple[dict, dict]:
    """What the probe measures of ``_throughput``: ``n_timed`` step times per rung, each off by a log-normal
    factor of ``sd`` (a shared machine); the median step's rate, and the interquartile range of the rates."""
    rates, spread = {}, {}
    for b in rungs:
        times = (A + B * b) * np.exp(rng.normal(0.0, sd, n_timed))
        q25, q50, q75 = np.quantile(times, [0.25, 0.5, 0.75])
        rates[b], spread[b] = b / q50, (b / q75, b / q25)
    return rates, spread


@pytest.mark.parametrize("sd", [0.1, 0.3])
def test_with_the_throughputs_spread_the_choices_interval_covers_the_true_optimum_about_90_percent(sd: float) -> None:
    # a ladder of noisy timings flips the choice between neighbouring rungs: an interval from the S(B) fit alone
    # held the true optimum (sqrt(A·B_crit/B) = 226) in 67% (sd 0.1) and 45% (sd 0.3) of these draws
    rng = np.random.default_rng(5)
    truth = math.sqrt(A * B_CRIT / B)
    rungs = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    alone, spread_too = [], []
    for s in range(150):
        fit = _noisy_fit(s)
        rates, spread = _timed_ladder(rng, rungs, sd)
        for out, given in ((alone, None), (spread_too, spread)):
            lo, hi = compute_optimal(fit, rates, throughput_spread=given).device.batch_size_ci
            out.append(lo <= truth <= hi)
    assert np.mean(alone) <= np.mean(spread_too) - 0.2, (np.mean(alone), np.mean(spread_too))
    assert 0.85 <= np.mean(spread_too) <= 0.995, np.mean(spread_too)


def test_the_throughputs_spread_widens_the_seconds_and_leaves_the_choice() -> None:
    ladder = _throughput([16, 64, 256, 1024, 4096])
    spread = {b: (0.8 * v, 1.25 * v) for b, v in ladder.items()}
    exact, spread_too = (compute_optimal(_fit(), ladder, throughput_spread=s).device for s in (None, spread))
    assert spread_too.batch_size == exact.batch_size and spread_too.steps_ci == exact.steps_ci
    assert spread_too.seconds_ci == pytest.approx((exact.seconds_ci[0] / 1.25, exact.seconds_ci[1] / 0.8))
    lo, hi = spread_too.batch_size_ci
    assert lo < exact.batch_size_ci[0] and hi > exact.batch_size_ci[1]
    # a spread of zero width is the throughput taken as exact
    same = compute_optimal(_fit(), ladder, throughput_spread={b: (v, v) for b, v in ladder.items()}).device
    assert same == exact


@pytest.mark.parametrize("spread", [{3: (1.0, 2.0)}, {16: (2.0, 1.0)}, {16: (0.0, 1.0)}, {16: (1.0, math.inf)}])
def test_a_spread_that_is_no_interval_of_a_measured_rate_is_refused(spread: dict) -> None:
    with pytest.raises(ConfigError, match="compute_optimal: throughput_spread: must map measured batch sizes"):
        compute_optimal(_fit(), _throughput([16, 64]), throughput_spread=spread)
