"""A study of a user's training function: the same trials as a task's, its failures kept, its mistakes named."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bstune
from bstune import optim
from bstune.errors import ConfigError
from bstune.metrics import Direction
from bstune.space import SearchSpace
from bstune.study import FunctionJob, ProbeSettings, StudyFailedError, probe_function, probe_space
from bstune.training import TrainConfig, TrialContext, run_function
from tests.training.test_context import TRAIN, VX, VY, loop, net, own_loader_loop, task
from tests.training.test_rate_watch import hard_coded, own_loop

SPACE = {"name": "s", "batch_size": {"min": 8, "max": 128}, "lr": {"min": 1e-3, "max": 3.0}}
ARGS: dict[str, Any] = dict(n_trials=5, budget_samples=4096, mode="baseline", progress=False, study_name="same")


def _values(result: bstune.StudyResult) -> list[tuple[str, int, float, float | None]]:
    return [(str(t.status), t.batch_size, t.lr, t.value) for t in result.trials]  # type: ignore[misc]


def test_a_function_and_a_task_of_the_same_problem_give_the_same_trials() -> None:
    mine = bstune.Study(loop, SPACE, **ARGS).run()
    theirs = bstune.Study(task(), SPACE, **ARGS).run()
    assert [v[:3] for v in _values(mine)] == [v[:3] for v in _values(theirs)]
    assert [v[3] for v in _values(mine)] == pytest.approx([v[3] for v in _values(theirs)], rel=1e-6)
    assert {v[0] for v in _values(mine)} >= {"completed"}
    # what the loop's ctx.config held: the space's (default SGD) optimizer settings, batch size and rate
    same = {k: theirs.best_config[k] for k in ("batch_size", "lr", "momentum", "weight_decay")}
    assert mine.best_config == same


def test_the_function_sees_the_spaces_parameters_by_name() -> None:
    seen: list[dict[str, Any]] = []

    def fn(ctx: TrialContext) -> None:
        seen.append(dict(ctx.config))
        loop(ctx)

    space = SPACE | {
        "params": {
            "model.width": {"type": "int", "low": 4, "high": 32},
            "momentum": {"type": "float", "low": 0.0, "high": 0.9},
        }
    }
    result = bstune.Study(fn, space, **(ARGS | {"n_trials": 3, "rescore_top": 0})).run()
    assert all(set(c) == {"batch_size", "lr", "model.width", "momentum", "weight_decay"} for c in seen)
    assert [(c["batch_size"], c["lr"]) for c in seen] == [(t.batch_size, t.lr) for t in result.trials]
    # the recommended config is what ctx.config held for the chosen trial (the README says so), every key
    chosen = next(
        c for c in seen if (c["batch_size"], c["lr"]) == (result.best_config["batch_size"], result.best_config["lr"])
    )
    assert result.best_config == chosen


def test_the_spaces_fixed_optimizer_settings_reach_the_loop_and_another_optimizer_is_named(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(optim, "_warned_optimizers", set())  # said once per process: this test's own count
    seen: list[dict[str, Any]] = []

    def adam_loop(ctx: TrialContext) -> None:  # declares SGD with momentum 0.5 in its space, trains with Adam
        seen.append(dict(ctx.config))
        loop(ctx, lambda params: torch.optim.Adam(params, lr=ctx.config["lr"]))

    space = SPACE | {"name": "fixed-opt", "optimizer": {"family": "sgd", "momentum": 0.5, "weight_decay": 1e-3}}
    with caplog.at_level("WARNING", logger="bstune.optim"):
        result = bstune.Study(
            adam_loop, space, **(ARGS | {"n_trials": 2, "rescore_top": 0, "study_name": "adam"})
        ).run()
    assert result.optimizer == "sgd"  # the space's family, which the report's LR table follows
    assert seen and all(c["momentum"] == 0.5 and c["weight_decay"] == 1e-3 for c in seen)
    assert result.best_config["momentum"] == 0.5 and result.best_config["weight_decay"] == 1e-3  # as the loop saw
    said = [r.getMessage() for r in caplog.records if "the loop's optimizer is Adam" in r.getMessage()]
    assert len(said) == 1 and "declares optimizer family 'sgd'" in said[0]  # once, not once per trial
    # and the report, which outlives the terminal, says it too: it recommended the space's momentum 0.5 beside a
    # temperature computed with it, for a loop that trained with Adam
    from bstune.report import build_report, render_markdown
    from bstune.study import format_summary

    result.save(tmp_path)
    loaded = bstune.StudyResult.load(tmp_path)
    differs = "the loop's optimizer is Adam, but the search space declares optimizer family 'sgd'"
    assert {t.other_optimizer for t in loaded.trials if t.status == "completed"} == {differs}
    text = render_markdown(build_report(loaded).data)
    (advice,) = [line for line in text.splitlines() if line.startswith("**Train with")]
    assert "momentum" not in advice and f"**Not the space's optimizer**: {differs}." in text
    assert "effective temperature η/(B(1−m)) =" not in text.split("## Recommendation")[1].split("\n## ")[0]
    assert f"not the space's optimizer: {differs}" in format_summary(loaded.to_dict())
    caplog.clear()
    with caplog.at_level("WARNING", logger="bstune.optim"):  # the space's own optimizer: no word
        bstune.Study(loop, space, **(ARGS | {"n_trials": 2, "rescore_top": 0, "study_name": "own"})).run()
    assert not [r for r in caplog.records if "the loop's" in r.getMessage()]


def test_a_loop_whose_adam_betas_are_not_the_spaces_is_named_and_not_recommended_the_spaces(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A newcomer's space said betas [0.9, 0.95], their loop hard-coded (0.9, 0.99): no word, and the report said
    "Train with ... betas = [0.9, 0.95]"."""
    monkeypatch.setattr(optim, "_warned_optimizers", set())

    def own_betas(ctx: TrialContext) -> None:
        loop(ctx, lambda params: torch.optim.AdamW(params, lr=ctx.config["lr"], betas=(0.9, 0.99)))

    space = SPACE | {"name": "betas", "optimizer": {"family": "adamw", "betas": [0.9, 0.95]}}
    with caplog.at_level("WARNING", logger="bstune.optim"):
        result = bstune.Study(own_betas, space, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
    differs = "the loop's AdamW has betas (0.9, 0.99), but the search space declares (0.9, 0.95)"
    assert [r.getMessage().split(":")[0] for r in caplog.records if "betas" in r.getMessage()] == [differs]
    from bstune.report import build_report, render_markdown

    text = render_markdown(build_report(result).data)
    (advice,) = [line for line in text.splitlines() if line.startswith("**Train with")]
    assert "betas" not in advice and f"**Not the space's optimizer**: {differs}." in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bstune.optim"):  # the space's own betas: no word
        bstune.Study(loop, space, **(ARGS | {"n_trials": 2, "rescore_top": 0, "study_name": "own"})).run()
    assert not [r for r in caplog.records if "the loop's" in r.getMessage()]


def test_an_accuracy_objective_is_maximized_without_being_told() -> None:
    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_accuracy=(model(VX).argmax(1) == VY).float().mean())

    study = bstune.Study(fn, SPACE, objective="val_accuracy", **(ARGS | {"n_trials": 3}))
    result = study.run()
    assert study.direction == "maximize" and result.direction == "maximize"
    completed = [t.value for t in result.trials if t.status == "completed"]
    assert result.best_value >= max(completed) - 0.1  # re-scored mean of one of the best, not the worst


def test_an_exception_in_the_function_fails_the_trial_with_its_traceback() -> None:
    def fn(ctx: TrialContext) -> None:
        raise KeyError("model.width")

    with pytest.raises(StudyFailedError, match=re.escape("KeyError: 'model.width'")) as info:
        bstune.Study(fn, SPACE, **(ARGS | {"n_trials": 2})).run()
    assert info.value.traceback is not None and "raise KeyError" in info.value.traceback


def test_a_trial_whose_code_raises_keeps_the_samples_and_evaluations_it_trained() -> None:
    """A newcomer's loop raised at step 20 for large batches: the failed trials were stored with 0 samples and no
    history, so "Samples spent" left out what they trained."""

    def boom(ctx: TrialContext, loss: torch.Tensor) -> torch.Tensor:
        if ctx.batch_size > 40 and ctx.steps == 20:  # after 20 steps counted, their milestones reported
            raise ValueError(f"boom at step 20 (B={ctx.batch_size})")
        return loss

    def fn(ctx: TrialContext) -> None:
        tracked_loop(ctx, before_backward=boom)

    result = bstune.Study(fn, SPACE, **(ARGS | {"n_trials": 6, "rescore_top": 0, "pruner": "none"})).run()
    failed = [t for t in result.trials if t.status == "failed"]
    assert failed, [(t.batch_size, t.status) for t in result.trials]
    for t in failed:
        assert "boom at step 20" in t.message
        assert t.samples == 20 * t.batch_size
        passed = t.samples // t.config["eval_every_samples"]  # the milestones passed before the raise
        assert len(t.history) == passed >= 1 and all(h["samples"] <= t.samples for h in t.history)
    assert result.samples_total == sum(t.samples for t in result.trials)


def test_a_function_that_reports_another_metric_is_told_which_it_reported() -> None:
    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(1.0)
            if ctx.at_milestone():
                ctx.report(loss=0.5)

    with pytest.raises(
        StudyFailedError, match=re.escape("ctx.report: reported loss but not the study's objective 'val_loss'")
    ):
        bstune.Study(fn, SPACE, **(ARGS | {"n_trials": 2})).run()


def test_a_space_without_a_largest_batch_is_refused_for_a_function() -> None:
    with pytest.raises(ConfigError, match=re.escape("batch_size.max")):
        bstune.Study(loop, {"name": "s"}, **ARGS)


def test_batch_sizes_past_the_functions_training_set_fail_once_then_are_capped_there() -> None:
    """The data of a training function are known when it runs: the first trial that opens ctx.loader
    caps the rest at its training set (480 examples), so only a trial before that can ask for more."""
    space = SPACE | {"name": "big", "batch_size": {"min": 8, "max": 2048}}
    args = ARGS | {
        "n_trials": 8,
        "budget_samples": 6144,
        "n_evals": 3,
        "rescore_top": 0,
        "study_name": "big",
        "seed": 4,
    }
    trials = sorted(bstune.Study(loop, space, **args).run().trials, key=lambda t: t.number)
    assert trials[0].status == "failed" and trials[0].batch_size > 480  # this seed's first draw: too large
    assert "batch_size" in trials[0].message and "larger than the training set (480 examples)" in trials[0].message
    assert "failed" not in [t.status for t in trials[1:]]
    assert all(8 <= t.batch_size <= 480 for t in trials[1:])  # type: ignore[operator]
    assert sum(t.batch_size > 240 for t in trials[1:]) >= 2  # type: ignore[operator]  # the range's top is still drawn
    assert {t.n_train for t in trials} == {480}  # each record keeps the size its loop showed (for the report)


def test_a_space_whose_smallest_batch_exceeds_the_functions_training_set_stops_the_study() -> None:
    space = SPACE | {"name": "huge", "batch_size": {"min": 512, "max": 1024}}
    args = ARGS | {"n_trials": 4, "budget_samples": 3072, "n_evals": 3, "study_name": "huge"}
    with pytest.raises(ConfigError, match=re.escape("batch_size.min (512) is larger than the training set (480")):
        bstune.Study(loop, space, **args).run()
    with pytest.raises(ConfigError, match=re.escape("batch_size.min (512) is larger than the training set (480")):
        bstune.Study(tracked_loop, space, **(args | {"mode": "prior"})).run()  # said by the probe, before any trial


def test_an_objective_of_unknown_direction_must_be_declared() -> None:
    with pytest.raises(ConfigError, match="direction: bstune cannot tell"):
        bstune.Study(loop, SPACE, objective="score", **ARGS)
    assert bstune.Study(loop, SPACE, objective="score", direction="maximize", **ARGS).direction == "maximize"
    with pytest.raises(ConfigError, match="'minimize' contradicts the objective 'val_accuracy'"):
        bstune.Study(loop, SPACE, objective="val_accuracy", direction="minimize", **ARGS)


def test_a_study_of_a_function_resumes_from_its_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = bstune.Study(loop, SPACE, storage=storage, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
    more = bstune.Study(loop, SPACE, storage=storage, **(ARGS | {"n_trials": 4, "rescore_top": 0})).run()
    assert _values(more)[:2] == _values(first) and len(more.trials) == 4


class _NoScheduler:
    """A loop that never makes the context's scheduler: the probe cannot ramp its rate."""

    def __call__(self, ctx: TrialContext) -> None:
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.step(loss)


def test_the_prior_mode_names_what_the_probe_needs_from_the_loop() -> None:
    # the way round it, said for the command line too (a newcomer was told of "prior settings", which have no
    # option there, nor any setting that gives a known B_noise)
    with pytest.raises(
        ConfigError, match=r"ctx.lr_scheduler\(optimizer\).*mode='baseline' \(bstune run --mode baseline\)$"
    ):
        bstune.Study(_NoScheduler(), SPACE, **(ARGS | {"mode": "prior"})).run()

    def no_tracker(ctx: TrialContext) -> None:
        loop(ctx)

    with pytest.raises(ConfigError, match=r"ctx.noise_tracker\(model\).*observe\(\)"):
        bstune.Study(no_tracker, SPACE, **(ARGS | {"mode": "prior"})).run()

    def never_observes(ctx: TrialContext) -> None:  # a newcomer's: the tracker made, observe() forgotten
        ctx.noise_tracker(nn.Linear(1, 1))
        loop(ctx)

    with pytest.raises(ConfigError, match=r"probe: the probe measures B_simple .* call noise.observe\(\) between"):
        bstune.Study(never_observes, SPACE, **(ARGS | {"mode": "prior"})).run()


def tracked_loop(
    ctx: TrialContext,
    report: bool = True,
    before_backward: Callable[[TrialContext, torch.Tensor], torch.Tensor] | None = None,
    data: torch.utils.data.Dataset[Any] = TRAIN,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
) -> None:
    """:func:`loop` with the noise tracker, as the probe needs it (``report=False``: a loop that never reports;
    ``before_backward(ctx, loss)``: what a newcomer's loop does to each step's loss, or raises there; ``data``:
    the training set; ``optimizer(params)``: one of the loop's own, else the space's)."""
    model = net().to(ctx.device)
    opt = (optimizer or ctx.make_optimizer)(model.parameters())
    sched = ctx.lr_scheduler(opt)
    noise = ctx.noise_tracker(model)
    for xb, yb in ctx.loader(data):
        loss = F.cross_entropy(model(xb), yb)
        if before_backward is not None:
            loss = before_backward(ctx, loss)
        opt.zero_grad()
        loss.backward()
        noise.observe()
        opt.step()
        sched.step()
        ctx.step(loss)
        if report and ctx.at_milestone():
            with torch.no_grad():
                ctx.report(val_loss=F.cross_entropy(model(VX), VY))


def test_a_loop_that_never_reports_is_stopped_by_the_probe_not_after_the_study() -> None:
    """A newcomer's loop without ctx.report ran the probe and every trial to its end, then heard of it."""

    def silent(ctx: TrialContext) -> None:
        tracked_loop(ctx, report=False)

    calls: list[int] = []

    def counted(ctx: TrialContext) -> None:
        calls.append(1)
        silent(ctx)

    with pytest.raises(ConfigError, match=r"without calling ctx\.report: report val_loss with ctx\.report\(val_loss="):
        bstune.Study(counted, SPACE, **(ARGS | {"mode": "prior"})).run()
    assert len(calls) <= 4  # the probe's range tests and its run (a trial would make it 5 or more)
    # baseline mode (no probe): the first trial says so, and the study stops there, not after n_trials of it
    calls.clear()
    with pytest.raises(StudyFailedError, match=r"none of the 1 trials .*recorded no evaluation; report val_loss"):
        bstune.Study(counted, SPACE, **(ARGS | {"n_trials": 4})).run()
    assert len(calls) == 1


def test_a_loop_whose_loss_is_nan_at_any_rate_is_not_told_to_lower_the_rate() -> None:
    """A newcomer's loss was NaN from the first steps whatever the rate: the probe ran at lr.min and told them to
    lower lr.max. A NaN the loop reports as a metric is not the rate's doing either."""

    def nan_loss(ctx: TrialContext) -> None:
        tracked_loop(ctx, before_backward=lambda ctx, loss: loss * (math.nan if ctx.steps >= 2 else 1.0))

    with pytest.raises(ConfigError, match=r"diverged even at the space's smallest rate, lr\.min: check the loss"):
        bstune.Study(nan_loss, SPACE, **(ARGS | {"mode": "prior"})).run()

    def nan_metric(ctx: TrialContext) -> None:
        tracked_loop(ctx, report=False)

    def reports_nan(ctx: TrialContext) -> None:
        report = ctx.report
        ctx.report = lambda **m: report(val_loss=math.nan)  # type: ignore[method-assign]
        tracked_loop(ctx)

    with pytest.raises(ConfigError, match=r"a metric the loop reported was not finite"):
        bstune.Study(reports_nan, SPACE, **(ARGS | {"mode": "prior"})).run()


def test_a_loop_that_raises_stops_the_study_after_three_trials_and_a_fixed_one_resumes(tmp_path: Path) -> None:
    calls: list[int] = []
    fixed = False

    def broken(ctx: TrialContext) -> None:
        calls.append(1)
        if not fixed:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        loop(ctx)

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ARGS | {"n_trials": 6, "storage": storage}
    with pytest.raises(StudyFailedError, match=r"none of the 3 trials .*RuntimeError: mat1 and mat2"):
        bstune.Study(broken, SPACE, **args).run()
    assert len(calls) == 3
    # fixed and resumed: the stored failures do not stop it again, and it runs the rest of its trials
    fixed = True
    result = bstune.Study(broken, SPACE, **args).run()
    assert [str(t.status) for t in result.trials[:3]] == ["failed"] * 3
    assert len(result.trials) == 6 and result.trials[3].status == "completed"


def test_failures_after_a_completed_trial_do_not_stop_a_study() -> None:
    """Code that fails on some configs only (here every other trial) is the configs' doing, not the code's."""
    calls: list[int] = []

    def flaky(ctx: TrialContext) -> None:
        calls.append(1)
        if len(calls) % 2 == 0:
            raise RuntimeError("only some configs")
        loop(ctx)

    result = bstune.Study(flaky, SPACE, **(ARGS | {"n_trials": 6})).run()
    assert len(result.trials) == 6
    assert [str(t.status) for t in result.trials[1::2]] == ["failed"] * 3


def test_the_probe_through_a_function_measures_what_the_task_probe_measures() -> None:
    space = SearchSpace.coerce(SPACE)
    settings = ProbeSettings(throughput_batches=(8, 64))
    theirs = probe_space(task(), space, settings, batch_cap=128)
    job = FunctionJob(tracked_loop, "val_loss", Direction.MINIMIZE, space.optimizer)
    mine = probe_function(job, space, settings, batch_cap=128)
    # the same batches from the same start: the range tests agree to the last digit
    assert (mine.batch_size, mine.large_batch) == (theirs.batch_size, theirs.large_batch) == (30, 128)
    assert mine.lr_ceiling == pytest.approx(theirs.lr_ceiling, rel=1e-9)
    assert mine.lr_ceiling_large == pytest.approx(theirs.lr_ceiling_large, rel=1e-9)
    assert mine.lr_probe == pytest.approx(theirs.lr_probe, rel=1e-9)
    # B_simple at the same point (the probe run's end), by other batches: each within the other's interval's reach
    lo, hi = mine.b_simple_ci
    assert lo <= theirs.b_simple <= hi
    assert theirs.b_simple_ci[0] * 0.8 <= mine.b_simple <= theirs.b_simple_ci[1] * 1.25
    assert set(mine.throughput) == {8, 64} and mine.samples_used > 0 and len(mine.trajectory) == 5
    # both report the interval widened by their trajectory, around the sampling one (issue #17)
    for probe in (mine, theirs):
        assert probe.b_simple_sampling_ci is not None
        assert (
            probe.b_simple_ci[0]
            <= probe.b_simple_sampling_ci[0]
            <= probe.b_simple_sampling_ci[1]
            <= probe.b_simple_ci[1]
        )


def test_a_searched_momentum_is_probed_at_the_spaces_optimizer_whichever_way_the_loop_applies_it() -> None:
    """The probe's temperature and the prior's rule rest on the space optimizer's momentum: a loop that applies
    ``ctx.config["momentum"]`` (searched in [0, 0.9]) was probed at 0.45 and read as 0.9 (a reviewer's repro)."""
    space = SearchSpace.coerce(
        SPACE
        | {
            "optimizer": {"family": "sgd", "momentum": 0.9},
            "params": {"momentum": {"type": "float", "low": 0.0, "high": 0.9}},
        }
    )
    settings = ProbeSettings(throughput_batches=(8,))
    seen: set[tuple[float, float]] = set()

    def from_config(ctx: TrialContext) -> None:
        seen.add((ctx.config["momentum"], ctx.momentum))
        tracked_loop(ctx, optimizer=lambda p: torch.optim.SGD(p, lr=ctx.config["lr"], momentum=ctx.config["momentum"]))

    probes = [
        probe_function(FunctionJob(fn, "val_loss", Direction.MINIMIZE, space.optimizer), space, settings, batch_cap=128)
        for fn in (tracked_loop, from_config)
    ]
    assert seen == {(0.9, 0.9)}
    assert probes[1].lr_ceiling == pytest.approx(probes[0].lr_ceiling, rel=1e-9)
    assert probes[1].temperature == pytest.approx(probes[0].temperature, rel=1e-9)


def test_the_probe_lets_go_of_the_noise_runs_model_before_its_larger_batches() -> None:
    """The noise run's context held its model, optimizer and gradients through the large-batch range test and the
    throughput ladder: on a GPU, twice the parameters' memory just where the largest batches are tried."""
    space = SearchSpace.coerce(SPACE)
    noise_run: list[weakref.ref[torch.Tensor]] = []
    alive_after: list[bool] = []

    def fn(ctx: TrialContext) -> None:
        if noise_run:  # no collection of our own: the probe's must have freed it, cycles and all
            alive_after.append(noise_run[0]() is not None)
        tracked_loop(ctx, optimizer=lambda params: _remember(ctx, params))

    def _remember(ctx: TrialContext, params: Any) -> torch.optim.Optimizer:
        params = list(params)
        if ctx.train_config.track_noise and not noise_run:
            noise_run.append(weakref.ref(params[0]))
        return ctx.make_optimizer(params)

    job = FunctionJob(fn, "val_loss", Direction.MINIMIZE, space.optimizer)
    probe_function(job, space, ProbeSettings(throughput_batches=(8, 64)), batch_cap=128)
    assert noise_run and len(alive_after) >= 3 and not any(alive_after)


def test_told_a_short_trial_budget_a_functions_probe_measures_at_a_trials_length_as_a_tasks_does() -> None:
    """A newcomer's probe trained 12,800 samples (its own length rule) for trials of 4,000: the task probe
    measures at the end of its trial-long run when the rule is longer; so does a function's now."""
    space = SearchSpace.coerce(SPACE)
    settings = ProbeSettings(throughput_batches=(8,))
    job = FunctionJob(tracked_loop, "val_loss", Direction.MINIMIZE, space.optimizer)
    long = probe_function(job, space, settings, batch_cap=128)
    short = probe_function(job, space, settings, batch_cap=128, budget_samples=1_200)
    theirs = probe_space(task(), space, settings, batch_cap=128, budget_samples=1_200, eval_every_samples=120)
    assert long.b_simple_at_samples > 1_200 and short.b_simple_at_samples == 1_200 == theirs.b_simple_at_samples
    assert short.samples_used < long.samples_used - (long.b_simple_at_samples - 1_200) // 2
    lo, hi = short.b_simple_ci
    assert lo <= theirs.b_simple <= hi or theirs.b_simple_ci[0] <= short.b_simple <= theirs.b_simple_ci[1]


def test_a_functions_probe_run_no_longer_than_a_trial_is_the_first_trial_as_a_trial_trains_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #18 for the user's own loop: trials of 4,096 samples, shorter than the probe's own run (6,000
    at B=30), so the probe's noise run is one trial, its still phase after the last milestone. Recorded as
    trial 0, it is what a trial of its config gives: the loop retrained so matches it evaluation for evaluation."""
    calls: list[tuple[int, bool, int]] = []  # each run of the loop: batch size, the noise run?, loader workers

    def loop(ctx: TrialContext) -> None:
        calls.append((ctx.batch_size, ctx.train_config.track_noise, ctx.train_config.num_workers))
        tracked_loop(ctx)

    args = ARGS | {"mode": "prior", "n_trials": 3, "rescore_top": 0, "num_workers": 1}
    with caplog.at_level("WARNING", logger="bstune.study._study"):
        result = bstune.Study(loop, SPACE, **args).run()
    probe, first = result.probe, result.trials[0]
    assert probe is not None and probe.run is not None and first.from_probe and first.status == "completed"
    assert (first.batch_size, first.lr, first.samples) == (probe.batch_size, probe.lr_probe, probe.run["samples"])
    assert probe.b_simple_at_samples == first.samples == 4_110  # 137 steps of 30: the first to reach 4,096
    every = result.trials[1].history[0]["milestone"]  # the milestones a drawn trial had
    assert [h["milestone"] for h in first.history] == [*range(every, 4_096, every), 4_096]
    assert all(not t.from_probe for t in result.trials[1:]) and len(result.trials) == 3
    assert result.samples_probe == probe.samples_used - first.samples  # counted once
    # the run trained right after the range test at its batch, before the one at 4x (which the trials need)
    noise_run = next(i for i, (_, noise, _) in enumerate(calls) if noise)
    assert noise_run < next(i for i, (b, _, _) in enumerate(calls) if b == probe.large_batch)
    assert all(workers == 1 for *_, workers in calls)  # the probe's runs load as the trials do
    # the loop retrained as a trial of the same config: the same evaluations, to the last digit
    config = TrainConfig(
        batch_size=first.batch_size,  # type: ignore[arg-type]
        lr=first.lr,  # type: ignore[arg-type]
        max_samples=4_096,
        eval_every_samples=every,
        num_workers=1,
    )
    again, _ = run_function(tracked_loop, config)  # type: ignore[arg-type]
    assert [r.val_loss for r in again.history] == pytest.approx([h["val_loss"] for h in first.history], rel=1e-6)
    assert first.value == pytest.approx(min(r.val_loss for r in again.history), rel=1e-6)
    # the cost warning counts the probe without its run, which is a trial: 8,220 of 12,288 is no warning
    assert not [r for r in caplog.records if "the probe trained on" in r.getMessage()]


def test_a_functions_probe_run_is_no_trial_where_trials_are_longer_or_it_evaluated_after_the_still_phase(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Trials longer than the probe's own run: the run stops there, B_simple is measured where a task's probe
    measures it, and every trial is drawn. A loop that only returns its metrics at the end evaluated after the
    still phase, which no trial would have seen: not a trial either, and the log says why."""
    args = ARGS | {"mode": "prior", "n_trials": 2, "rescore_top": 0}
    long = bstune.Study(tracked_loop, SPACE, **(args | {"budget_samples": 7_000})).run()
    assert long.probe is not None and long.probe.run is None and long.probe.b_simple_at_samples == 6_000
    assert not any(t.from_probe for t in long.trials) and long.samples_probe == long.probe.samples_used

    def returns_at_the_end(ctx: TrialContext) -> dict[str, Any]:
        tracked_loop(ctx, report=False)
        return {"val_loss": 0.5}

    with caplog.at_level("INFO", logger="bstune.study._probe_function"):
        late = bstune.Study(returns_at_the_end, SPACE, **args).run()
    assert late.probe is not None and late.probe.run is None and not any(t.from_probe for t in late.trials)
    said = [r.getMessage() for r in caplog.records if "did not report val_loss" in r.getMessage()]
    assert said and "last milestone (4,096 samples) before the probe's still phase" in said[0]


def test_a_prior_mode_study_of_a_function_searches_around_its_probe() -> None:
    result = bstune.Study(tracked_loop, SPACE, **(ARGS | {"mode": "prior", "n_trials": 4, "rescore_top": 0})).run()
    prior, probe = result.prior, result.probe
    assert prior is not None and probe is not None and probe.b_simple > 0
    for t in result.trials:
        assert prior.batch_low <= t.batch_size <= prior.batch_high  # type: ignore[operator]
    # trial 0 is the probe's run (a trial of 4,096 is shorter than the probe's own): its samples counted once
    assert result.trials[0].from_probe
    assert result.samples_total == probe.samples_used + sum(t.samples for t in result.trials[1:])


def test_a_prior_mode_study_of_a_function_caps_batch_sizes_at_the_training_set_its_probe_saw() -> None:
    space = SPACE | {"name": "big-prior", "batch_size": {"min": 8, "max": 2048}}
    args = ARGS | {"mode": "prior", "n_trials": 4, "budget_samples": 6144, "n_evals": 3, "rescore_top": 0}
    result = bstune.Study(tracked_loop, space, **args).run()
    assert result.probe is not None and result.probe.n_train == 480
    assert result.prior is not None and result.prior.batch_high <= 480
    assert [t.status for t in result.trials] == ["completed"] * 4
    assert all(t.batch_size <= 480 for t in result.trials)  # type: ignore[operator]


SMALL = torch.utils.data.TensorDataset(TRAIN.tensors[0][:40], TRAIN.tensors[1][:40])


def small_loop(ctx: TrialContext) -> None:
    """A loop over 40 examples, fewer than the probe's first batch."""
    tracked_loop(ctx, data=SMALL)


def test_the_probe_of_a_function_whose_training_set_is_smaller_than_its_first_batch_sizes_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    space = SearchSpace.coerce(SPACE | {"batch_size": {"min": 2, "max": 128}})
    job = FunctionJob(small_loop, "val_loss", Direction.MINIMIZE, space.optimizer)
    probe = probe_function(job, space, ProbeSettings(throughput_batches=(2, 8)), batch_cap=128, progress=True)
    assert probe.n_train == 40 and probe.batch_size <= 40 and probe.large_batch <= 40  # not 64, the default
    assert probe.lr_range and probe.b_simple > 0
    # the bar names the batch the test ran at (it was opened at 64, before the loop had shown its data)
    assert f"LR range test at B={probe.batch_size} (your loop; 40 examples): 100%" in capsys.readouterr().err


def test_a_functions_probe_on_a_small_training_set_wastes_no_range_test_at_the_default_batch() -> None:
    """A newcomer's 353-example set: the probe's first range test ran to its end at B=64 (27% of the probe's
    samples), then was thrown away and run again at B=22 once the loop had shown its data. It now ends before its
    first step there."""
    mid = torch.utils.data.Subset(TRAIN, range(320))  # 320 // 16 = 20: a smaller probe batch, though 64 fits
    batches: list[int] = []

    def mid_loop(ctx: TrialContext) -> dict[str, float]:
        steps: list[int] = []

        def seen(ctx: TrialContext, loss: torch.Tensor) -> torch.Tensor:
            batches.append(ctx.batch_size)
            steps.append(ctx.steps)
            return loss

        tracked_loop(ctx, before_backward=seen, data=mid)
        return {"val_loss": 1.0 / len(steps)}  # a loop's code after its stream: it raises on an empty one

    space = SearchSpace.coerce(SPACE | {"batch_size": {"min": 2, "max": 128}})
    job = FunctionJob(mid_loop, "val_loss", Direction.MINIMIZE, space.optimizer)
    probe = probe_function(job, space, ProbeSettings(throughput_batches=(2, 8)), batch_cap=128, progress=False)
    assert probe.n_train == 320 and probe.batch_size == 20 and probe.lr_range and probe.b_simple > 0
    assert 64 not in batches and batches[0] == 20  # no step at the default batch: the first test began at 20


def test_the_probe_of_a_loop_whose_own_loader_is_smaller_than_the_spaces_batches_says_what_to_do() -> None:
    """A DataLoader of the loop's own over 100 examples: the large-batch range test (at 8x the probe batch) or the
    throughput ladder ran at batch sizes the loop never trained at, and the search went on up to 512. It stops
    with what to do instead (ctx.loader shows the set's size, and the search stays within it)."""
    own = own_loader_loop(100, None, count=True, report=True)
    settings = ProbeSettings(batch_size=32, throughput_batches=(8, 32, 128, 512))
    for lr_max in (3.0, 300.0):  # the first range test reaches lr.max (no second one), or it does not
        space = SearchSpace.coerce(SPACE | {"batch_size": {"min": 4, "max": 512}, "lr": {"min": 1e-3, "max": lr_max}})
        job = FunctionJob(own, "val_loss", Direction.MINIMIZE, space.optimizer)
        with pytest.raises(ConfigError, match=r"steps counted fewer samples .*give the space a batch_size.max no"):
            probe_function(job, space, settings, batch_cap=512, progress=False)


def test_a_task_study_trains_and_hands_over_the_spaces_optimizer_not_the_tasks() -> None:
    """The space's optimizer section replaces the task's: the planner's momentum and the handed-over
    config are the space's (a Study that read the task's here handed over momentum 0)."""
    space = SPACE | {"optimizer": {"family": "sgd", "momentum": 0.9}}
    study = bstune.Study(task(), space, **(ARGS | {"n_trials": 2, "rescore_top": 0}))
    result = study.run()
    assert task().optimizer_spec.momentum == 0.0 and result.best_config["momentum"] == 0.9
    assert all(t.temperature == pytest.approx(t.lr / (t.batch_size * 0.1)) for t in result.trials)  # type: ignore[operator]


def test_a_functions_probe_cost_is_warned_about_from_what_it_spent_not_from_the_spaces_batch_sizes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before its probe runs, a training function's data size is unknown: an estimate from the space's
    batch sizes (up to 1024) said "at least 18,694 samples", more than a 12,000-sample trial, for a 40-example loop whose probe spent ~1k."""
    caplog.set_level(logging.WARNING, logger="bstune")
    space = SPACE | {"name": "tiny", "batch_size": {"min": 2, "max": 1024}}
    args = ARGS | {"mode": "prior", "n_evals": 2, "rescore_top": 0}
    bstune.Study(small_loop, space, **(args | {"n_trials": 1, "budget_samples": 12_000})).run()
    assert not [r for r in caplog.records if "the probe" in r.getMessage()]
    small_space = space | {"batch_size": {"min": 2, "max": 32}}  # a budget below the probe's ~1k passes its checks
    result = bstune.Study(small_loop, small_space, **(args | {"n_trials": 1, "budget_samples": 300})).run()
    probe = result.probe
    assert probe is not None and probe.run is not None and probe.samples_used - probe.run["samples"] > 300
    (warning,) = [r.getMessage() for r in caplog.records if "the probe" in r.getMessage()]
    spent = probe.samples_used - probe.run["samples"]  # its run, one trial long, is the first trial
    assert f"the probe trained on {spent:,} samples besides its run, which is the first trial" in warning
    assert "mostly measures" in warning


def test_a_loop_that_returns_before_its_budget_is_spent_is_no_finished_trial() -> None:
    """A loop over its own epochs stops short of the budget: its trial was recorded "completed", ranked
    against trials that trained twice as long, and could be recommended. It is failed, saying why; in the
    prior mode the probe said the noise tracker was missing."""

    def epochs(ctx: TrialContext) -> None:
        model = net().to(ctx.device)
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        noise = ctx.noise_tracker(model)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            noise.observe()
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(VX), VY))
            if ctx.samples >= 1500:  # "two epochs"
                return

    with pytest.raises(StudyFailedError, match=r"the function returned after 1,5\d\d of its 4,096 samples"):
        bstune.Study(epochs, SPACE, **(ARGS | {"n_trials": 2})).run()
    with pytest.raises(ConfigError, match=r"probe: the probe run at batch_size=\d+: the function returned after"):
        bstune.Study(epochs, SPACE, **(ARGS | {"n_trials": 2, "mode": "prior", "study_name": "p"})).run()


def test_the_recommended_trial_trains_again_from_best_train_config() -> None:
    """A newcomer retraining a training function's recommendation converted warmup_fraction to warmup_samples by
    hand, and TrainConfig(**trial.config) failed on model_kwargs; the result now gives the trial's TrainConfig."""
    from bstune.training import run_function

    space = SPACE | {"params": {"warmup_fraction": {"type": "float", "low": 0.0, "high": 0.3}}}
    result = bstune.Study(loop, space, **(ARGS | {"rescore_top": 0, "pruner": "none"})).run()
    best = next(t for t in result.trials if t.number == result.best_trial)
    config = result.best_train_config()
    assert (config.batch_size, config.lr) == (result.best_config["batch_size"], result.best_config["lr"])
    assert config.warmup_samples == best.config["warmup_samples"]
    again, _ = run_function(loop, config, params=result.best_config)
    assert [h.val_loss for h in again.history] == pytest.approx([h["val_loss"] for h in best.history], rel=1e-6)
    with pytest.raises(ConfigError, match="best_trial"):
        dataclasses.replace(result, best_trial=None).best_train_config()


def test_an_adamw_recommendation_trains_again_with_its_optimizer(tmp_path: Path) -> None:
    """A newcomer retrained an AdamW study's recommendation by the README's recipe: ctx.make_optimizer built plain
    SGD (the run was given no optimizer), and the rerun's losses were far from the trial's without a word."""
    from bstune.training import run_function

    space = SPACE | {
        "lr": {"min": 1e-3, "max": 0.1},
        "optimizer": {"family": "adamw", "betas": [0.9, 0.99]},
        "params": {"weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
    }
    result = bstune.Study(loop, space, **(ARGS | {"rescore_top": 0, "pruner": "none", "n_trials": 3})).run()
    best = next(t for t in result.trials if t.number == result.best_trial)
    spec = result.best_optimizer()
    assert (spec.family, spec.betas) == ("adamw", (0.9, 0.99))
    assert spec.weight_decay == result.best_config["weight_decay"] != 0.0  # the value the trial drew
    config = result.best_train_config()
    again, _ = run_function(loop, config, params=result.best_config, optimizer=spec)
    assert [h.val_loss for h in again.history] == pytest.approx([h["val_loss"] for h in best.history], rel=1e-6)
    with pytest.raises(ConfigError, match=r"ctx.make_optimizer.*optimizer=result.best_optimizer\(\)"):
        run_function(loop, config, params=result.best_config)
    nesterov = dataclasses.replace(  # a searched momentum of 0 under a nesterov space: built as plain SGD, as trained
        result, optimizer="sgd", optimizer_spec={**dataclasses.asdict(bstune.OptimizerSpec("sgd", momentum=0.9,
        nesterov=True)), "betas": [0.9, 0.999]}, best_config={**result.best_config, "momentum": 0.0},
    )  # fmt: skip
    assert nesterov.best_optimizer().nesterov is False and nesterov.best_optimizer().momentum == 0.0
    result.save(tmp_path)
    loaded = bstune.StudyResult.load(tmp_path)
    assert loaded.best_optimizer() == spec and loaded.subject == result.subject == "function"


def test_an_objective_that_improves_against_its_declared_direction_is_called_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A newcomer's training function reported an R² and ran with --direction minimize: the study recommended its
    worst trial without a word (a Task's declared metric refuses the contradiction; a function's cannot)."""
    from bstune.report._markdown import render_markdown

    def scored(ctx: TrialContext) -> None:  # :func:`loop`, reporting val_score = -val_loss: higher is better
        report = ctx.report
        ctx.report = lambda **m: report(val_score=-m["val_loss"])  # type: ignore[method-assign]
        loop(ctx)

    args = ARGS | {"objective": "val_score", "rescore_top": 0, "pruner": "none", "n_trials": 4}
    space = {**SPACE, "lr": {"min": 0.05, "max": 1.0}}  # rates that train, so the score rises
    with caplog.at_level("WARNING", logger="bstune.study._study"):
        wrong = bstune.Study(scored, space, **(args | {"direction": "minimize"})).run()
    said = [r.getMessage() for r in caplog.records if "best at the first evaluation" in r.getMessage()]
    assert len(said) == 1 and "direction is the wrong way round (direction='maximize'" in said[0]
    md = render_markdown(wrong.report().data)
    assert "**Check the direction**: val_score was best at the first evaluation and worse at the end" in md
    caplog.clear()
    with caplog.at_level("WARNING", logger="bstune.study._study"):
        right = bstune.Study(scored, space, **(args | {"direction": "maximize", "study_name": "right"})).run()
    assert not [r for r in caplog.records if "best at the first evaluation" in r.getMessage()]
    assert "direction_doubt" not in right.report().data["recommended"]


def test_a_trial_cut_short_by_ctrl_c_keeps_the_samples_it_spent(tmp_path: Path) -> None:
    """A newcomer's interrupted trial was listed with 0 samples, so what it trained was missing from the study's
    'Samples spent'; then with what it had trained at its last milestone, a second newcomer's 760 of 1,216. It
    keeps what it had trained when the interrupt landed."""
    calls: list[int] = []

    def cut(ctx: TrialContext) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second trial: Ctrl-C once it has trained 2,500 samples
            step = ctx.step

            def step_then_stop(loss: Any, **kw: Any) -> None:
                step(loss, **kw)
                if ctx.samples >= 2500:
                    raise KeyboardInterrupt

            ctx.step = step_then_stop  # type: ignore[method-assign]
        loop(ctx)

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ARGS | {"n_trials": 3, "storage": storage, "pruner": "none", "rescore_top": 0}
    with pytest.raises(KeyboardInterrupt):
        bstune.Study(cut, SPACE, **args).run()
    stored = optuna.load_study(study_name="same", storage=storage).trials
    interrupted = stored[1]
    assert interrupted.user_attrs["status"] == "interrupted"
    # the step that passed 2,500 samples, not its last milestone before (up to 4,096 / 9 short)
    batch = interrupted.user_attrs["config"]["batch_size"]
    assert 2500 <= interrupted.user_attrs["samples"] < 2500 + batch
    assert stored[0].user_attrs["samples"] >= 4096  # a finished trial keeps its outcome's count


def test_a_searched_parameter_the_loop_never_read_is_marked_in_the_recommendation(tmp_path: Path) -> None:
    """A newcomer's AdamW loop fixed its own weight decay while the space searched one: the report recommended the
    search's draw beside the settings the loop did use, and only the run's log said otherwise."""
    from bstune.report import build_report, render_markdown
    from bstune.study import format_summary

    def own_optimizer(ctx: TrialContext) -> None:  # its weight decay is SGD's default, not the trial's
        loop(ctx, optimizer=lambda params: torch.optim.SGD(params, lr=ctx.config["lr"]))

    space = SPACE | {
        "params": {
            "model.hiden": {"type": "int", "low": 4, "high": 32},
            "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        }
    }
    result = bstune.Study(own_optimizer, space, **(ARGS | {"n_trials": 3, "rescore_top": 0})).run()
    completed = [t for t in result.trials if t.status == "completed"]
    assert completed and all(t.unread_params == ["model.hiden", "weight_decay"] for t in completed)
    result.save(tmp_path)
    loaded = bstune.StudyResult.load(tmp_path)
    assert [t.unread_params for t in loaded.trials] == [t.unread_params for t in result.trials]
    rec = build_report(loaded).recommended
    assert rec["unread_params"] == ["model.hiden", "weight_decay"]
    text = render_markdown(build_report(loaded).data)
    (advice,) = [line for line in text.splitlines() if line.startswith("**Train with")]
    assert "hiden" not in advice and "weight_decay" not in advice  # not among the settings to train with
    drawn = f"model.hiden = {rec['model.hiden']}, weight_decay = "
    assert f"**Not applied**: the search drew {drawn}" in text
    assert "ctx.model_kwargs, nor had ctx.make_optimizer or ctx.lr_scheduler apply them" in text
    summary = format_summary(loaded.to_dict())
    assert "not applied: model.hiden, weight_decay (the training function never read them; the values above" in summary


def _own_schedule(torch_scheduler: bool) -> Callable[[TrialContext], None]:
    """A newcomer's loop: it logs the whole config (as wandb does) and steps torch's CosineAnnealingLR, or (without
    ``torch_scheduler``) applies the trial's warmup and schedule by hand from ctx.config, step by step."""

    def train(ctx: TrialContext) -> None:
        logged = dict(ctx.config)  # every key read, to be logged
        model = net().to(ctx.device)
        opt = ctx.make_optimizer(model.parameters())
        steps = ctx.budget_samples // ctx.batch_size
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if torch_scheduler else None
        for xb, yb in ctx.loader(TRAIN):
            if sched is None:  # the trial's rate at this step, as bstune.training.lr_at gives it
                for group in opt.param_groups:
                    group["lr"] = bstune.training.lr_at(ctx.train_config, ctx.samples)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(VX), VY), width=len(logged))

    return train


@pytest.mark.parametrize("torch_scheduler", [True, False])
def test_schedule_settings_read_but_not_followed_are_not_applied(
    torch_scheduler: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer's loop read every key to log it and stepped torch's CosineAnnealingLR: the report said "Train with
    ... warmup_fraction = 0.1459, schedule = cosine" and warned of nothing, though no step ever warmed up."""
    from bstune.report import build_report, render_markdown
    from bstune.study import format_summary

    space = SPACE | {
        "lr": {"min": 1e-2, "max": 0.3},  # no trial diverges
        "params": {
            "warmup_fraction": {"type": "float", "low": 0.05, "high": 0.3},
            "schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
        },
    }
    monkey = pytest.MonkeyPatch()
    monkey.setattr("bstune.training._run_function._said_not_followed", False)
    try:
        with caplog.at_level(logging.WARNING, logger="bstune"):
            result = bstune.Study(
                _own_schedule(torch_scheduler), space, **(ARGS | {"n_trials": 2, "rescore_top": 0, "pruner": "none"})
            ).run()
    finally:
        monkey.undo()
    completed = [t for t in result.trials if t.status == "completed"]
    assert len(completed) == 2
    said = "the optimizer from ctx.make_optimizer did not follow the trial's learning rate (lr="
    if torch_scheduler:
        assert all(t.unread_params == ["schedule", "warmup_fraction"] for t in completed)
        assert said in caplog.text and "the first at step 0 with rate" in caplog.text
        assert "never read the space's searched parameter" not in caplog.text  # it read them: said as not followed
        text = render_markdown(build_report(result).data)
        assert "(or, for the schedule's, read them while its optimizer's rate followed a schedule of its own)" in text
        assert "not applied: schedule, warmup_fraction (the training function either never read them or stepped" in (
            format_summary(result.to_dict())
        )
    else:  # by hand, step by step: followed
        assert all(t.unread_params == [] for t in completed) and said not in caplog.text


def test_searched_settings_applied_through_the_helpers_are_not_marked() -> None:
    """The shared loop builds its optimizer with ctx.make_optimizer and its schedule with ctx.lr_scheduler: the
    weight decay and warmup the space searched reached the run, though the loop never read them itself."""
    from bstune.report import build_report

    space = SPACE | {
        "params": {
            "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.3},
        }
    }
    result = bstune.Study(loop, space, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
    assert result.trials and all(t.unread_params == [] for t in result.trials)
    assert "unread_params" not in build_report(result).recommended


def test_a_loop_that_batches_at_its_own_size_gets_no_batch_size_recommended(caplog: pytest.LogCaptureFixture) -> None:
    """A newcomer's loop batched with a DataLoader(batch_size=200) of its own and never read the trial's: every
    trial trained at 200, and the report said "Train with batch size 7", with no warning."""
    from bstune.report import build_report, render_markdown

    own_batches = own_loader_loop(256, loader_batch=32, count=False, report=True)
    with caplog.at_level(logging.WARNING, logger="bstune"):
        result = bstune.Study(own_batches, SPACE, **(ARGS | {"n_trials": 3, "rescore_top": 0})).run()
    completed = [t for t in result.trials if t.status == "completed"]
    assert completed and all(t.unread_params == ["batch_size"] for t in completed)  # its rate came from the helpers
    assert "never read the space's searched parameter(s) 'batch_size'" in caplog.text
    assert "nor used ctx.loader (batches of the trial's batch size)" in caplog.text
    text = render_markdown(build_report(result).data)
    rec = build_report(result).recommended
    (advice,) = [line for line in text.splitlines() if line.startswith("**Train with")]
    assert advice.startswith(
        f"**Train with learning rate {rec['lr']:.4g}, at the loop's own batch size (the search's "
        f"{rec['batch_size']} never reached it)**"
    )
    assert "**The loop trained at its own batch size**: the training function never read the trial's batch size" in text
    assert "**Not applied**" not in text  # said once, above


def test_a_loop_that_logs_its_config_but_hard_codes_its_rate_gets_no_rate_recommended(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's loop logged ctx.config whole (every key read) and built AdamW(lr=3e-4) itself: every trial
    trained at 3e-4, and the report recommended the rate the search drew, unsaid."""
    from bstune.report import build_report, render_markdown
    from bstune.study import format_summary

    monkeypatch.setattr("bstune.training._run_function._said_not_followed", False)
    with caplog.at_level(logging.WARNING, logger="bstune"):
        result = bstune.Study(
            own_loop(hard_coded), SPACE, **(ARGS | {"n_trials": 2, "rescore_top": 0, "pruner": "none"})
        ).run()
    assert all(t.unread_params == ["lr"] for t in result.trials)
    assert caplog.text.count("the loop's own AdamW did not follow the trial's learning rate") == 1
    text = render_markdown(build_report(result).data)
    rec = build_report(result).recommended
    assert f"at the loop's own learning rate (the search's {rec['lr']:.4g} never reached it)**" in text
    assert ", or it read the learning rate (a config logged whole, say) while its optimizer stepped at rates" in text
    assert (
        "not applied: lr (the training function either never read it or stepped its optimizer at rates other than "
        "the trial's; the value above is the search's draw, not what the loop trained with)"
    ) in format_summary(result.to_dict())


def test_a_loop_that_reads_the_batch_size_through_ctx_is_not_told(caplog: pytest.LogCaptureFixture) -> None:
    own_loader = own_loader_loop(256, loader_batch=None, count=False, report=True)  # batches at ctx.batch_size
    with caplog.at_level(logging.WARNING, logger="bstune"):
        result = bstune.Study(own_loader, SPACE, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
    assert all(not t.unread_params for t in result.trials if t.status == "completed")
    assert "never read" not in caplog.text


def _plain_loop(ctx: TrialContext, batch_size: int, lr: float) -> None:
    """A loop with a DataLoader and optimizer of its own, at the batch size and rate it is given."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    while not ctx.done:
        for xb, yb in torch.utils.data.DataLoader(TRAIN, batch_size=batch_size, shuffle=True, drop_last=True):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ctx.step(loss):
                break
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(VX), VY))


def test_a_loop_that_reads_the_train_config_or_pickles_ctx_config_is_not_told(caplog: pytest.LogCaptureFixture) -> None:
    """A reviewer's loop batched by ``ctx.train_config.batch_size`` and set ``lr=ctx.train_config.lr`` (a
    documented attribute), and another sent a pickled ``ctx.config`` to processes of its own: both were told
    they never applied the trial's batch size and rate."""
    import pickle

    def by_train_config(ctx: TrialContext) -> None:
        _plain_loop(ctx, ctx.train_config.batch_size, ctx.train_config.lr)

    def pickles_config(ctx: TrialContext) -> None:
        sent = pickle.loads(pickle.dumps(ctx.config))  # what its own ranks would read
        _plain_loop(ctx, sent["batch_size"], sent["lr"])

    def fixed(ctx: TrialContext) -> None:  # the control: its own batch size and rate
        _plain_loop(ctx, 32, 0.1)

    for fn in (by_train_config, pickles_config, fixed):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bstune"):
            result = bstune.Study(fn, SPACE, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
        unread = {k for t in result.trials if t.status == "completed" for k in t.unread_params}
        assert unread == ({"batch_size", "lr"} if fn is fixed else set()), fn.__name__


@pytest.mark.parametrize("mode", ["baseline", "prior"])
def test_a_loop_that_hard_codes_what_the_space_fixes_is_not_told(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """A newcomer fixed the batch size in the space (min == max == 32) and, since nothing was searched there,
    batched at 32 in their own DataLoader: they were told the loop trained at its own batch size, and the
    report gave no batch size. A model setting with one value, left to the loop's own default, is no miss
    either (the prior mode's probe runs included); the learning rate, searched and never applied, still is."""
    from bstune.report import build_report, render_markdown

    space = SPACE | {
        "batch_size": {"min": 32, "max": 32},
        "params": {"model.width": {"type": "int", "low": 16, "high": 16}},
    }

    def hard_coded(ctx: TrialContext, *, apply_lr: bool = True) -> None:
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"] if apply_lr else 0.1)
        sched = ctx.lr_scheduler(opt) if apply_lr else None  # the probe's ramp goes through it
        noise = ctx.noise_tracker(model)  # the probe's B_simple
        while not ctx.done:
            for xb, yb in torch.utils.data.DataLoader(TRAIN, batch_size=32, shuffle=True, drop_last=True):
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                noise.observe()
                opt.step()
                if sched is not None:
                    sched.step()
                if ctx.step(loss):
                    break
                if ctx.at_milestone():
                    with torch.no_grad():
                        ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    with caplog.at_level(logging.WARNING, logger="bstune"):  # re-scoring's runs too (they lost the fixed set once)
        result = bstune.Study(hard_coded, space, **(ARGS | {"n_trials": 2, "rescore_top": 1, "mode": mode})).run()
    completed = [t for t in result.trials if t.status == "completed"]
    assert completed and all(t.batch_size == 32 and t.unread_params == [] for t in completed)
    assert result.rescored and "never read" not in caplog.text
    text = render_markdown(build_report(result).data)
    (advice,) = [line for line in text.splitlines() if line.startswith("**Train")]
    assert advice.startswith("**Train with batch size 32 and learning rate"), advice
    if mode == "prior":  # what the report and summary say of one batch size, said once and in the singular
        from bstune.study._summary import format_summary

        assert "The prior drew its first trials from batch size 32 (the only one the search allows)" in text
        assert "keeping its width" not in text and "Trials ran at one batch size, 32;" in text
        (probe_line,) = [line for line in format_summary(result.to_dict()).splitlines() if "LR ceiling" in line]
        assert probe_line.count("at B=32") == 1 and "widened for another seed" in probe_line, probe_line

    if mode == "baseline":  # the control: the searched rate never reaches its optimizer (the probe needs it to)
        result = bstune.Study(
            functools.partial(hard_coded, apply_lr=False), space, **(ARGS | {"n_trials": 2, "rescore_top": 0})
        ).run()
        assert {k for t in result.trials if t.status == "completed" for k in t.unread_params} == {"lr"}


def test_a_loop_that_returns_extra_metrics_or_an_empty_dict_runs_through_the_probe() -> None:
    """A newcomer's loop ended with ``return last`` (``{}`` until its first milestone, its last metrics after):
    the probe's range test, which evaluates nothing, failed with "ctx.report: reported nothing but not the
    study's objective"; a loop returning ``{"note": 1.0}`` after reporting every milestone failed there too."""

    def returns_empty(ctx: TrialContext) -> dict[str, float]:
        tracked_loop(ctx)
        return {}

    def returns_extra(ctx: TrialContext) -> dict[str, float]:
        tracked_loop(ctx)
        return {"note": 1.0}

    for fn in (returns_empty, returns_extra):
        result = bstune.Study(fn, SPACE, **(ARGS | {"mode": "prior", "n_trials": 2, "rescore_top": 0})).run()
        assert result.probe is not None and all(t.status == "completed" for t in result.trials), fn.__name__


def test_a_loop_that_returns_no_objective_for_its_unreported_milestones_is_told_so() -> None:
    def returns_other(ctx: TrialContext) -> dict[str, float]:
        tracked_loop(ctx, report=False)
        return {"note": 1.0}

    with pytest.raises(StudyFailedError, match=re.escape("the training function's return value: returned note but")):
        bstune.Study(returns_other, SPACE, **(ARGS | {"n_trials": 2, "rescore_top": 0})).run()
