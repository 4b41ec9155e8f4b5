"""The ratio estimate and its interval: calibration on data with a known ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bstune.errors import ConfigError, EstimationError
from bstune.noise import ratio_interval, summarize


@pytest.mark.parametrize("method", ["fieller", "jackknife"])
@pytest.mark.parametrize(("n", "g_noise"), [(10, 0.3), (30, 0.6)])
def test_interval_covers_the_true_ratio_at_its_level(method: str, n: int, g_noise: float) -> None:
    rng = np.random.default_rng(1)
    true_t, true_g = 100.0, 1.0
    covered, reps = 0, 2000
    for _ in range(reps):
        g = true_g + g_noise * rng.standard_normal(n)
        t = true_t + 0.3 * true_t * rng.standard_normal(n) + 20 * (g - true_g)  # correlated, as in practice
        _, (lo, hi) = ratio_interval(t, g, confidence=0.9, method=method)  # type: ignore[arg-type]
        covered += lo <= true_t / true_g <= hi
    coverage = covered / reps
    if method == "fieller":
        assert 0.87 <= coverage <= 0.93, coverage
    else:  # the jackknife is symmetric and under-covers a skewed ratio; it must still be in the right region
        assert 0.80 <= coverage <= 0.95, coverage


def test_unresolved_signal_gives_an_unbounded_interval() -> None:
    rng = np.random.default_rng(0)
    g = 0.01 + rng.standard_normal(8)  # |G|² indistinguishable from zero
    t = 10 + rng.standard_normal(8)
    _, (lo, hi) = ratio_interval(t, g)
    assert hi == math.inf
    assert lo >= 0


@pytest.mark.parametrize("method", ["fieller", "jackknife"])
def test_a_noise_trace_within_noise_of_zero_gives_an_interval_from_zero_not_below(method: str) -> None:
    """A newcomer's report gave B_simple 187.6 (90% CI -103.9 .. 953.7): a noise scale is a ratio of two
    non-negative quantities, so its interval ends at 0, while the interval above 0 stays as it was."""
    t = [5.0, -3.0, 8.0, -2.0, 4.0, 6.0, -4.0, 3.0]  # tr(Σ)'s per-batch estimates: unbiased, so some negative
    g = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0]
    ratio, (lo, hi) = ratio_interval(t, g, method=method)  # type: ignore[arg-type]
    assert lo == 0.0 < ratio < hi < math.inf
    wide = ratio_interval([x * 10 for x in t], g, method=method)[1]  # the same shape, well away from 0 at the top
    assert wide[0] == 0.0 and wide[1] == pytest.approx(10 * hi)
    below, (lo, hi) = ratio_interval([-x for x in t], g, method=method)  # tr(Σ)'s mean below 0: B_simple is 0
    assert below == 0.0 and lo <= below <= hi


def test_negative_mean_signal_reports_infinite_estimate() -> None:
    ratio, (lo, hi) = ratio_interval([5.0, 6.0, 5.5], [-1.0, -1.2, -0.9])
    assert ratio == math.inf and (lo, hi) == (0.0, math.inf)


def test_too_few_or_nonfinite_batches_raise() -> None:
    with pytest.raises(EstimationError):
        ratio_interval([1.0], [1.0])
    with pytest.raises(EstimationError):
        ratio_interval([1.0, math.nan], [1.0, 1.0])


def test_bad_settings_are_config_errors_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="bootstrap") as info:  # also where no signal skips the interval
        ratio_interval([5.0, 6.0, 5.5], [-1.0, -1.2, -0.9], method="bootstrap")  # type: ignore[arg-type]
    assert (info.value.source, info.value.field) == ("ratio_interval", "method")
    with pytest.raises(ConfigError, match=r"got 1\.5") as info:
        summarize([1.0, 3.0], [10.0, 50.0], batch_size=8, micro_batch_size=1, method="per_example", confidence=1.5)
    assert info.value.field == "confidence" and isinstance(info.value, ValueError)  # caught as before


def test_summary_separates_means_and_takes_ratio_last() -> None:
    est = summarize([1.0, 3.0], [10.0, 50.0], batch_size=8, micro_batch_size=1, method="per_example")
    assert est.grad_sq == 2.0 and est.trace_sigma == 30.0
    assert est.b_simple == 15.0  # mean(T)/mean(G), not mean(T/G) = 13.33
    assert est.n_examples == 16
    data = est.to_dict()
    assert data["b_simple"] == 15.0 and len(data["ci"]) == 2
