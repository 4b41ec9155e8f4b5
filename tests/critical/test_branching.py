"""The direct measurement: branches from checkpoints, the rate search, the fits and their intervals.

The branches run on a closed form where S(B) is known exactly: from segment k, a branch at
batch B and rate η needs E_k(B)·p(η/η*(B)) samples, E_k(B) = E_min,k (1 + B/B_crit,k) (the
McCandlish model), p a penalty for a rate off the best one, times a few per cent of seed
noise. The measurement must recover every B_crit,k, and the whole run's
ΣE_min,k / ΣS_min,k, inside its intervals. The reference run is real training (a tiny
regression).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import bstune
from bstune.critical import BranchSettings, measure_critical_batch
from bstune.critical._branches import batch_ladder
from bstune.errors import ConfigError, EstimationError

B_CRIT = (30.0, 100.0, 300.0)  # per segment: B_crit grows over training
E_MIN = (2_000.0, 5_000.0, 12_000.0)
LADDER = [4, 16, 64, 256, 1024]


def _task() -> bstune.Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=gen)
    y = x @ torch.ones(8, 1) + 0.5 * torch.randn(2048, 1, generator=gen)
    return bstune.Task(
        model=lambda: nn.Linear(8, 1),
        train_data=(x, y),
        val_data=(x[:128], y[:128]),
        loss=nn.MSELoss(),
        optimizer=bstune.OptimizerSpec("sgd"),
        name="tiny_linreg",
    )


class ClosedForm:
    """Samples to the target from segment k at (B, η): E_k(B)·(1 + (ln(η/η*))²)·seed noise."""

    def __init__(self, best_factor: float = 3.0, noise: float = 0.04, draw: int = 0) -> None:
        self.best_factor, self.noise, self.draw = best_factor, noise, draw
        self.calls: list[tuple[int, int, float, int, int]] = []

    def __call__(
        self, segment: int, model: nn.Module, batch: int, lr: float, seed: int, target: float, cap: int, every: int
    ) -> tuple[float, int, bool, str]:
        self.calls.append((segment, batch, lr, seed, cap))
        rule = _rule(batch)
        if segment == len(E_MIN):  # the whole run, from initialisation to the last target
            penalty = 1 + math.log(lr / (self.best_factor * rule)) ** 2
            jitter = math.exp(random.Random(f"{self.draw}-whole-{batch}-{seed}").gauss(0, self.noise))
            need = sum(e * (1 + batch / b) for e, b in zip(E_MIN, B_CRIT, strict=True)) * penalty * jitter
            return (
                (float(cap), cap, False, "completed")
                if need > cap
                else (need, math.ceil(need / batch) * batch, True, "stopped")
            )
        penalty = 1 + math.log(lr / (self.best_factor * rule)) ** 2
        jitter = math.exp(random.Random(f"{self.draw}-{segment}-{batch}-{seed}").gauss(0, self.noise))
        need = E_MIN[segment] * (1 + batch / B_CRIT[segment]) * penalty * jitter
        if need > cap:
            return float(cap), cap, False, "completed"
        return need, math.ceil(need / batch) * batch, True, "stopped"


B_NOISE, REF_BATCH, REF_LR = 50.0, 8, 0.05


def _rule(batch: int) -> float:
    """The rule the measurement tests, told B_NOISE: η_ref·s(B)/s(B_ref), s(B) = 1/(1/B + 1/B_noise) (SGD: α = 1)."""
    return REF_LR * (1 / (1 / batch + 1 / B_NOISE)) / (1 / (1 / REF_BATCH + 1 / B_NOISE))


def _measure(runner: ClosedForm, **changes: object) -> bstune.critical.CriticalBatchMeasurement:
    config = bstune.TrainConfig(batch_size=REF_BATCH, lr=REF_LR, max_samples=4096, device="cpu")
    settings = BranchSettings(**{"checkpoints": (0.0, 0.25, 0.5), "max_cost": 50.0, **changes})  # type: ignore[arg-type]
    return measure_critical_batch(_task(), config, settings, ladder=LADDER, runner=runner, b_noise=B_NOISE)


# the whole run: S(B) = Σ_k (S_min,k + E_min,k/B), so B_crit = Σ E_min,k / Σ S_min,k
WHOLE = sum(E_MIN) / sum(e / b for e, b in zip(E_MIN, B_CRIT, strict=True))


def _estimates(m: bstune.critical.CriticalBatchMeasurement) -> list[tuple[float, tuple[float, float], float]]:
    """(estimate, interval, truth) for every segment and the whole run."""
    fits = [(s.fit, t) for s, t in zip(m.segments, B_CRIT, strict=True)] + [(m.whole, WHOLE)]
    assert all(f is not None and f.identified for f, _ in fits), [s.error for s in m.segments]
    return [(f.b_crit, f.b_crit_ci, t) for f, t in fits if f is not None]


def test_without_seed_noise_every_segments_b_crit_and_the_whole_runs_are_exact() -> None:
    m = _measure(ClosedForm(noise=0.0))
    assert [s.index for s in m.segments] == [0, 1, 2]
    assert [(s.start_samples, s.end_samples) for s in m.segments] == [(0, 1024), (1024, 2048), (2048, 4096)]
    for estimate, (lo, hi), truth in _estimates(m):
        assert estimate == pytest.approx(truth, rel=1e-3)
        assert lo * (1 - 1e-6) <= truth <= hi * (1 + 1e-6)
    assert m.b_crit == pytest.approx(WHOLE, rel=1e-3)
    # the reference's training loss falls segment to segment: each target is the next start
    m = _measure(ClosedForm())
    assert m.final_loss < m.segments[0].start_loss
    assert [s.target_loss for s in m.segments[:-1]] == [s.start_loss for s in m.segments[1:]]


@pytest.mark.slow
def test_with_seed_noise_the_intervals_cover_the_truth_at_about_their_level() -> None:
    """4% seed noise, 2 seeds: 30 measurements x 4 intervals at 90%; coverage >= 85%, estimates within 25%."""
    covered, close, n = 0, 0, 0
    for draw in range(30):
        for estimate, (lo, hi), truth in _estimates(_measure(ClosedForm(draw=draw))):
            covered += lo <= truth <= hi
            close += abs(estimate / truth - 1) < 0.25
            n += 1
    assert covered / n >= 0.85, (covered, n)
    assert close == n


def test_the_tolerance_batch_is_the_largest_within_it_of_the_cheapest() -> None:
    m = _measure(ClosedForm(noise=0.0), tolerance=0.2)
    # segment 1, B_crit 100: E(B)/E(4) = (1 + B/100)/1.04 is 1.12 at 16 and 1.58 at 64
    assert m.segments[1].b_tolerance == 16
    # segment 2, B_crit 300: 1.04 at 16, 1.20 at 64 (just over: (1 + 64/300)/(1 + 4/300) = 1.197)
    assert m.segments[2].b_tolerance == 64


def test_the_rate_search_walks_to_the_best_rate_at_the_first_seed_and_reuses_it_at_the_others() -> None:
    runner = ClosedForm(best_factor=8.0, noise=0.0)
    m = _measure(runner, seeds=3)
    seeds = sorted({s for _, _, _, s, _ in runner.calls})
    assert len(seeds) == 3 and 0 not in seeds  # never the reference's seed
    lowest = [c for c in runner.calls if c[0] == 1 and c[1] == 4 and c[3] == seeds[0]]
    factors = [round(lr / _rule(4), 6) for _, _, lr, _, _ in lowest]
    assert factors == [1.0, 2.0, 4.0, 8.0, 16.0]  # doubling while it improves, one past the best
    # the next batch size up starts from the factor found below it: 8x and 16x its rule, then 4x
    first = [c for c in runner.calls if c[0] == 1 and c[1] == 16 and c[3] == seeds[0]]
    assert [round(lr / _rule(16), 6) for _, _, lr, _, _ in first] == [8.0, 16.0, 4.0]
    for seed in seeds[1:]:
        others = [c for c in runner.calls if c[0] == 1 and c[1] == 16 and c[3] == seed]
        assert [round(lr / _rule(16), 6) for _, _, lr, _, _ in others] == [8.0]
    # a later rate is capped at what the best so far needed (16x after 8x: 8x's exact need, rounded up)
    assert first[1][4] == math.ceil(E_MIN[1] * (1 + 16 / 100))
    # and the point kept at (16, seed) is the best rate's
    kept = [p for p in m.segments[1].points if p.batch_size == 16]
    assert all(p.lr == pytest.approx(8 * _rule(16)) for p in kept)


def test_batch_sizes_that_never_reach_the_target_are_lower_bounds_and_the_cost_counts_everything() -> None:
    m = _measure(ClosedForm(), max_cost=8.0)
    seg = m.segments[0]  # B_crit 30: B = 256 needs 20x the segment's 1024 samples, the cap is 8x
    censored = [p for p in seg.points if p.lower_bound]
    assert {p.batch_size for p in censored} == {256, 1024}
    assert all(p.samples == 8 * 1024 for p in censored)
    assert seg.fit is not None and 1024 in seg.fit.censored_batches
    assert any(p.lower_bound for p in m.whole_points)
    spent = sum(b.spent for b in m.branches)
    assert m.cost_samples >= spent + 4096  # branches, the reference, the B_simple measurements
    assert m.cost_budgets == pytest.approx(m.cost_samples / 4096)


def test_the_trajectory_carries_b_simple_and_the_report_dict_is_plain_json() -> None:
    import json

    m = _measure(ClosedForm())
    assert all(math.isfinite(s.b_simple) and s.b_simple_ci[0] <= s.b_simple <= s.b_simple_ci[1] for s in m.segments)
    data = json.loads(json.dumps(m.to_dict()))
    assert data["whole"]["identified"] is True
    assert [s["index"] for s in data["segments"]] == [0, 1, 2]
    assert "B_crit over training" in data["summary"] and "cost" in data["summary"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"checkpoints": (0.1, 0.5)}, "checkpoints"),
        ({"checkpoints": (0.0, 0.5, 0.5)}, "checkpoints"),
        ({"seeds": 1}, "seeds"),
        ({"max_cost": 1.0}, "max_cost"),
        ({"rung_factor": 3}, "rung_factor"),
        ({"lr_factors": ()}, "lr_factors"),
    ],
)
def test_bad_settings_name_their_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BranchSettings(**changes)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_ladder_with_too_few_batch_sizes_is_refused() -> None:
    config = bstune.TrainConfig(batch_size=8, lr=0.05, max_samples=1024, device="cpu")
    with pytest.raises(ConfigError, match="ladder"):
        measure_critical_batch(_task(), config, ladder=[8, 16], runner=ClosedForm())


def test_the_default_ladder_spans_the_b_simple_values_within_the_batch_range() -> None:
    assert batch_ladder([10.0, 80.0], ref=8, low=1, high=4096, factor=4, max_rungs=6) == [2, 8, 32, 128, 512]
    assert batch_ladder([10.0, 80.0], ref=8, low=8, high=64, factor=4, max_rungs=6) == [
        8,
        16,
        32,
        64,
    ]  # 2x when 4x is too few
    assert batch_ladder([math.inf], ref=64, low=1, high=4096, factor=4, max_rungs=3) == [16, 64, 256]
    assert len(batch_ladder([1.0, 1e6], ref=8, low=1, high=2**20, factor=4, max_rungs=5)) == 5


def test_with_a_target_loss_the_reference_runs_until_it_and_the_whole_run_is_measured_to_it() -> None:
    # a slow rate, so that the reference's loss still falls over its budget
    config = bstune.TrainConfig(batch_size=REF_BATCH, lr=0.003, max_samples=4096, device="cpu")
    settings = BranchSettings(checkpoints=(0.0, 0.25, 0.5), max_cost=50.0)

    def measure(**kw: object) -> bstune.critical.CriticalBatchMeasurement:
        return measure_critical_batch(
            _task(), config, settings, ladder=LADDER, runner=ClosedForm(noise=0.0), b_noise=B_NOISE, **kw
        )

    free = measure()  # the reference's own loss at the end of its 4096 samples
    target = free.segments[2].start_loss  # its loss about halfway, where the same run reaches it again
    m = measure(target_loss=target)
    assert m.final_loss == target and m.segments[-1].target_loss == target
    ran = m.segments[-1].end_samples
    assert 1024 < ran < 4096 and ran % 128 == 0, ran  # stopped at the chunk where the loss reached the target
    starts = [s.start_samples for s in m.segments]
    assert starts[0] == 0 and all(abs(a - c * ran) <= 64 for a, c in zip(starts, (0.0, 0.25, 0.5), strict=True))
    with pytest.raises(EstimationError, match="did not reach the target loss"):
        measure(target_loss=1e-6)


class PerSegmentBest(ClosedForm):
    """The best rate differs by segment (8x, 1x, 2x the rule) and is 4x for the whole run."""

    BEST = (8.0, 1.0, 2.0, 4.0)

    def __call__(
        self, segment: int, model: nn.Module, batch: int, lr: float, seed: int, target: float, cap: int, every: int
    ) -> tuple[float, int, bool, str]:
        self.best_factor = self.BEST[segment]
        return super().__call__(segment, model, batch, lr, seed, target, cap, every)


def test_the_whole_run_is_branched_from_initialisation_at_one_rate_per_batch_size() -> None:
    """As a sweep's constant-rate runs: summing the segments (each from the reference) would not be."""
    runner = PerSegmentBest(noise=0.0)
    m = _measure(runner)
    whole_calls = [c for c in runner.calls if c[0] == 3]
    assert {c[1] for c in whole_calls} == set(LADDER)
    assert all(c[4] <= 50 * 4096 for c in whole_calls)  # capped at max_cost x the reference's samples
    for p in m.whole_points:
        assert p.lr == pytest.approx(4.0 * _rule(p.batch_size))  # its own search found its own best
        need = sum(e * (1 + p.batch_size / b) for e, b in zip(E_MIN, B_CRIT, strict=True))
        assert p.lower_bound == (need > 50 * 4096)
        if not p.lower_bound:
            assert p.samples == pytest.approx(need, rel=1e-9)
    assert m.whole is not None and m.whole.b_crit == pytest.approx(WHOLE, rel=1e-3)
    # each segment's own fit uses its own best rate
    for seg, best in zip(m.segments, PerSegmentBest.BEST, strict=False):
        assert all(pt.lr == pytest.approx(best * _rule(pt.batch_size)) for pt in seg.points if not pt.lower_bound)


def test_a_measurement_with_several_seeds_per_batch_size_needs_no_floor_under_its_interval() -> None:
    """The floor of one seed's spread is for one run per batch size: several seeds' residuals hold their own
    scatter, and a floor of 0.1 over the char LMs' 0.03 made the measurement's intervals 1.37x wide, not 1.10x
    (a reviewer's simulation)."""
    from bstune.analysis import STEP_NOISE, BatchPoint, fit_critical_batch
    from bstune.critical._branching import _fit_or_error

    rng = random.Random(0)
    points = [
        BatchPoint(b, s, s * b, 0.1)
        for b in (8, 16, 32, 64, 128, 256)
        for s in [300 * (1 + 64 / b) * math.exp(rng.gauss(0, 0.03)) for _ in range(3)]
    ]
    fit, error = _fit_or_error(points, 0.9)
    assert error is None and fit is not None and fit.step_noise == 0.0
    assert fit.b_crit_ci == fit_critical_batch(points, step_noise=0.0).b_crit_ci
    assert fit.b_crit_ci != fit_critical_batch(points, step_noise=STEP_NOISE).b_crit_ci
    one_seed, _ = _fit_or_error(points[::3], 0.9)
    assert one_seed is not None and one_seed.step_noise == STEP_NOISE
