"""The probe's measurements against problems whose answers are known."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

import pytest
import torch

import bstune
import bstune.study._probe as probe_module
from bstune.errors import ConfigError
from bstune.study import ProbeResult, ProbeSettings, lr_range_test, run_probe
from bstune.study._probe_plan import THROUGHPUT_WARMUP, _ladder, ladder_plan, probe_cost
from bstune.study._range_test import large_batch_sweep
from bstune.study._throughput import measure_throughput, step_rate


def _regression(n: int = 4000, d: int = 8, seed: int = 0) -> bstune.Task:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = x @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n, generator=gen)
    return bstune.Task(
        model=lambda: torch.nn.Linear(d, 1, bias=False),
        train_data=(x, y[:, None]),
        val_data=(x[:200], y[:200, None]),
        loss=torch.nn.MSELoss(),
    )


def test_lr_range_test_finds_the_stability_edge_of_a_quadratic() -> None:
    """MSE on x ~ N(0, I): the Hessian is 2·E[xxᵀ] = 2I, so full-batch GD diverges above lr = 2/λ = 1."""
    task = _regression()
    ceiling, curve = lr_range_test(task, 2000, 1e-3, 10.0, 60, momentum=None, seed=0, device=torch.device("cpu"))
    assert 0.5 <= ceiling <= 2.0  # within ~2x of the edge, by design of the sweep
    assert curve[0][0] == pytest.approx(1e-3) and len(curve) < 60  # stopped once the loss blew up


def test_a_negative_loss_stops_the_range_test_with_an_error_not_a_ceiling_at_its_first_rates() -> None:
    """The stopping rule (twice the lowest loss) reads the loss against 0: a Gaussian NLL below 0 stopped the
    ramp within three steps, at a ceiling a hundred times too low."""
    task = dataclasses.replace(_regression(), loss=lambda out, y: torch.nn.functional.mse_loss(out, y) - 100.0)
    with pytest.raises(ConfigError, match=r"task.loss: the LR range test's loss went below 0 \(-9\d\.\d+\)"):
        lr_range_test(task, 200, 1e-3, 10.0, 60, momentum=None, seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize(("fits", "ceiling", "measured"), [(100, 64, [8, 32, 64]), (50, 32, [8, 32])])
def test_throughput_and_out_of_memory(fits: int, ceiling: int, measured: list[int]) -> None:
    """Rungs 8, 32, 128: 128 runs out of memory, so the cap (64) is measured too, unless it does as well."""
    task = _regression()
    rate, used, spread = measure_throughput(task, 64, 3, lr=0.01, seed=0, device=torch.device("cpu"))
    assert rate is not None and rate > 0 and used == 5 * 64
    assert spread is not None and spread[0] <= rate <= spread[1]

    class Hungry(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Linear(8, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and x.shape[0] > fits:  # training activations do not fit above `fits` examples
                raise torch.OutOfMemoryError("CUDA out of memory")
            return self.inner(x)

    hungry = bstune.Task(model=Hungry, train_data=task.train_data, val_data=task.val_data, loss=task.loss)
    assert measure_throughput(hungry, 128, 3, lr=0.01, seed=0, device=torch.device("cpu"))[0] is None
    probe = run_probe(
        hungry,
        ProbeSettings(batch_size=32, lr_steps=10, train_samples=640, throughput_steps=2),
        batch_min=8,
        batch_max=512,
        lr_min=1e-3,
        lr_max=1.0,
        seed=0,
        device="cpu",
    )
    assert probe.batch_ceiling == ceiling  # 128 (and 64) ran out of memory: the search stays at half of it
    assert sorted(probe.throughput) == measured  # the search's top measured, not the rung 4x below it


def test_probe_measures_the_noise_scale_of_linear_regression() -> None:
    task = _regression()
    probe = run_probe(
        task,
        ProbeSettings(lr_steps=20, train_samples=4000, throughput_steps=2),
        batch_min=8,
        batch_max=2048,
        lr_min=1e-3,
        lr_max=10.0,
        seed=0,
        device="cpu",
    )
    exact = bstune.exact_noise_scale(task, _trained_like_probe(task, probe))
    assert probe.b_simple_ci[0] <= exact.b_simple * 1.5 and exact.b_simple / 1.5 <= probe.b_simple_ci[1]
    assert probe.samples_used >= 4000 + 20 * probe.batch_size + 2 * 256  # the curvature's examples counted
    assert ProbeResult.from_dict(probe.to_dict()) == probe
    assert probe.lr_probe == pytest.approx(0.25 * probe.lr_ceiling)
    assert probe.run is None  # no trial budget: the run is the probe's own, not a trial
    # the reported interval is the sampling one widened by the trajectory's spread (issue #17)
    assert probe.b_simple_sampling_ci is not None and probe.b_simple_seed_spread is not None
    sampling = probe.b_simple_sampling_ci
    assert probe.b_simple_ci[0] <= sampling[0] and sampling[1] <= probe.b_simple_ci[1]
    assert probe.b_simple_ci != sampling
    # white inputs, no bias: H = 2I, so the curvature-aware B_noise is B_simple, measured beside it
    assert probe.curvature is not None and probe.curvature["n_examples"] == 256
    assert probe.b_noise is not None and probe.b_noise_ci is not None
    assert probe.b_noise_ci[0] <= exact.b_simple <= probe.b_noise_ci[1]


# a result.json's probe written before the sampling interval and the curvature B_noise were kept
OLD_PROBE: dict[str, Any] = {
    "batch_size": 32, "lr_ceiling": 1.0, "lr_ceiling_large": 2.0, "large_batch": 256, "lr_probe": 0.25,
    "b_simple": 120.0, "b_simple_ci": [100.0, None], "trajectory": [], "temperature": 0.01,
    "throughput": {"32": 1000.0}, "batch_ceiling": None, "samples_used": 5000,
}  # fmt: skip


def test_old_probe_results_load_without_the_new_fields() -> None:
    probe = ProbeResult.from_dict(OLD_PROBE)
    assert probe.b_simple_ci == (100.0, math.inf)
    assert probe.b_simple_sampling_ci is None and probe.b_noise is None and probe.curvature is None


def test_unresolved_b_noise_round_trips_as_infinite() -> None:
    unresolved = {"b_noise": None, "b_noise_ci": [40.0, None], "curvature": {"b_noise": None, "resolved": False}}
    probe = ProbeResult.from_dict(OLD_PROBE | unresolved)
    assert probe.b_noise == math.inf and probe.b_noise_ci == (40.0, math.inf)
    assert ProbeResult.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe


def test_probe_skips_the_curvature_of_a_batchnorm_model_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    task = _regression(n=64)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with caplog.at_level("INFO", logger="bstune.study._probe"):
        b_noise, curvature = probe_module._curvature(task, model, ProbeSettings(), 0, torch.device("cpu"), 0.9)
    assert b_noise is None and curvature is not None and "BatchNorm" in curvature["skipped"]
    assert "no curvature-aware B_noise" in caplog.text
    off = probe_module._curvature(
        task, task.make_model(), ProbeSettings(curvature_examples=0), 0, torch.device("cpu"), 0.9
    )
    assert off == (None, None)
    b_noise, curvature = probe_module._curvature(
        task, task.make_model(), ProbeSettings(), 0, torch.device("cpu"), 0.9, 1e-9
    )
    assert b_noise is None and curvature is not None and "would take about" in curvature["skipped"]


def test_a_batchnorm_models_b_simple_says_it_came_from_micro_batches(caplog: pytest.LogCaptureFixture) -> None:
    """Per-example gradients are not defined for BatchNorm in train mode; the micro-batch value depends on the
    micro-batch size, and the probe says so instead of passing it off as the per-example one."""
    base = _regression(n=1024)

    def model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 1))

    task = bstune.Task(model=model, train_data=base.train_data, val_data=base.val_data, loss=torch.nn.MSELoss())

    def probe_of(subject: bstune.Task) -> ProbeResult:
        settings = ProbeSettings(lr_steps=10, train_samples=1024, throughput_steps=2, curvature_examples=0)
        return run_probe(subject, settings, batch_min=8, batch_max=256, lr_min=1e-3, lr_max=1.0, seed=0, device="cpu")

    with caplog.at_level("WARNING", logger="bstune.study._probe"):
        probe = probe_of(task)
    assert probe.b_simple_micro_batch is not None and probe.b_simple_micro_batch >= 1
    assert f"from micro-batches of {probe.b_simple_micro_batch}" in caplog.text
    assert ProbeResult.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe
    plain = probe_of(_regression(n=1024))
    assert plain.b_simple_micro_batch is None


def test_large_batch_sweep_starts_a_decade_below_the_first_ceiling_at_the_same_resolution() -> None:
    ratio = (10.0 / 1e-3) ** (1 / 39)  # the first test: 40 steps over four decades
    start, steps = large_batch_sweep(0.5, 1e-3, 10.0, 40)
    assert start == pytest.approx(0.05)
    assert start * ratio ** (steps - 1) >= 10.0 > start * ratio ** (steps - 2)  # reaches lr_max, one step no sooner
    assert large_batch_sweep(5e-3, 1e-3, 10.0, 40) == (1e-3, 40)  # never below the space, never more steps
    start, steps = large_batch_sweep(10.0, 1e-3, 10.0, 40)  # a ceiling at the top of the space: its last decade
    assert start == pytest.approx(1.0) and steps == 11


def _range_probe(task: bstune.Task) -> ProbeResult:
    """A probe whose range tests run 40 steps over lr 1e-3..10 (the rest kept small)."""
    return run_probe(
        task,
        ProbeSettings(lr_steps=40, train_samples=2000, throughput_steps=2, throughput_batches=(8,)),
        batch_min=8,
        batch_max=2048,
        lr_min=1e-3,
        lr_max=10.0,
        seed=0,
        device="cpu",
    )


def test_the_shortened_large_batch_test_finds_the_same_ceiling_as_a_full_sweep() -> None:
    """A larger batch only raises the ceiling, so starting a decade below the first one loses nothing."""
    task = _regression()
    probe = _range_probe(task)
    full, curve = lr_range_test(
        task, probe.large_batch, 1e-3, 10.0, 40, momentum=None, seed=0, device=torch.device("cpu")
    )
    assert probe.lr_ceiling_large == pytest.approx(full, rel=0.35)  # within about a step of the full sweep
    assert 0.5 <= probe.lr_ceiling_large <= 5.0  # and near this quadratic's stability edge (1 for full batch)
    start, steps = large_batch_sweep(probe.lr_ceiling, 1e-3, 10.0, 40)
    assert start > 1e-3 and steps < len(curve)  # at fewer samples
    assert probe.lr_ceiling_large >= probe.lr_ceiling  # never below what the small batch bore


def test_the_probe_starts_its_large_batch_test_a_decade_below_the_first_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, float, int]] = []  # (batch, first lr, steps) of each range test

    def recording(task: bstune.Task, batch: int, lr_min: float, lr_max: float, steps: int, **kw: object) -> object:
        calls.append((batch, lr_min, steps))
        return lr_range_test(task, batch, lr_min, lr_max, steps, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_module, "lr_range_test", recording)
    probe = _range_probe(_regression())
    (small, _, n_small), (big, start, n_big) = calls
    assert (small, big) == (probe.batch_size, probe.large_batch) and n_small == 40
    assert start == pytest.approx(probe.lr_ceiling / 10) and n_big < n_small


def _trained_like_probe(task: bstune.Task, probe: ProbeResult) -> torch.nn.Module:
    run = bstune.train(
        task,
        bstune.TrainConfig(batch_size=probe.batch_size, lr=probe.lr_probe, max_samples=4000, seed=0, track_noise=True),
    )
    assert run.model is not None
    return run.model


def test_ladder_spans_the_range_in_powers_of_four() -> None:
    assert _ladder(8, 1024, 1) == [8, 16, 64, 256, 1024]
    assert _ladder(2, 2048, 1) == [2, 8, 32, 128, 512, 2048]  # the linreg benchmark: 6 rungs, not 11
    assert _ladder(1, 65536, 1) == [4**k for k in range(9)]
    assert _ladder(10, 300, 8) == [8, 32, 128, 296]  # the ends rounded down to a multiple of 8
    for low, high in [(2, 4096), (3, 1000), (16, 16), (5, 7), (4, 512), (8, 512), (1, 3)]:
        ladder = _ladder(low, high, 1)
        assert ladder[0] == low and ladder[-1] == high and ladder == sorted(set(ladder))
        assert all(b / a <= 4 for a, b in itertools.pairwise(ladder))  # no gap wider than 4x
        assert all(b & (b - 1) == 0 for b in ladder[1:-1])  # between the ends, powers of two
        assert sum(ladder[:-1]) <= 2 ** math.ceil(math.log2(high)) / 3 + low  # the rungs below: a third of the top


def test_ladder_plan_keeps_to_its_share_of_the_trial_budget() -> None:
    settings = ProbeSettings()  # 7 timed steps a rung, a quarter of the budget
    rungs = [8, 16, 64, 256, 1024]  # the digits MLP's
    assert ladder_plan(rungs, settings, None) == [(b, 2, 7) for b in rungs]  # no budget: every rung in full
    plan = ladder_plan(rungs, settings, 30_000)
    cost = sum(b * (w + t) for b, w, t in plan)
    assert cost <= 30_000 / 4 < 9 * sum(rungs)  # within its share, where the full ladder is not
    assert plan[:3] == [(8, 2, 7), (16, 2, 7), (64, 2, 7)]  # the small rungs cost little: in full
    assert [t for _, _, t in plan] == sorted((t for _, _, t in plan), reverse=True)  # large batches: fewer steps
    assert all(w >= 1 and t >= 3 for _, w, t in plan)
    # linreg: a trial of 18k samples is 9 steps at B=2048; every rung still gets a warm-up and 3 timed steps
    tight = ladder_plan([2, 8, 32, 128, 512, 2048], settings, 18_000)
    assert tight[-1] == (2048, 1, 3) and all(w >= 1 and t >= 3 for _, w, t in tight)
    assert sum(b * (w + t) for b, w, t in tight) < 0.35 * 9 * sum(2**k for k in range(1, 12))  # today's: 36,846
    # a setting of 2 timed steps is kept as the most, and the least
    assert ladder_plan([8, 4096], ProbeSettings(throughput_steps=2), 1000) == [(8, 2, 2), (4096, 1, 2)]
    with pytest.raises(bstune.ConfigError, match="throughput_fraction"):
        ProbeSettings(throughput_fraction=0)


def _recording_ladder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every measure_throughput call of the probe: (batch, warm-up steps, timed steps)."""
    calls: list[tuple[int, int, int]] = []

    def recording(task: bstune.Task, batch: int, steps: int, **kw: Any) -> Any:
        calls.append((batch, kw.get("warmup", THROUGHPUT_WARMUP), steps))
        return measure_throughput(task, batch, steps, **kw)

    monkeypatch.setattr(probe_module, "measure_throughput", recording)
    return calls


def test_a_probe_told_the_trial_budget_trains_one_trial_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its run is a trial (budget, milestones, seed) and recorded as one; B_simple is still measured where
    the probe's own length rule (train_samples) ends, on the parameters the run had there."""
    task = _regression()
    measured: list[dict[str, torch.Tensor]] = []

    def measure(task: bstune.Task, model: torch.nn.Module, **kw: Any) -> Any:
        measured.append({k: v.clone() for k, v in model.state_dict().items()})
        return bstune.measure_noise_scale(task, model, **kw)

    monkeypatch.setattr(probe_module, "measure_noise_scale", measure)
    ladder = _recording_ladder(monkeypatch)
    settings = ProbeSettings(lr_steps=20, train_samples=1000, throughput_steps=7)
    kw: dict[str, Any] = dict(batch_min=8, batch_max=2048, lr_min=1e-3, lr_max=10.0, seed=3, device="cpu")
    probe = run_probe(task, settings, budget_samples=6000, eval_every_samples=1500, **kw)
    run = probe.run
    assert run is not None and run["status"] == "completed" and run["seed"] == 3
    assert (run["batch_size"], run["lr"]) == (probe.batch_size, probe.lr_probe)
    assert run["samples"] == run["steps"] * probe.batch_size == 6016  # 94 steps of 64: the trial's length
    assert run["config"]["max_samples"] == 6000 and run["config"]["eval_every_samples"] == 1500
    assert [h["milestone"] for h in run["history"]] == [1500, 3000, 4500, 6000]  # the study's milestones
    assert set(run["history"][0]) >= {"samples", "step", "lr", "train_loss", "val_loss", "gap"}
    assert run["throughput"] > 0
    assert ProbeResult.from_dict(json.loads(json.dumps(probe.to_dict()))) == probe
    # B_simple at the first milestone past train_samples (1500), not at the trial's end
    alone = bstune.train(
        task,
        bstune.TrainConfig(batch_size=probe.batch_size, lr=probe.lr_probe, max_samples=1500, seed=3, track_noise=True),
    )
    assert alone.model is not None and len(measured) >= 1
    for name, value in alone.model.state_dict().items():
        assert torch.equal(measured[0][name], value), name
    # the ladder keeps to a quarter of the trial (its 2,048 rung: 1 warm-up and 3 timed steps)
    assert ladder[-1] == (2048, 1, 3) and ladder == ladder_plan([8, 32, 128, 512, 2048], settings, 6000)
    assert probe.samples_used >= probe_cost(task, settings, batch_min=8, batch_max=2048, budget_samples=6000)
    assert probe_cost(task, settings, batch_min=8, batch_max=2048, budget_samples=6000) == 6000 + sum(
        b * (w + t) for b, w, t in ladder
    )


def test_the_large_batch_test_is_skipped_when_the_first_never_blew_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """At lr.max = 0.3 (the edge is ~1) the first test reaches lr.max; a larger batch would not blow up sooner."""
    calls: list[int] = []

    def recording(task: bstune.Task, batch: int, *args: Any, **kw: Any) -> Any:
        calls.append(batch)
        return lr_range_test(task, batch, *args, **kw)

    monkeypatch.setattr(probe_module, "lr_range_test", recording)
    settings = ProbeSettings(lr_steps=20, train_samples=1000, throughput_steps=2, throughput_batches=(8,))
    probe = run_probe(
        _regression(), settings, batch_min=8, batch_max=2048, lr_min=0.01, lr_max=0.3, seed=0, device="cpu"
    )
    assert calls == [probe.batch_size]  # one range test
    assert probe.lr_ceiling == probe.lr_ceiling_large == pytest.approx(0.3)  # what the second would have given
    assert probe.lr_ceiling_at_max and probe.lr_ceiling_large_at_max  # lr.max, a lower bound: the report says so
    assert ProbeResult.from_dict(probe.to_dict()).lr_ceiling_at_max


def test_one_slow_step_does_not_move_the_measured_throughput() -> None:
    """A fake clock: every step takes 10 ms but one, which another process slowed to 1 s."""
    task = _regression()
    durations = [0.5, 0.5] + [0.01] * 3 + [1.0] + [0.01] * 3  # 2 warm-up steps (untimed), then 7 timed
    # the clock is read at the start and at the end of each step, and advances only within a step
    readings = iter(t for k in range(len(durations)) for t in (sum(durations[:k]), sum(durations[: k + 1])))

    def clock() -> float:
        return next(readings)

    rate, used, spread = measure_throughput(task, 64, 7, lr=0.01, seed=0, device=torch.device("cpu"), clock=clock)
    assert rate == pytest.approx(64 / 0.01)  # the mean step (0.15 s) would say 423 samples/s, 15x too slow
    assert used == 9 * 64 and spread == pytest.approx((6400.0, 6400.0))
    rate, (q25, q75) = step_rate(100, [0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 3.0])
    assert rate == pytest.approx(1e4) and (q25, q75) == pytest.approx((1e4 / 1.5, 1e4))


def test_probe_space_probes_with_the_optimizer_a_study_of_the_space_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bstune probe` probed a Task with its own optimizer where the space named another, which the study then
    trained: the probe's temperature and B_simple were not the study's. A space that names none keeps the Task's."""
    seen: list[bstune.OptimizerSpec] = []
    monkeypatch.setattr(probe_module, "run_probe", lambda task, *a, **k: seen.append(task.optimizer_spec))
    task = _regression(n=256)
    adam = bstune.OptimizerSpec("adam")
    task = bstune.Task(model=task.model, train_data=task.train_data, val_data=task.val_data, loss=task.loss,
                       optimizer=adam)  # fmt: skip
    named = bstune.SearchSpace.coerce({"name": "s", "optimizer": {"family": "sgd", "momentum": 0.9}})
    probe_module.probe_space(task, named)
    probe_module.probe_space(task, bstune.SearchSpace.coerce({"name": "s"}))
    assert seen == [named.optimizer, adam]
