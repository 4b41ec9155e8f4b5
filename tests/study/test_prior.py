"""The prior's formulas against the relations they come from (McCandlish et al. 2018)."""

from __future__ import annotations

import math

import pytest

from bstune.records import ProbeResult
from bstune.study import Prior
from bstune.study._prior import _band


def _prior(**kw: object) -> Prior:
    args: dict[str, object] = dict(
        b_noise=200.0,
        b_ref=32,
        lr_ref=0.1,
        alpha=1.0,
        batch_low=50,
        batch_high=800,
        lr_width=3.0,
        lr_min=1e-6,
        lr_max=1e3,
        momentum_ref=0.0,
    )
    return Prior(**(args | kw))  # type: ignore[arg-type]


def test_sgd_rule_is_eps_max_over_one_plus_bnoise_over_b() -> None:
    """ε_opt(B) = ε_max / (1 + B_noise/B): the product ε_opt(B)·(1 + B_noise/B) is one constant."""
    p = _prior()
    eps_max = [p.lr_rule(b) * (1 + p.b_noise / b) for b in (4, 32, 200, 5_000, 10**6)]
    assert max(eps_max) == pytest.approx(min(eps_max), rel=1e-12)
    assert eps_max[0] == pytest.approx(0.1 * (1 + 200 / 32))  # anchored at the probe: η*(B_ref) = η_ref


def test_linear_below_bnoise_and_flat_above() -> None:
    p = _prior()
    assert p.lr_rule(2) / p.lr_rule(1) == pytest.approx(2.0, rel=0.01)  # Goyal et al. linear scaling
    assert p.lr_rule(2 * 10**6) / p.lr_rule(10**6) == pytest.approx(1.0, rel=1e-3)
    assert p.lr_rule(200) / p.lr_rule(100) == pytest.approx((1 + 200 / 100) / (1 + 200 / 200))


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0])
def test_adam_rule_grows_as_b_to_the_alpha_below_bnoise(alpha: float) -> None:
    p = _prior(alpha=alpha, b_noise=1e9)
    assert p.lr_rule(4 * 32) / p.lr_rule(32) == pytest.approx(4**alpha, rel=1e-6)


def test_momentum_keeps_the_effective_step() -> None:
    p = _prior(momentum_ref=0.9)
    base = p.lr_rule(100)
    assert p.lr_rule(100, momentum=0.9) == pytest.approx(base)
    assert p.lr_rule(100, momentum=0.0) / (1 - 0.0) == pytest.approx(base / (1 - 0.9))  # η/(1−m) preserved


def test_large_batch_ceiling_caps_the_flat_part() -> None:
    p = _prior(lr_cap=0.3)
    assert p.lr_rule(10**6) == pytest.approx(0.3)
    assert p.lr_rule(32) == pytest.approx(0.1)  # below the cap the rule is untouched


def test_coordinates_span_the_band_and_the_lr_width() -> None:
    p = _prior(batch_round=8)
    assert p.batch_at(0.0) == 56 and p.batch_at(1.0) == 800  # 50 rounds up to the multiple 56
    assert all(b % 8 == 0 for b in (p.batch_at(u / 10) for u in range(11)))
    lo, hi = p.v_range
    assert (lo, hi) == pytest.approx((-math.log(3), math.log(3)))
    assert p.lr_at(100, hi) == pytest.approx(3 * p.lr_rule(100))
    assert p.lr_at(100, 50.0) == 1e3  # clipped to the space's lr.max


@pytest.mark.parametrize(
    ("center", "width", "floor", "cap", "expected"),
    [
        (100, 4, 2, 10_000, (25, 400)),  # centred
        (5_000, 4, 2, 1_000, (62, 1_000)),  # pushed down by the dataset or memory, width kept
        (1, 4, 8, 1_000, (8, 128)),  # pushed up by the space's minimum
        (100, 4, 2, 60, (4, 60)),
    ],  # cap below the centre: 60/4² = 3.75, rounded
)
def test_band_keeps_its_width_when_pushed(
    center: float, width: float, floor: int, cap: int, expected: tuple[int, int]
) -> None:
    assert _band(center, width, floor, cap, 1) == expected


def _probe(ceiling_small: float, ceiling_large: float, large_batch: int, b_simple: float = 200.0) -> ProbeResult:
    return ProbeResult(
        batch_size=64,
        lr_ceiling=ceiling_small,
        lr_ceiling_large=ceiling_large,
        large_batch=large_batch,
        lr_probe=0.05,
        b_simple=b_simple,
        b_simple_ci=(0.75 * b_simple, 1.3 * b_simple),
        trajectory=[],
        temperature=1e-3,
        throughput={},
        batch_ceiling=None,
        samples_used=0,
    )


_FROM_PROBE = dict(
    family="sgd", adam_alpha=0.5, batch_width=4.0, lr_width=3.0, batch_min=8, batch_cap=4096,
    lr_min=1e-6, lr_max=10.0, momentum_ref=0.9,
)  # fmt: skip


@pytest.mark.parametrize("anchor", [0.25, 0.5, 1.0])
def test_rule_is_anchored_at_lr_anchor_of_the_large_batch_ceiling(anchor: float) -> None:
    prior = Prior.from_probe(_probe(0.8, 1.6, 512), lr_anchor=anchor, **_FROM_PROBE)  # type: ignore[arg-type]
    assert prior.b_ref == 512 and prior.lr_ref == pytest.approx(anchor * 1.6)
    assert prior.lr_rule(512) == pytest.approx(anchor * 1.6)
    # and the rest of the rule follows eps_max / (1 + B_noise / B) from there
    assert prior.lr_rule(32) / prior.lr_rule(512) == pytest.approx((1 + 200 / 512) / (1 + 200 / 32))


def test_without_a_large_batch_the_rule_falls_back_to_the_probe_batch() -> None:
    prior = Prior.from_probe(_probe(0.8, 0.8, 64), lr_anchor=0.25, **_FROM_PROBE)  # type: ignore[arg-type]
    assert (prior.b_ref, prior.lr_ref, prior.lr_cap) == (64, pytest.approx(0.2), None)


def test_default_anchor_is_a_quarter_of_the_ceiling() -> None:
    from bstune.space import PriorSettings

    prior = Prior.from_probe(_probe(0.8, 1.6, 512), **_FROM_PROBE)  # type: ignore[arg-type]
    assert prior.lr_ref == pytest.approx(PriorSettings().lr_anchor * 1.6) == pytest.approx(0.4)


def test_for_space_takes_every_setting_from_the_space() -> None:
    from bstune.space import SearchSpace

    space = SearchSpace.from_dict(
        {
            "name": "s",
            "optimizer": {"family": "adam"},
            "batch_size": {"min": 16, "max": 1024},
            "lr": {"min": 1e-4, "max": 0.5},
            "prior": {
                "batch_width": 2, "lr_width": 5, "adam_alpha": 0.75, "lr_anchor": 0.1, "batch_round": 8,
                "lr_search_width": 50, "weight": 1.5, "batch_top": 0.5,
            },
        }
    )  # fmt: skip
    p = Prior.for_space(_probe(0.8, 1.6, 512), space, batch_cap=700)
    assert (p.alpha, p.lr_width, p.lr_min, p.lr_max, p.batch_round) == (0.75, 5.0, 1e-4, 0.5, 8)
    assert (p.lr_search_width, p.weight, p.batch_range) == (50.0, 1.5, (16, 700))
    assert p.lr_ref == pytest.approx(0.1 * 1.6)
    assert p.batch_low >= 16 and p.batch_high <= 700 and p.batch_low % 8 == 0
    assert (p.batch_low, p.batch_high) == (
        32,
        96,
    )  # B_noise 200 × batch_top 0.5 = 100, / 2²: 25 .. 100, in multiples of 8


# -- the soft prior: the search reaches the whole space, the prior draws a decaying share --------------
def test_the_band_top_sets_how_much_work_a_sample_does_there() -> None:
    """At a fixed sample budget a sample at B does 1/(1 + B/B_noise) of its work at B -> 0 (E = E_min(1 + B/B_noise),
    McCandlish et al. 2018): the default band [B_noise/16, B_noise] spans 94% down to 50%; batch_top 1/4 gives
    [B_noise/64, B_noise/4], 98.5% down to 80%."""
    p = Prior.from_probe(_probe(0.8, 1.6, 512, b_simple=2000.0), **_FROM_PROBE)  # type: ignore[arg-type]
    assert (p.batch_low, p.batch_high) == (125, 2000)
    assert 1 / (1 + p.batch_high / p.b_noise) == pytest.approx(0.5)
    low = Prior.from_probe(_probe(0.8, 1.6, 512, b_simple=6400.0), batch_top=0.25, **_FROM_PROBE)  # type: ignore[arg-type]
    assert (low.batch_low, low.batch_high) == (100, 1600)
    assert 1 / (1 + low.batch_high / low.b_noise) == pytest.approx(0.8)
    assert 1 / (1 + low.batch_low / low.b_noise) == pytest.approx(0.985, abs=1e-3)
    wide = Prior.from_probe(_probe(0.8, 1.6, 512, b_simple=6400.0), **_FROM_PROBE)  # type: ignore[arg-type]
    assert (wide.batch_low, wide.batch_high) == (256, 4096)  # B_noise/16 .. B_noise, slid under the batch cap


def test_the_search_reaches_every_batch_size_of_the_space_and_the_band_lies_inside() -> None:
    p = Prior.from_probe(_probe(0.8, 1.6, 512), **_FROM_PROBE)  # type: ignore[arg-type]
    assert p.batch_range == (8, 4096) and (p.batch_low, p.batch_high) == (12, 200)
    assert (p.batch_at(0.0), p.batch_at(1.0)) == (8, 4096)
    u_lo, u_hi = p.band_coords
    assert 0.0 < u_lo < u_hi < 1.0
    assert (p.batch_at(u_lo), p.batch_at(u_hi)) == (12, 200)
    assert p.coord_of(p.batch_at(0.37)) == pytest.approx(0.37, abs=1 / 512)  # the inverse, up to rounding


def test_the_search_reaches_lr_search_width_around_the_rule_and_the_draws_lr_width() -> None:
    p = _prior(lr_search_width=30.0)
    assert p.v_range == pytest.approx((-math.log(30), math.log(30)))
    assert p.band_v_range == pytest.approx((-math.log(3), math.log(3)))
    assert p.lr_at(100, p.v_range[1]) == pytest.approx(30 * p.lr_rule(100))
    assert _prior().v_range == p.band_v_range  # a prior built by hand without one: the draws' width


def test_the_first_weight_trials_are_prior_draws_then_their_share_decays_as_weight_over_n() -> None:
    p = _prior(weight=3.0)
    for seed in range(5):
        assert [p.from_prior(n, seed) for n in range(3)] == [True, True, True]
    # the share at n is 3/(n+1): over n in [300, 1200) the expected count is 3 (H_1200 - H_300) ~ 4.16 per
    # seed; 200 seeds: ~832, with a binomial standard deviation ~28
    drawn = sum(p.from_prior(n, seed) for seed in range(200) for n in range(300, 1200))
    expected = 200 * 3 * sum(1 / (n + 1) for n in range(300, 1200))
    assert abs(drawn - expected) < 4 * math.sqrt(expected)
    assert [p.from_prior(n, 7) for n in range(50)] == [p.from_prior(n, 7) for n in range(50)]  # no state
    assert not any(_prior(weight=0.0).from_prior(n, 0) for n in range(100))


def test_prior_draws_fill_the_band_and_the_rules_width() -> None:
    p = Prior.from_probe(_probe(0.8, 1.6, 512), **_FROM_PROBE)  # type: ignore[arg-type]
    draws = [p.draw(n, seed=0) for n in range(400)]
    batches = [p.batch_at(d["batch_coord"]) for d in draws]
    assert min(batches) == 12 and max(batches) >= 190 and max(batches) <= 200
    assert sum(b < 50 for b in batches) == pytest.approx(200, abs=40)  # log-uniform: 12..50..200 halves
    v = [d["lr_coord"] for d in draws]
    assert min(v) >= -math.log(3) and max(v) <= math.log(3) and max(v) - min(v) > 2
    assert p.draw(5, seed=0) == p.draw(5, seed=0) != p.draw(5, seed=1)
