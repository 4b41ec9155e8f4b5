"""The learning-rate table: linear below B_crit, flat above, √-like for Adam."""

from __future__ import annotations

import math

import pytest

from bstune.analysis import fit_critical_batch, lr_table
from bstune.errors import ConfigError


def test_linear_well_below_b_crit_and_flat_well_above() -> None:
    table = dict(lr_table(1e4, best_batch=32, best_lr=0.1, batch_sizes=[16, 32, 64, 128]))
    assert table[32] == 0.1 and table[64] / table[32] == pytest.approx(2, rel=0.01)
    assert table[16] == pytest.approx(0.05, rel=0.01)
    flat = dict(lr_table(10.0, best_batch=1000, best_lr=0.5, batch_sizes=[1000, 100_000]))
    assert flat[100_000] == pytest.approx(0.5, rel=0.01)
    # the knee: at B = B_crit the rate is half its ceiling η_best·s(∞)/s(B_best)
    fit = fit_critical_batch([(b, 10 * (1 + 256 / b)) for b in (16, 64, 256, 1024)])
    knee = dict(lr_table(fit, 16, 0.1, [256, 10**9]))
    assert knee[256] == pytest.approx(knee[10**9] / 2, rel=1e-4)


def test_edges_and_adam() -> None:
    [(b, lr)] = lr_table(math.inf, 32, 0.1, [128])
    assert b == 128 and lr == pytest.approx(0.4)
    assert lr_table(0.0, 32, 0.1, [128]) == [(128, 0.1)]
    sgd, adam = lr_table(1e6, 32, 0.1, [128]), lr_table(1e6, 32, 1e-3, [128], family="adam", alpha=0.5)
    assert sgd[0][1] == pytest.approx(0.4, rel=1e-3) and adam[0][1] == pytest.approx(2e-3, rel=1e-3)  # √4


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        lr_table(100.0, 32, 0.1, [64], alpha=0.5)  # SGD's rule is linear
    with pytest.raises(ConfigError, match="family"):
        lr_table(100.0, 32, 0.1, [64], family="lion")
    with pytest.raises(ConfigError, match="B_crit"):
        lr_table(-1.0, 32, 0.1, [64])
    with pytest.raises(ConfigError, match="batch_sizes"):
        lr_table(100.0, 32, 0.1, [0])
