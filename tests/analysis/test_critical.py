"""The S(B) = S_min(1 + B_crit/B) fit: exact and noisy recovery, interval coverage, edges, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bstune.analysis import BatchPoint, fit_critical_batch
from bstune.analysis._critical import STEP_NOISE
from bstune.errors import EstimationError

BATCHES = np.array([4, 8, 16, 32, 64, 128, 256, 512, 1024], dtype=float)
S_MIN, B_CRIT = 300.0, 100.0


def _steps(batches: np.ndarray, sigma: float = 0.0, seed: int = 0) -> np.ndarray:
    """S(B) with multiplicative lognormal noise of log-sd sigma."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, len(batches)) if sigma else 0.0
    return S_MIN * (1 + B_CRIT / batches) * np.exp(noise)


def test_exact_data_are_recovered_exactly() -> None:
    fit = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES), strict=True)))
    assert fit.b_crit == pytest.approx(B_CRIT, rel=1e-6)
    assert fit.s_min == pytest.approx(S_MIN, rel=1e-6)
    assert fit.e_min == pytest.approx(S_MIN * B_CRIT, rel=1e-6)
    assert fit.residual_rms < 1e-6 and fit.edge == "inside" and fit.n_points == len(BATCHES)
    assert fit.predict_steps(50.0) == pytest.approx(S_MIN * 3, rel=1e-6)
    assert fit.predict_samples(50.0) == pytest.approx(50 * S_MIN * 3, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_low_noise_recovers_b_crit_within_20_percent(seed: int) -> None:
    fit = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES, sigma=0.05, seed=seed), strict=True)))
    assert fit.b_crit == pytest.approx(B_CRIT, rel=0.2)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.2)
    assert fit.b_crit_ci[0] < fit.b_crit < fit.b_crit_ci[1]
    assert fit.residual_rms == pytest.approx(0.05, rel=0.7)


@pytest.mark.parametrize(("batches", "sigma"), [(BATCHES, 0.1), (BATCHES[1:7], 0.3)])
def test_the_90_percent_interval_covers_the_truth_about_90_percent_of_the_time(
    batches: np.ndarray, sigma: float
) -> None:
    seeds = range(150)
    fits = [fit_critical_batch(list(zip(batches, _steps(batches, sigma, seed), strict=True))) for seed in seeds]
    b_cover = np.mean([f.b_crit_ci[0] <= B_CRIT <= f.b_crit_ci[1] for f in fits])
    s_cover = np.mean([f.s_min_ci[0] <= S_MIN <= f.s_min_ci[1] for f in fits])
    assert 0.85 <= b_cover <= 0.96, b_cover  # too narrow fails the first bound, a vacuous interval the second
    assert 0.85 <= s_cover <= 0.96, s_cover


def test_intervals_widen_with_noise() -> None:
    def width(sigma: float) -> float:
        lo, hi = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES, sigma, seed=3), strict=True))).b_crit_ci
        return math.log(hi / lo)

    assert 0 < width(0.02) < width(0.1) < width(0.3)


def test_pure_linear_scaling_reports_b_crit_above_the_range_honestly() -> None:
    batches = np.array([2.0, 4, 8, 16, 32])
    steps = 6400 / batches * np.exp(np.random.default_rng(0).normal(0, 0.05, 5))  # still S ∝ 1/B
    fit = fit_critical_batch(list(zip(batches, steps, strict=True)))
    assert fit.edge == "above" and fit.b_crit > 32
    assert math.isinf(fit.b_crit_ci[1]) and fit.b_crit_ci[0] > 32 / 2  # a lower bound only
    assert fit.e_min == pytest.approx(6400, rel=0.1)
    assert fit.predict_steps(8.0) == pytest.approx(800, rel=0.1)
    assert not fit.identified and fit.summary.startswith("the data do not identify B_crit: ")
    assert "still fall as 1/B up to the largest batch size fitted (32)" in fit.summary
    assert f"B_crit is at least {fit.b_crit_ci[0]:.3g} (90% lower bound)" in fit.summary
    # a newcomer: an unidentified B_crit came with no next step; the side it lies on says which
    assert fit.summary.endswith(
        "; to bound it, run trials at batch sizes above 32 (each at a learning rate tuned for it: a search with a larger batch_size.max)"
    )
    exact = fit_critical_batch([(b, 6400 / b) for b in batches])
    assert math.isinf(exact.b_crit) and exact.s_min == 0.0 and exact.e_min == pytest.approx(6400)
    assert exact.predict_steps(64.0) == pytest.approx(100.0)


def test_steps_that_fall_faster_than_one_over_b_are_named_not_read_as_perfect_scaling() -> None:
    """A newcomer's trials (their learning rates 0.044, 0.155, 0.28): the report said steps "still fall as
    1/B up to 77" over a table whose steps were 64 at B = 57 and 63 at 77. No S(B) of this form falls
    faster than 1/B; the fit now says where the steps did, and why that is not B's doing."""
    fit = fit_critical_batch([(12, 1250), (57, 64), (77, 63)])
    assert fit.faster_than_linear == (12, 57, 1250.0, 64.0) and not fit.identified
    assert "still fall as 1/B" not in fit.summary
    assert "steps fell faster than 1/B from B = 12 to 57 (1,250 to 64 steps, 19.5x fewer for 4.75x the batch)" in (
        fit.summary
    )
    assert "differ in more than their batch size" in fit.to_dict()["unidentified_because"][0]
    # a few steps keep three figures, so the ratio a reader recomputes is the one printed (107/11.56, not 107/12)
    few = fit_critical_batch([(100, 400), (187, 107), (293, 11.56)])
    assert "(107 to 11.6 steps, 9.26x fewer" in few.summary
    # the law itself, perfect scaling with 5% noise, and a drop 1.4x beyond 1/B (noise): nothing to say
    assert fit_critical_batch([(b, S_MIN * (1 + B_CRIT / b)) for b in BATCHES]).faster_than_linear is None
    noisy = 6400 / BATCHES * np.exp(np.random.default_rng(0).normal(0, 0.05, len(BATCHES)))
    assert fit_critical_batch(list(zip(BATCHES, noisy, strict=True))).faster_than_linear is None
    assert fit_critical_batch([(8, 1400), (16, 500), (32, 400)]).faster_than_linear is None  # 2.8x for 2x: 1.4
    identified = fit_critical_batch([(8, 3000), (16, 700), (64, 300), (256, 260), (1024, 250)])
    assert identified.faster_than_linear == (8, 16, 3000.0, 700.0)
    assert identified.identified and "; but steps fell faster than 1/B from B = 8 to 16" in identified.summary


def test_flat_steps_report_b_crit_below_the_range() -> None:
    batches = np.array([64.0, 128, 256, 512])
    fit = fit_critical_batch([(b, 40.0 * math.exp(0.03 * (-1) ** i)) for i, b in enumerate(batches)])
    assert fit.edge == "below" and fit.b_crit < 64 and fit.b_crit_ci[0] == 0.0
    assert fit.s_min == pytest.approx(40.0, rel=0.05)
    exact = fit_critical_batch([(b, 40.0) for b in batches])
    assert exact.b_crit == 0.0 and exact.e_min == 0.0 and exact.predict_steps(1.0) == pytest.approx(40.0)


def test_censored_points_are_left_out_and_contradictions_flagged() -> None:
    reached = [
        BatchPoint(int(b), s, s * b, 0.1) for b, s in zip(BATCHES[:6], _steps(BATCHES[:6], 0.02, seed=1), strict=True)
    ]
    consistent = BatchPoint(1024, 200.0, 204800.0, 0.1, lower_bound=True)  # S(1024) ≈ 329 > 200: fine
    violated = BatchPoint(512, 2000.0, 1024000.0, 0.1, lower_bound=True)  # needed > 2000, fit says ≈ 359
    too_slow = BatchPoint(2, 20000.0, 40000.0, 0.1, upper_bound=True)  # reached within 20000 steps: fine
    fit = fit_critical_batch([*reached, consistent, violated, too_slow])
    alone = fit_critical_batch(reached)
    assert fit.b_crit == alone.b_crit and fit.n_points == 6 and fit.n_censored == 3
    assert fit.contradicted == (512,)
    assert fit.contradictions == ((512, 2000.0, True, 0.1),) and fit.to_dict()["contradictions"] == [
        [512, 2000.0, True, 0.1]
    ]
    predicted = f"{fit.predict_steps(512.0):.3g}"
    said = "the curve is contradicted where trials did not reach the target: at batch size 512 after 2,000 steps "
    assert f"; {said}(the curve predicts {predicted}); the fit is optimistic there" in fit.summary  # a newcomer's
    # report recommended B=1024 as fastest while a trial at 912 had missed the target and bstune said nothing
    early = BatchPoint(8, 5.0, 40.0, 0.1, upper_bound=True)  # reached within 5 steps where the fit says ≈ 300
    both = fit_critical_batch([*reached, violated, early])
    assert "by their first evaluation: at batch size 8 within 5 steps" in both.summary
    assert both.summary.endswith("the fit is pessimistic there") and alone.contradictions_text() == ""


def test_too_few_batch_sizes_raise_a_clear_error() -> None:
    with pytest.raises(
        EstimationError,
        match=r">= 3 distinct batch sizes, got 2 \(8, 16; 1 did not reach it \(32\)\): choose an easier target",
    ):
        fit_critical_batch([(8, 100.0), (16, 60.0), (16, 61.0), BatchPoint(32, 50.0, 1600.0, 0.1, lower_bound=True)])
    early = [BatchPoint(b, 10.0, 10.0 * b, 0.1, upper_bound=True) for b in (32, 64)]
    with pytest.raises(  # mostly reached by the first evaluation: the target is too easy, not too hard
        EstimationError,
        match=r"got 2 \(8, 16; 2 reached it by their first evaluation, so their steps are only an upper bound "
        r"\(32, 64\)\): choose a harder target",
    ):
        fit_critical_batch([(8, 100.0), (16, 60.0), *early])
    # one batch size, however many points (a space that fixes it): no other target helps
    with pytest.raises(
        EstimationError, match=r"got 1 \(64\): it takes trials at 3 or more batch sizes, half an octave apart"
    ):
        fit_critical_batch([(64, 10.0)] * 5)
    with pytest.raises(EstimationError, match="got 0 "):
        fit_critical_batch([])
    with pytest.raises(EstimationError, match="positive finite steps"):
        fit_critical_batch([(8, 100.0), (16, 0.0), (32, 10.0)])


def _unclaimed(summary: str) -> None:
    """An unidentified B_crit is stated as such, never as an estimate with an interval, as if found."""
    assert summary.startswith("the data do not identify B_crit: ")
    assert "B_crit ≈" not in summary and "B_crit is above" not in summary and "estimate ∞" not in summary
    assert "(90% CI" not in summary


def test_an_estimate_beyond_the_batch_sizes_that_reached_the_target_is_not_identified() -> None:
    """The issue's case: reached up to 64, larger batches tried but short of the target, best fit above 64."""
    batches = np.array([8.0, 16, 32, 64])
    reached = [BatchPoint(int(b), s, s * b, 0.1) for b, s in zip(batches, _steps(batches, 0.05, seed=3), strict=True)]
    bounds = [BatchPoint(b, 100.0, 100.0 * b, 0.1, lower_bound=True) for b in (124, 158)]
    fit = fit_critical_batch([*reached, *bounds])
    assert fit.edge == "above" and fit.b_crit > 64 and fit.batch_max == 64
    assert not fit.identified
    _unclaimed(fit.summary)
    assert f"the best fit, {fit.b_crit:.3g}, lies above the largest batch size fitted (64)" in fit.summary
    assert "2 batch sizes that did not reach it (124, 158) only bound the fit" in fit.summary
    assert "fitted on 4 batch sizes 8–64 that reached the target" in fit.summary
    early = BatchPoint(4, 50.0, 200.0, 0.1, upper_bound=True)
    both = fit_critical_batch([*reached, *bounds, early])
    assert both.early_batches == (4,) and both.censored_batches == (4, 124, 158)
    assert (
        "2 batch sizes that did not reach it (124, 158) and 1 that reached it by its first evaluation (4) "
        "only bound the fit" in both.summary
    )


def test_steps_that_do_not_depend_on_b_do_not_identify_b_crit() -> None:
    batches = np.array([64.0, 128, 256, 512])
    fit = fit_critical_batch([(b, 40.0 * math.exp(0.03 * (-1) ** i)) for i, b in enumerate(batches)])
    assert fit.edge == "below" and not fit.identified
    _unclaimed(fit.summary)
    assert "below the smallest batch size fitted (64)" in fit.summary
    assert fit.unidentified_because()[-1].startswith("its 90% interval 0–")


def test_an_unbounded_interval_is_said_to_be_unbounded() -> None:
    """Three noisy points that fit about anything: the summary says so instead of '∞ (CI 0–∞)'."""
    fit = fit_critical_batch([(16, 100.0), (32, 40.0), (64, 60.0)])
    assert fit.b_crit_ci[0] == 0.0 and math.isinf(fit.b_crit_ci[1]) and not fit.identified
    _unclaimed(fit.summary)
    assert "its 90% interval is 0–∞: any value fits the data" in fit.summary


def test_a_b_crit_inside_the_batch_sizes_with_a_bounded_interval_is_identified() -> None:
    fit = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES, 0.05, seed=2), strict=True)))
    assert fit.identified and fit.unidentified_because() == []
    assert fit.summary.startswith(f"B_crit ≈ {fit.b_crit:.3g} (90% CI ")


@pytest.mark.parametrize(("batches", "sigma"), [(BATCHES, 0.1), (BATCHES[1:7], 0.3)])
def test_the_derived_intervals_cover_the_truth_about_90_percent_of_the_time(batches: np.ndarray, sigma: float) -> None:
    # S(B) inside the batch sizes fitted, at their top (where B_crit matters most), and E_min = S_min·B_crit
    fits = [fit_critical_batch(list(zip(batches, _steps(batches, sigma, seed), strict=True))) for seed in range(150)]
    for b in (50.0, float(batches.max())):
        truth = S_MIN * (1 + B_CRIT / b)
        cover = np.mean([lo <= truth <= hi for lo, hi in (f.steps_ci(b) for f in fits)])
        assert 0.85 <= cover <= 0.97, (b, cover)
    e_cover = np.mean([f.e_min_ci[0] <= S_MIN * B_CRIT <= f.e_min_ci[1] for f in fits])
    assert 0.85 <= e_cover <= 0.97, e_cover
    assert all(f.steps_ci(50.0)[0] <= f.predict_steps(50.0) <= f.steps_ci(50.0)[1] for f in fits)
    assert all(f.e_min_ci[0] <= f.e_min <= f.e_min_ci[1] for f in fits)


def test_the_joint_region_gives_the_s_min_interval_its_own_profile_gives() -> None:
    # two computations of one interval: the region's range of ln S_min against _s_min_interval's crossings
    fit = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES, 0.1, seed=1), strict=True)))
    _, a_lo, a_hi = fit._region()
    assert math.exp(a_lo.min()) == pytest.approx(fit.s_min_ci[0], rel=1e-3)
    assert math.exp(a_hi.max()) == pytest.approx(fit.s_min_ci[1], rel=1e-3)


def test_exact_points_of_one_run_each_get_an_interval_one_seeds_spread_wide() -> None:
    """A newcomer's fit through 3 points that lay near the curve said S_min 195 (119–273); their retrains reached
    the target in 92 steps. One run per batch size is no more certain than a seed moves its steps (STEP_NOISE)."""
    points = list(zip(BATCHES, _steps(BATCHES), strict=True))
    fit = fit_critical_batch(points)
    lo, hi = fit.b_crit_ci
    assert lo < B_CRIT < hi and 1.1 < hi / lo < 3
    assert fit.s_min_ci[0] < S_MIN < fit.s_min_ci[1]
    assert fit.steps_ci(50.0)[0] < S_MIN * 3 < fit.steps_ci(50.0)[1]
    # and the same points, told that the runs are exact, collapse to the estimate (below)
    assert fit_critical_batch(points, step_noise=0.0).b_crit_ci == pytest.approx((B_CRIT, B_CRIT), rel=1e-6)
    # points scattered by one seed's spread (0.1 in ln S) are covered about as often as the confidence says
    rng = np.random.default_rng(0)
    covered = [
        (f := fit_critical_batch([(b, s * math.exp(rng.normal(0, STEP_NOISE))) for b, s in points])).b_crit_ci[0]
        <= B_CRIT
        <= f.b_crit_ci[1]
        for _ in range(200)
    ]
    assert 0.84 <= np.mean(covered) <= 0.99


def test_derived_intervals_collapse_on_exact_data_and_stay_finite_where_b_crit_is_open() -> None:
    exact = fit_critical_batch(list(zip(BATCHES, _steps(BATCHES), strict=True)), step_noise=0.0)
    assert exact.steps_ci(50.0) == pytest.approx((S_MIN * 3, S_MIN * 3), rel=1e-6)
    assert exact.e_min_ci == pytest.approx((S_MIN * B_CRIT, S_MIN * B_CRIT), rel=1e-6)
    assert exact.samples_ci(50.0) == pytest.approx((50 * S_MIN * 3, 50 * S_MIN * 3), rel=1e-6)
    # still S ∝ 1/B: B_crit open above, but the samples to the target (E = 6400) are pinned down
    noise = np.exp(np.random.default_rng(2).normal(0.0, 0.05, 4))
    linear = fit_critical_batch([(b, 6400 / b * z) for b, z in zip((2, 4, 8, 16), noise, strict=True)])
    assert math.isinf(linear.b_crit_ci[1])
    lo, hi = linear.e_min_ci
    assert 0 < lo < 6400 < hi < 2 * 6400
    s_lo, s_hi = linear.steps_ci(8.0)
    assert s_lo < 800 < s_hi < 2 * 800


def test_a_measurement_with_several_seeds_per_batch_size_counts_runs_and_batch_sizes_apart() -> None:
    """A newcomer's `bstune crit` said "from 7 batch sizes 16–1024" for 4 batch sizes at 2 seeds, and "1 batch
    size that did not reach it (1024)" where the other seed at 1024 did."""
    runs = [(16, 1000), (16, 1100), (64, 300), (64, 320), (256, 120), (256, 110), (1024, 60)]
    points = [BatchPoint(b, s, s * b, 0.1, False) for b, s in runs] + [BatchPoint(1024, 80, 80 * 1024, 0.1, True)]
    summary = fit_critical_batch(points).summary
    assert "from 7 runs at 4 batch sizes 16–1024 that reached the target" in summary
    assert "1 run at batch size 1024 that did not reach it only bound the fit" in summary
    one_each = fit_critical_batch([(b, s) for b, s in runs[::2]]).summary
    assert "from 4 batch sizes 16–1024" in one_each


def test_the_next_step_past_trials_above_the_fit_that_missed_points_at_their_rates() -> None:
    """A reviewer: "run trials at batch sizes above 119" where trials at 684 and 906 had run and missed."""
    points = [(b, 6400 / b * f) for b, f in zip((2, 4, 8, 16), (1.02, 0.97, 1.03, 0.98), strict=True)]
    fit = fit_critical_batch([*points, BatchPoint(64, 300.0, 19200.0, 0.5, lower_bound=True)])
    assert fit.edge == "above"
    assert fit.next_step().startswith(
        "trials above 16 ran without reaching the target (B=64 after 300 steps at lr 0.5)"
    )
    assert "larger batch_size.max" not in fit.summary
