"""A user's training function run by :func:`run_function` counts, schedules, stops and fails as the trainer does."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bstune
from bstune.errors import ConfigError
from bstune.training import Decision, LRRamp, RunStatus, TrainConfig, TrialContext, TrialPruned, lr_at, run_function
from bstune.training._context import SPIN_READS

G = torch.Generator().manual_seed(0)
X = torch.randn(600, 8, generator=G)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
TRAIN = torch.utils.data.TensorDataset(X[:480], Y[:480])
VX, VY = X[480:], Y[480:]


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def task() -> bstune.Task:
    return bstune.Task(model=net, train_data=(X[:480], Y[:480]), val_data=(VX, VY), loss=nn.CrossEntropyLoss())


def loop(ctx: TrialContext, optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> None:
    """The trainer's own loop, written as a user would: the space's optimizer (or ``optimizer(params)``),
    the trial's schedule, val loss at milestones."""
    model = net().to(ctx.device)
    opt = (optimizer or ctx.make_optimizer)(model.parameters())
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
                ctx.report(val_loss=F.cross_entropy(model(VX), VY))


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(batch_size=42, lr=0.08, max_samples=4096),  # batches that do not divide the data
        TrainConfig(batch_size=32, lr=0.3, max_samples=3000, momentum=0.9, warmup_samples=600, schedule="cosine"),
    ],
)
def test_a_function_that_mirrors_the_trainer_gets_its_values_to_the_last_digit(config: TrainConfig) -> None:
    mine, ctx = run_function(loop, config)
    theirs = bstune.train(task(), config)
    assert mine.status is theirs.status is RunStatus.COMPLETED
    assert [r.samples for r in mine.history] == [r.samples for r in theirs.history]
    assert [r.milestone for r in mine.history] == [r.milestone for r in theirs.history]
    assert [r.val_loss for r in mine.history] == pytest.approx([r.val_loss for r in theirs.history], rel=1e-6)
    assert [r.lr for r in mine.history] == pytest.approx([r.lr for r in theirs.history], rel=1e-12)
    assert (mine.samples, mine.steps) == (theirs.samples, theirs.steps) and ctx.n_train == 480


def test_the_scheduler_sets_the_trials_rates_and_keeps_group_ratios() -> None:
    config = TrainConfig(batch_size=16, lr=0.5, max_samples=1600, warmup_samples=320, schedule="linear")
    seen: list[tuple[float, float]] = []

    def fn(ctx: TrialContext) -> None:
        a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.05}], lr=0.5)
        sched = ctx.lr_scheduler(opt)
        while not ctx.done:
            seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
            sched.step()
            ctx.step(0.0)

    run_function(fn, config)
    expected = [lr_at(config, k * 16) for k in range(100)]
    assert [s[0] for s in seen] == pytest.approx(expected)
    assert [s[1] for s in seen] == pytest.approx([0.1 * e for e in expected])


def test_a_group_added_mid_run_keeps_its_ratio_to_the_trials_rate() -> None:
    """Progressive unfreezing (opt.add_param_group mid-run) failed with zip()'s "argument 2 is shorter"."""
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 20, warmup_samples=32 * 10)
    rates: list[list[float]] = []

    def fn(ctx: TrialContext) -> None:
        model = net()
        first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
        opt = torch.optim.SGD(first, lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            rates.append([group["lr"] for group in opt.param_groups])
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.steps == 4:
                opt.add_param_group({"params": rest, "lr": 0.1 * ctx.config["lr"]})

    result, _ = run_function(fn, config)
    assert result.status is RunStatus.COMPLETED, result.message
    schedule = [lr_at(config, 32 * k) for k in range(20)]
    assert [r[0] for r in rates] == pytest.approx(schedule, rel=1e-9)
    assert [r[1] for r in rates[5:]] == pytest.approx([0.1 * lr for lr in schedule[5:]], rel=1e-9)


def test_a_group_frozen_at_rate_zero_stays_frozen() -> None:
    """Fine-tuning's frozen backbone (``lr=0``) was given the trial's full rate: a ratio of 0 read as none."""
    config = TrainConfig(batch_size=16, lr=0.5, max_samples=320, warmup_samples=64)
    seen: list[tuple[float, float]] = []

    def fn(ctx: TrialContext) -> None:
        a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([{"params": [a], "lr": 0.0}, {"params": [b]}], lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        while not ctx.done:
            seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
            sched.step()
            ctx.step(0.0)

    run_function(fn, config)
    assert [s[0] for s in seen] == [0.0] * 20 and seen[-1][1] == 0.5


def _moved(opt: torch.optim.Optimizer, how: str) -> torch.optim.Optimizer:
    """``opt`` with its rates moved from the ones it was built at, by a torch scheduler or a loaded state."""
    if how == "lambda":
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.01)
    elif how == "onecycle":
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.defaults["lr"], total_steps=100)
    else:
        state = opt.state_dict()
        for group in state["param_groups"]:
            group["lr"] = 0.04 * group["lr"]
        opt.load_state_dict(state)
    return opt


@pytest.mark.parametrize(
    "build",
    [
        lambda params, lr: torch.optim.Adam(params),  # its default rate, 1e-3
        lambda params, lr: torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1),
        lambda params, lr: torch.optim.AdamW([{"params": params[:1], "lr": 1e-5}, {"params": params[1:], "lr": 1e-3}]),
        lambda params, lr: _moved(torch.optim.SGD(params, lr=lr), "lambda"),  # another scheduler moved it first
        lambda params, lr: _moved(torch.optim.SGD(params, lr=lr), "onecycle"),
        lambda params, lr: _moved(torch.optim.SGD(params, lr=lr), "checkpoint"),  # a state saved mid-warmup
    ],
)
def test_an_optimizer_built_at_another_rate_than_the_trials_is_refused(
    build: Callable[[list[nn.Parameter], float], torch.optim.Optimizer],
) -> None:
    """``Adam(params)`` trained every trial at 1e-3, whatever the search drew: the scheduler keeps a group's ratio
    to the trial's rate, and no rate of the optimizer was it."""
    config = TrainConfig(batch_size=16, lr=0.5, max_samples=320, warmup_samples=64)

    def fn(ctx: TrialContext) -> None:
        ctx.lr_scheduler(build([nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))], ctx.config["lr"]))

    with pytest.raises(
        ConfigError, match=r"ctx.lr_scheduler: the optimizer was built at lr [0-9e., -]+, and no parameter group is at"
    ):
        run_function(fn, config)


@pytest.mark.parametrize("stepped", ["once per epoch", "never", "twice a step", "accumulating over batches"])
def test_a_scheduler_not_stepped_once_per_optimizer_step_is_refused(stepped: str) -> None:
    """Stepped once per epoch (torch's idiom), the optimizer kept its first rate while the trial recorded the
    schedule's and the probe's range test a ceiling from rates it never set (a reviewer's repro: 0.06 for 3).
    A newcomer's loop that accumulated two batches per optimizer step, counting each with ctx.step, was probed
    as if at half its batch: B_simple 1119 where the same loop without accumulation measures 30."""
    config = TrainConfig(batch_size=30, lr=0.01, max_samples=30 * 40)

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        while not ctx.done:
            for k, (xb, yb) in enumerate(torch.utils.data.DataLoader(TRAIN, batch_size=ctx.batch_size, drop_last=True)):
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                if stepped == "accumulating over batches" and k % 2 == 0:
                    ctx.step(loss)  # counted, but the optimizer steps every other batch
                    continue
                opt.step()
                opt.zero_grad()
                for _ in range(2 if stepped == "twice a step" else 1 if stepped.startswith("accumulating") else 0):
                    sched.step()
                if ctx.step(loss):
                    break
            if stepped == "once per epoch":
                sched.step()

    with pytest.raises(
        ConfigError, match=r"ctx.lr_scheduler: .* stepped \d+ times? over \d+ ctx.step calls: call sched"
    ):
        run_function(fn, config)


@pytest.mark.parametrize("made_first", ["slow", "fast"])
def test_every_scheduler_is_checked_whichever_was_made_last(made_first: str) -> None:
    """Only the newest was: a scheduler stepped every other step passed if it had been made first (a reviewer)."""
    config = TrainConfig(batch_size=30, lr=0.01, max_samples=30 * 40)

    def fn(ctx: TrialContext) -> None:
        first, second = net(), net()
        opts = [ctx.make_optimizer(m.parameters()) for m in (first, second)]
        scheds = [ctx.lr_scheduler(o) for o in opts]
        slow = scheds[0] if made_first == "slow" else scheds[1]
        for k, (xb, yb) in enumerate(ctx.loader(TRAIN)):
            loss = F.cross_entropy(first(xb), yb) + F.cross_entropy(second(xb), yb)
            loss.backward()
            for opt, sched in zip(opts, scheds, strict=True):
                opt.step()
                opt.zero_grad()
                if sched is not slow or k % 2:
                    sched.step()
            ctx.step(loss)

    with pytest.raises(ConfigError, match=r"stepped \d+ times over \d+ ctx.step calls"):
        run_function(fn, config)


def test_an_amp_loop_whose_scaler_skips_its_first_steps_is_not_refused() -> None:
    """fp16's scaler skips the optimizer's first steps while its scale is too large, and the usual loop skips
    sched.step() with them: refused at its second step by a check that allowed one step apart (a reviewer)."""
    config = TrainConfig(batch_size=30, lr=0.01, max_samples=30 * 40)
    rates: list[float] = []

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        for k, (xb, yb) in enumerate(ctx.loader(TRAIN)):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            skipped = k < 6  # as GradScaler.step skips while the scaled gradients overflow
            if not skipped:
                opt.step()
                sched.step()
            rates.append(opt.param_groups[0]["lr"])
            ctx.step(loss)

    result, _ = run_function(fn, config)
    assert result.status is RunStatus.COMPLETED and result.samples == config.max_samples


def test_two_loaders_zipped_each_keep_their_own_stream() -> None:
    """zip(ctx.loader(labeled), ctx.loader(unlabeled)), one step a pair, was stopped at half its budget for
    taking twice the samples it counted (a reviewer)."""
    a = torch.utils.data.TensorDataset(torch.arange(50))
    b = torch.utils.data.TensorDataset(torch.arange(100, 170))
    seen: list[tuple[list[int], list[int]]] = []

    def fn(ctx: TrialContext) -> None:
        for (x,), (y,) in zip(ctx.loader(a), ctx.loader(b), strict=False):
            seen.append((x.tolist(), y.tolist()))
            ctx.step()

    result, _ = run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160, seed=3))
    assert result.status is RunStatus.COMPLETED and result.samples == 160 and len(seen) == 10
    assert all(max(x) < 50 and min(y) >= 100 for x, y in seen)


def test_a_loader_on_a_dataset_made_again_each_epoch_goes_on_where_the_last_one_left_off() -> None:
    runs: dict[bool, list[list[int]]] = {True: [], False: []}
    data = torch.utils.data.TensorDataset(torch.arange(50))

    for remade in (True, False):

        def fn(ctx: TrialContext, remade: bool = remade) -> None:
            while not ctx.done:
                dataset = torch.utils.data.TensorDataset(torch.arange(50)) if remade else data
                for k, (idx,) in enumerate(ctx.loader(dataset)):
                    runs[remade].append(idx.tolist())
                    ctx.step()
                    if k == 2:
                        break

        run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160, seed=3))
    assert len(runs[True]) == 10 and runs[True] == runs[False]


@pytest.mark.parametrize("order", ["sched.step() first", "ctx.step() first"])
def test_a_scheduler_stepped_before_or_after_ctx_step_keeps_the_schedule(order: str) -> None:
    config = TrainConfig(batch_size=30, lr=0.01, max_samples=30 * 40, warmup_samples=300)
    rates: list[float] = []

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            if order == "ctx.step() first":
                ctx.step(loss)
                sched.step()
            else:
                sched.step()
                ctx.step(loss)

    result, _ = run_function(fn, config)
    assert result.status == RunStatus.COMPLETED and len(rates) == 40
    assert rates == pytest.approx([lr_at(config, 30 * k) for k in range(40)], rel=1e-9)


def test_groups_at_multiples_of_the_trials_rate_and_an_optimizer_made_again_mid_run_keep_the_schedule() -> None:
    """Groups at 0.1x and 10x the trial's rate (the optimizer's default at it) keep their ratios. An optimizer made
    again mid-run with ctx.make_optimizer (unfreezing a backbone) is built at the rate of the step under way: it
    was refused, and before that trained at the warmup's rate of the moment for the rest of the run."""
    config = TrainConfig(batch_size=16, lr=0.5, max_samples=640, warmup_samples=160, schedule="linear")
    seen: list[list[float]] = []

    def fn(ctx: TrialContext) -> None:
        a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        lr = ctx.config["lr"]
        opt = torch.optim.SGD([{"params": [a], "lr": 0.1 * lr}, {"params": [b], "lr": 10 * lr}], lr=lr)
        sched = ctx.lr_scheduler(opt)
        while not ctx.done:
            if ctx.steps == 5:  # mid-warmup
                opt = ctx.make_optimizer([a, b])
                sched = ctx.lr_scheduler(opt)
            seen.append([group["lr"] for group in opt.param_groups])
            sched.step()
            ctx.step(0.0)

    run_function(fn, config)
    expected = [lr_at(config, k * 16) for k in range(40)]
    assert [s[0] for s in seen[:5]] == pytest.approx([0.1 * e for e in expected[:5]])
    assert [s[1] for s in seen[:5]] == pytest.approx([10 * e for e in expected[:5]])
    assert [s[0] for s in seen[5:]] == pytest.approx(expected[5:])  # the schedule goes on, from step 5


def test_the_loader_runs_epochs_in_the_trainers_order_and_stops_when_done() -> None:
    batches: list[list[int]] = []
    data = torch.utils.data.TensorDataset(torch.arange(50))

    def fn(ctx: TrialContext) -> None:
        for (idx,) in ctx.loader(data):
            batches.append(idx.tolist())
            ctx.step()

    result, _ = run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160, seed=3))
    assert len(batches) == 10 and result.samples == 160 and all(len(b) == 16 for b in batches)
    gen = torch.Generator().manual_seed(3 + 1)
    first, second = torch.randperm(50, generator=gen), torch.randperm(50, generator=gen)
    assert batches[:3] == [first[i : i + 16].tolist() for i in (0, 16, 32)]  # two left over: dropped
    assert batches[3] == second[:16].tolist()


@pytest.mark.parametrize("order", ["epoch", "draw"])
def test_a_loader_opened_again_goes_on_where_the_last_one_left_off(order: str) -> None:
    """A loop that broke out every 4 steps (an "epoch" of its own, to evaluate) and opened ctx.loader again
    trained on the same 4 seeded batches over and over: 128 examples of 320 seen, and the trial "completed"."""
    data = torch.utils.data.TensorDataset(torch.arange(50))
    runs: dict[int, list[list[int]]] = {}
    for every in (4, 0):  # broken out of every 4 batches, and never

        def fn(ctx: TrialContext, every: int = every) -> None:
            while not ctx.done:
                for k, (idx,) in enumerate(ctx.loader(data)):
                    runs.setdefault(every, []).append(idx.tolist())
                    ctx.step()
                    if k + 1 == every:
                        break

        run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160, seed=3), order=order)
    assert len(runs[4]) == 10 and runs[4] == runs[0]


def test_a_loop_that_never_calls_ctx_step_is_stopped_with_an_error_naming_it_not_left_to_run_for_ever() -> None:
    """The stream ends on ctx.step's count; without it a study hung at its first trial (seen by a newcomer)."""
    taken: list[int] = []

    def forgetful(ctx: TrialContext) -> None:
        for (idx,) in ctx.loader(torch.utils.data.TensorDataset(torch.arange(50))):
            taken.append(len(idx))  # trains, but never tells ctx.step
            if len(taken) > 1000:  # so that the test fails, not hangs, where the stream does not stop it
                return

    with pytest.raises(ConfigError, match=r"took 96 samples from ctx.loader but counted 0 with ctx.step \(0 call"):
        run_function(forgetful, TrainConfig(batch_size=16, lr=0.1, max_samples=160))
    assert sum(taken) == 96  # half the budget (80) and a batch: then the loop is stopped


def test_gradient_accumulation_over_micro_batches_of_the_studys_batch_counts_each_step_once() -> None:
    """The study's batch size is one optimizer step's: a loop that splits each batch into micro-batches
    and counts the step once trains the budget, at the trial's schedule step for step."""
    micro: list[int] = []
    rates: list[float] = []

    def accumulating(ctx: TrialContext) -> None:
        model = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for (x,) in ctx.loader(torch.utils.data.TensorDataset(torch.randn(50, 1))):
            for part in x.split(4):
                micro.append(len(part))
                (model(part).pow(2).mean() * len(part) / len(x)).backward()
            rates.append(opt.param_groups[0]["lr"])
            opt.step(), sched.step(), opt.zero_grad()
            ctx.step()

    cfg = TrainConfig(batch_size=16, lr=0.1, max_samples=640, schedule="cosine", warmup_samples=160)
    result, _ = run_function(accumulating, cfg)
    assert result.samples == 640 and micro == [4] * 160
    assert rates[9] == pytest.approx(0.1) and rates[-1] < 0.01  # warmup ends at 160 samples (10 steps), not 640


@pytest.mark.parametrize("samples", [64, 17])
def test_counting_more_than_a_steps_batch_is_refused_and_says_how_to_accumulate(samples: int) -> None:
    """ctx.step(samples=k*B) every k batches made the effective batch k times the study's B: every rate,
    temperature and noise scale then belonged to another batch size, and the study finished normally."""

    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(torch.utils.data.TensorDataset(torch.arange(50))):
            ctx.step(samples=samples)

    with pytest.raises(ConfigError, match=r"ctx.step: samples: must be at most the step's batch size 16, got ") as e:
        run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=640))
    assert "split each batch x from ctx.loader into micro-batches (x.split(m)), weigh each" in str(e.value)

    def none(ctx: TrialContext) -> None:
        for _ in ctx.loader(torch.utils.data.TensorDataset(torch.arange(50))):
            ctx.step(samples=0)

    with pytest.raises(ConfigError, match=r"ctx.step: samples: must be at least 1 \(the examples this step") as e:
        run_function(none, TrainConfig(batch_size=16, lr=0.1, max_samples=640))
    assert "micro-batches" not in str(e.value)


def test_a_short_last_batch_of_a_loader_of_ones_own_counts_what_it_holds() -> None:
    def fn(ctx: TrialContext) -> None:
        data = torch.utils.data.TensorDataset(torch.arange(40))
        while not ctx.done:
            for (x,) in torch.utils.data.DataLoader(data, batch_size=ctx.batch_size):  # 16, 16, 8
                if ctx.step(samples=len(x)):
                    return

    result, ctx = run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160))
    assert result.samples == 160 and ctx.steps == 12  # 40 samples in 3 steps, four times


@pytest.mark.parametrize("bad", ["batch_size", "shuffle", "sampler", "drop_last"])
def test_the_loader_refuses_to_be_told_the_batch_size_or_order(bad: str) -> None:
    def fn(ctx: TrialContext) -> None:
        ctx.loader(TRAIN, **{bad: 4})

    with pytest.raises(ConfigError, match=f"ctx.loader: {bad}: the study sets"):
        run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=160))


def test_a_stop_at_a_milestone_raises_trial_pruned_and_the_run_is_stopped_there() -> None:
    calls: list[int] = []

    def stop_at_third(record: Any) -> Decision:
        calls.append(record.milestone)
        return Decision.STOP if len(calls) == 3 else Decision.CONTINUE

    result, ctx = run_function(loop, TrainConfig(batch_size=32, lr=0.1, max_samples=3200), stop_at_third)
    assert result.status is RunStatus.STOPPED and calls == [320, 640, 960]
    assert result.samples == 960 and ctx.done


def test_a_function_that_swallows_trial_pruned_is_still_pruned() -> None:
    def stubborn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(1.0)
            if ctx.at_milestone():
                with contextlib.suppress(TrialPruned):
                    ctx.report(val_loss=1.0)

    result, _ = run_function(stubborn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200), lambda r: True)
    assert result.status is RunStatus.STOPPED and result.samples == 320  # the loader ended the loop


def test_a_stop_at_the_last_milestone_changes_nothing() -> None:
    result, _ = run_function(
        loop, TrainConfig(batch_size=32, lr=0.1, max_samples=640, eval_every_samples=640), lambda r: True
    )
    assert result.status is RunStatus.COMPLETED


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e9])
def test_a_loss_that_blows_up_ends_the_run_diverged(bad: float) -> None:
    def fn(ctx: TrialContext) -> None:
        for i, _ in enumerate(ctx.loader(TRAIN)):
            ctx.step(1.0 if i < 5 else bad)

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and result.samples == 6 * 32
    assert "at step 5 (samples 160)" in result.message  # as the trainer says it: samples before the step


def test_a_run_that_trained_its_budget_without_reporting_its_last_milestone_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's loop evaluated every 7 steps of its own: a trial "completed" with its value from 2,716 of 3,000
    samples, ranked against trials evaluated at 3,000, and nothing said so."""
    monkeypatch.setattr("bstune.training._context._last_unreported_said", False)

    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(1.0)
            if ctx.steps % 7 == 0:
                ctx.report(val_loss=0.5)

    with caplog.at_level(logging.WARNING, logger="bstune"):
        result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))  # 100 steps: 98 the last
    # recorded: the first report past each milestone; the last at step 91, past 2,880
    assert result.status is RunStatus.COMPLETED and result.history[-1].samples == 91 * 32
    assert result.message == (
        "its last milestone (3,200 samples) was not reported: its value is the evaluation recorded for 2,880 samples "
        "(at 2,912); report when ctx.at_milestone()"
    )
    assert "reported no evaluation at its last milestone" in caplog.text
    done, _ = run_function(loop, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))  # at its milestones
    assert done.message == ""


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor reads that wait for the device (``float(t)``, ``t.item()``, ``t.tolist()``, ``bool(t)``)."""

    READS = frozenset({"__float__", "__int__", "__bool__", "item", "tolist"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_a_tensor_loss_is_read_on_the_host_every_16_steps_not_every_step() -> None:
    # each read is a host sync, which on a GPU stalls the queue of kernels: the trainer reads its losses in
    # batches, and ctx.step read every step's
    reads: list[int] = []

    def fn(ctx: TrialContext) -> None:
        host = HostReads()
        for _ in ctx.loader(TRAIN):  # the loader's own reads (its sampler's indices) are on the CPU's data
            with host:
                ctx.step(torch.tensor(1.0))
        reads.append(host.count)

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 64))
    assert result.status is RunStatus.COMPLETED and result.steps == 64
    assert reads == [64 // 16]


def test_a_rate_held_as_a_tensor_on_the_device_is_not_read_every_step() -> None:
    # a capturable or fused optimizer keeps its rate as a tensor: the schedule check read it with float() each step
    reads: list[int] = []

    def fn(ctx: TrialContext) -> None:
        opt = ctx.make_optimizer(net().parameters())
        for group in opt.param_groups:
            group["lr"] = torch.tensor(group["lr"])
        host = HostReads()
        for _ in ctx.loader(TRAIN):
            with host:
                ctx.step(torch.tensor(1.0))
        reads.append(host.count)

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 64))
    assert result.status is RunStatus.COMPLETED and reads == [64 // 16]  # the losses' reads alone


@pytest.mark.parametrize("bad", [math.nan, 1e9])
def test_a_tensor_loss_that_blows_up_ends_the_run_at_the_next_read_and_names_its_step(bad: float) -> None:
    def fn(ctx: TrialContext) -> None:
        for i, _ in enumerate(ctx.loader(TRAIN)):
            ctx.step(torch.tensor(1.0 if i < 5 else bad))

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and result.steps == 16  # read with the 16th step's
    assert "at step 5 (samples 160)" in result.message


def test_a_step_that_diverged_since_the_last_read_ends_the_run_at_the_report_unrecorded() -> None:
    def fn(ctx: TrialContext) -> None:
        for i, _ in enumerate(ctx.loader(TRAIN)):
            ctx.step(torch.tensor(1.0 if i != 8 else math.inf))
            if ctx.at_milestone():
                ctx.report(val_loss=0.5)

    # milestones every 320 samples (10 steps): the report at step 10 reads steps 1-10
    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and result.steps == 10 and result.history == []
    assert "training loss became inf at step 8 (samples 256)" in result.message


def test_a_step_that_diverged_after_the_last_read_ends_the_run_diverged_when_the_function_returns() -> None:
    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(torch.tensor(math.nan if ctx.steps == 99 else 1.0))

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))  # 100 steps: 96 read
    assert result.status is RunStatus.DIVERGED and result.steps == 100
    assert "at step 99 (samples 3168)" in result.message


def test_a_loop_that_raises_on_the_model_a_diverged_step_left_ends_diverged_not_failed() -> None:
    # a review: with the losses read every 16 steps, a loop's own code (an sklearn metric on NaN outputs) raised
    # first, and the trial counted as failed code (three of those and the study gives up), not as diverged
    def fn(ctx: TrialContext) -> None:
        for i, _ in enumerate(ctx.loader(TRAIN)):
            ctx.step(torch.tensor(math.inf if i == 3 else 1.0))
            if i == 8:
                raise ValueError("Input contains NaN")

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and "training loss became inf at step 3 (samples 96)" in result.message

    def broken(ctx: TrialContext) -> None:  # no step diverged: the loop's error goes up as before
        for i, _ in enumerate(ctx.loader(TRAIN)):
            ctx.step(torch.tensor(1.0))
            if i == 8:
                raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_function(broken, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))


def test_a_loss_buffer_the_loop_reuses_in_place_is_kept_as_each_step_gave_it() -> None:
    # a review: the kept loss was a view, so a buffer overwritten each step (a CUDA graph's output) hid the inf
    def fn(ctx: TrialContext) -> None:
        buffer = torch.zeros(())
        for i, _ in enumerate(ctx.loader(TRAIN)):
            buffer.copy_(torch.tensor(math.inf if i == 5 else 1.0))
            ctx.step(buffer)

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and "at step 5" in result.message


def _own_cosine(hand: bool) -> Callable[[TrialContext], None]:
    """A loop with its own loader (short last batches counted with samples=) whose rate follows the trial's cosine
    by hand (``hand``, lr_at at the samples trained), or torch's CosineAnnealingLR."""

    def fn(ctx: TrialContext) -> None:
        ctx.config.get("schedule")  # read, as a loop that logs its config reads it
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = None if hand else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
        data = torch.utils.data.TensorDataset(X[:100], Y[:100])
        while not ctx.done:
            for xb, yb in torch.utils.data.DataLoader(data, batch_size=ctx.batch_size):
                if hand:
                    for group in opt.param_groups:
                        group["lr"] = lr_at(ctx.train_config, ctx.samples)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if ctx.step(loss, samples=len(xb)):
                    break

    return fn


@pytest.mark.parametrize("hand", [True, False])
def test_the_schedule_check_follows_the_samples_trained_and_speaks_only_of_a_searched_schedule(
    hand: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a review: the rates expected were those of full batches, so a cosine followed by hand at the samples trained
    # (100 examples in batches of 32, 32, 32, 4) was "not applied"
    monkeypatch.setattr("bstune.training._run_function._said_not_followed", False)
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=3200, schedule="cosine")
    with caplog.at_level(logging.WARNING, logger="bstune"):
        result, ctx = run_function(_own_cosine(hand), config, params={"schedule": "cosine", "lr": 0.1})
    assert result.status is RunStatus.COMPLETED
    assert (ctx.schedule_not_followed() is None) == hand
    assert result.unread_params == ([] if hand else ["schedule"])
    assert ("did not follow the trial's learning rate (lr=0.1, schedule='cosine')" in caplog.text) != hand
    # torch's scheduler where the space searches no schedule: the study records the constant rate it meant, and
    # nothing it recommends names a schedule, so nothing is said
    monkeypatch.setattr("bstune.training._run_function._said_not_followed", False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bstune"):
        run_function(_own_cosine(False), TrainConfig(batch_size=32, lr=0.1, max_samples=3200), params={"lr": 0.1})
    assert "did not follow" not in caplog.text


def test_a_loss_of_many_numbers_is_refused_with_what_to_pass() -> None:
    def fn(ctx: TrialContext) -> None:
        for x, y in ctx.loader(TRAIN):
            ctx.step(F.cross_entropy(torch.zeros(len(x), 2), y.long() % 2, reduction="none"))

    with pytest.raises(ConfigError, match=r"ctx.step: loss: must be the step's loss, one number; got a tensor of "):
        run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))


def test_a_non_finite_reported_metric_ends_the_run_diverged() -> None:
    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(1.0)
            if ctx.at_milestone():
                ctx.report(val_loss=math.nan)

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and result.samples == 320
    assert result.message == "a reported metric became non-finite (val_loss=nan) at samples 320"


def test_a_non_finite_metric_other_than_the_objective_and_losses_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An F1 score undefined at the first evaluation (no positive prediction yet) ended the trial as diverged."""

    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(1.0)
            if ctx.at_milestone():
                ctx.report(val_loss=1.0, val_f1=math.nan if ctx.samples <= 640 else 0.5)

    with caplog.at_level("WARNING", logger="bstune.training._context"):
        result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=3200))
    assert result.status is RunStatus.COMPLETED and result.samples == 3200
    assert math.isnan(result.history[0].metrics["val_f1"]) and result.history[-1].metrics["val_f1"] == 0.5
    assert [r.getMessage() for r in caplog.records if "val_f1" in r.getMessage()] == [
        "ctx.report: val_f1 is nan at samples 320; kept as it is (a non-finite objective or loss ends the trial, "
        "another metric does not)"
    ]


def test_out_of_memory_in_the_function_ends_the_run_oom_and_other_errors_go_up() -> None:
    def oom(ctx: TrialContext) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    result, _ = run_function(oom, TrainConfig(batch_size=32, lr=0.1, max_samples=320))
    assert result.status is RunStatus.OOM and "batch_size=32" in result.message

    def broken(ctx: TrialContext) -> None:
        raise KeyError("model.width")

    with pytest.raises(KeyError):
        run_function(broken, TrainConfig(batch_size=32, lr=0.1, max_samples=320))


def test_metrics_the_function_returns_stand_for_its_last_milestone() -> None:
    def fn(ctx: TrialContext) -> dict[str, float]:
        for _ in ctx.loader(TRAIN):
            ctx.step(0.5)
        return {"val_loss": 0.25, "val_accuracy": 0.9}

    result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=640))
    assert [(r.milestone, r.val_loss, r.metrics) for r in result.history] == [(640, 0.25, {"val_accuracy": 0.9})]


def test_a_report_between_milestones_is_not_recorded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Said once per process, as the late report is: a newcomer's study repeated it once per trial."""
    from bstune.training import _context

    def fn(ctx: TrialContext) -> None:
        for _ in ctx.loader(TRAIN):
            ctx.step(0.5)
            ctx.report(val_loss=0.5)  # every step, not at milestones

    monkeypatch.setattr(_context, "_between_report_said", False)
    for _ in range(2):
        result, _ = run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=640))
        assert [r.milestone for r in result.history] == list(range(64, 641, 64))
    assert sum("between milestones" in r.message for r in caplog.records) == 1


def test_the_seed_sets_torch_numpy_and_random_and_leaves_them_as_they_were() -> None:
    draws: list[tuple[float, float, float]] = []

    def fn(ctx: TrialContext) -> None:
        draws.append((float(torch.rand(())), float(np.random.rand()), random.random()))
        ctx.step(0.0)

    random.seed(99)
    before = random.random()
    random.seed(99)
    for seed in (5, 5, 6):
        run_function(fn, TrainConfig(batch_size=320, lr=0.1, max_samples=320, seed=seed))
    assert draws[0] == draws[1] != draws[2]
    assert random.random() == before


def test_the_ramp_raises_the_rate_geometrically_and_ends_when_the_loss_doubles() -> None:
    def fn(ctx: TrialContext) -> None:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for k, _ in enumerate(ctx.loader(TRAIN)):
            sched.step()
            ctx.step(1.0 if k < 10 else 10.0)  # blows up at step 10

    result, ctx = run_function(
        fn, TrainConfig(batch_size=16, lr=1e-3, max_samples=40 * 16), ramp=LRRamp(1e-3, 1.5), order="draw"
    )
    lrs = [lr for lr, _ in ctx.ramp_curve]
    assert lrs == pytest.approx([1e-3 * 1.5**k for k in range(len(lrs))])
    assert len(lrs) < 40 and result.status is RunStatus.COMPLETED and ctx.done


def test_a_negative_loss_in_the_ramp_is_refused_naming_the_rule() -> None:
    def fn(ctx: TrialContext) -> None:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for _ in ctx.loader(TRAIN):
            sched.step()
            ctx.step(-3.0)  # a Gaussian NLL: same gradients as +3, another ceiling under a rule read against 0

    with pytest.raises(ConfigError, match=r"ctx.step: the LR range test's loss went below 0 \(-3\).*bounded below"):
        run_function(fn, TrainConfig(batch_size=16, lr=1e-3, max_samples=40 * 16), ramp=LRRamp(1e-3, 1.5))


def test_a_run_that_holds_still_trains_to_the_step_past_its_length_and_evaluates_only_before() -> None:
    """The probe's noise run (``still_after``): 1,000 samples at B=64 train 16 steps (1,024), evaluated at a
    run of 1,000's milestones, the last at 1,000; then the rate is 0 and no milestone asks for an evaluation."""
    seen: list[tuple[int, float, bool]] = []  # (samples before the step, its rate, a milestone after it)

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            before, rate = ctx.samples, opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            ctx.step(loss)
            seen.append((before, rate, ctx.at_milestone()))
            if seen[-1][2]:
                ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    config = TrainConfig(batch_size=64, lr=0.1, max_samples=1_000 + 640, eval_every_samples=300)
    result, ctx = run_function(fn, config, still_after=1_000)
    assert ctx.freeze_from == 1_024 and result.samples == 1_664
    assert [r.milestone for r in result.history] == [300, 600, 900, 1_000]
    assert [r.samples for r in result.history] == [320, 640, 960, 1_024]
    assert all(rate == 0.1 for before, rate, _ in seen if before < 1_024)
    assert all(rate == 0.0 and not evaluated for before, rate, evaluated in seen if before >= 1_024)
    assert ctx.next_milestone is None and ctx.budget_samples == 1_640  # the whole run, still phase included
    with pytest.raises(ConfigError, match="still_after"):
        run_function(fn, config, still_after=1_620)  # trains to 1,664: no still phase left
    # a decay ends where training does, as it would in a run of 1,000 samples
    seen.clear()
    decaying = dataclasses.replace(config, schedule="linear")
    run_function(fn, decaying, still_after=1_000)
    trial = dataclasses.replace(decaying, max_samples=1_000)
    assert [rate for before, rate, _ in seen if before < 1_024] == pytest.approx(
        [lr_at(trial, before) for before, _, _ in seen if before < 1_024]
    )
    staged = dataclasses.replace(config, batch_schedule=((0, 64, 0.1), (640, 128, 0.2)))
    with pytest.raises(ConfigError, match="batch_schedule"):
        run_function(fn, staged, still_after=1_000)


@pytest.mark.parametrize(
    ("seed", "loop_kind"),
    [
        (0, "plain"),
        (1, "plain"),
        (2, "plain"),
        (0, "clipped"),
        (1, "accumulated"),
        (2, "clipped+accumulated"),
        (0, "overflow"),
    ],
)
def test_the_still_phase_measures_the_exact_noise_scale_of_where_training_stopped(seed: int, loop_kind: str) -> None:
    """Ground truth: B_simple from every per-example gradient of the training set at the parameters
    the still phase holds (:func:`bstune.exact_noise_scale`). Also where the loop clips the gradient before
    noise.observe() (read from p.grad, the still phase gave 2.1x the exact value) and where it accumulates
    four micro-batches per step, observing each (it gave a tenth)."""
    kept: list[nn.Module] = []
    micro = 5 if "accumulated" in loop_kind else 16  # batches of 16 in micro-batches of 5, 5, 5 and 1

    def fn(ctx: TrialContext) -> None:
        model = net()
        kept.append(model)
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        noise = ctx.noise_tracker(model)
        for xb, yb in ctx.loader(TRAIN):
            opt.zero_grad()
            # an AMP loss scale that overflows on one still step: its gradients are inf (the scaler skips it)
            scale = 3e38 if loop_kind == "overflow" and ctx.samples == 960 + 640 else 1.0
            for x, y in zip(xb.split(micro), yb.split(micro), strict=True):
                loss = F.cross_entropy(model(x), y) * len(x) / len(xb)  # each example weighs 1/B, as the README says
                (loss * scale).backward()
                if "clipped" in loop_kind:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
                noise.observe()
            opt.step()
            sched.step()
            ctx.step(loss)

    config = TrainConfig(
        batch_size=16, lr=0.2, max_samples=960 + 3200, track_noise=True, noise_every_steps=1, seed=seed
    )
    _, ctx = run_function(fn, config, still_after=960)
    assert ctx._tracker is not None and ctx._tracker.still is not None
    est = ctx._tracker.still.estimate()
    exact = bstune.exact_noise_scale(task(), kept[0])
    assert est.ci[0] <= exact.b_simple <= est.ci[1], (est.b_simple, est.ci, exact.b_simple)
    skipped = 16 if loop_kind == "overflow" else 0
    assert est.n_examples == 3200 - 3200 % 16 - skipped and 0.5 < est.b_simple / exact.b_simple < 2.0
    # the trajectory stops where the still phase begins; the parameters did not move after it
    assert all(p.samples <= 960 for p in ctx._tracker.tracker.trajectory)  # type: ignore[union-attr]


def _noise_run(micro: int, observe_each: bool = True) -> TrialContext:
    """A probe-like run whose loop splits each batch of 16 into micro-batches of ``micro`` (the last one
    smaller where it does not divide 16), each mean loss weighed by its share of the batch."""

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        noise = ctx.noise_tracker(model)
        for xb, yb in ctx.loader(TRAIN):
            opt.zero_grad()
            for x, y in zip(xb.split(micro), yb.split(micro), strict=True):
                loss = F.cross_entropy(model(x), y) * len(x) / len(xb)
                loss.backward()
                if observe_each:
                    noise.observe()
            if not observe_each:
                noise.observe()
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.at_milestone():  # each evaluation closes a window of the trajectory
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    config = TrainConfig(batch_size=16, lr=0.2, max_samples=1600, track_noise=True, noise_every_steps=1)
    return run_function(fn, config)[1]


def test_accumulated_micro_batches_give_the_trajectory_of_the_whole_batch() -> None:
    """Micro-batches of 5, 5, 5 and 1 per step, each weighed by its share, train as one batch of 16 does (the
    same mean gradient, which loss / k over uneven parts would not give); the noise
    trajectory pools each step's micro-batches, so it is the whole batch's, labelled with its batch size."""
    whole, parts = (_noise_run(n)._tracker.tracker.trajectory for n in (16, 5))  # type: ignore[union-attr]
    assert len(whole) == len(parts) >= 4
    for a, b in zip(whole, parts, strict=True):
        assert b.b_simple == pytest.approx(a.b_simple, rel=1e-3) and b.temperature == pytest.approx(a.temperature)
        assert b.samples == a.samples and b.n_steps == a.n_steps


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("remade", ["tracker each epoch", "model and tracker mid-run"])
def test_a_tracker_made_again_measures_as_one_and_leaves_no_hooks_behind(remade: str) -> None:
    """A tracker made once per epoch left the earlier ones' hooks on the model, doing per-example work every step
    and staying after the run (12 hooks on a kept model, a reviewer's repro)."""
    models: list[nn.Module] = []

    def fn(ctx: TrialContext, again: bool) -> None:
        model = net()
        models.append(model)
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        noise = ctx.noise_tracker(model)
        for k, (xb, yb) in enumerate(ctx.loader(TRAIN)):
            if again and k and k % 20 == 0:
                if remade == "model and tracker mid-run":  # a fresh copy of the same weights, say from a checkpoint
                    fresh = net()
                    fresh.load_state_dict(model.state_dict())
                    assert _hooks(model) > 0
                    model = fresh
                    models.append(model)
                    opt = ctx.make_optimizer(model.parameters())
                    sched = ctx.lr_scheduler(opt)
                noise = ctx.noise_tracker(model)
                if remade == "model and tracker mid-run":
                    assert _hooks(models[-2]) == 0  # the old model's hooks came off
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

    config = TrainConfig(batch_size=16, lr=0.2, max_samples=1600, track_noise=True, noise_every_steps=1)
    once, again = (run_function(functools.partial(fn, again=a), config)[0] for a in (False, True))
    assert all(_hooks(m) == 0 for m in models)
    assert len(again.noise_trajectory) == len(once.noise_trajectory) >= 4
    for a, b in zip(once.noise_trajectory, again.noise_trajectory, strict=True):
        assert b.b_simple == pytest.approx(a.b_simple, rel=1e-6) and b.samples == a.samples


def test_one_observe_after_several_backward_passes_says_to_observe_each_micro_batch() -> None:
    with pytest.raises(ConfigError, match=r"ctx.noise_tracker: 4 backward passes ran since its last call: call "):
        _noise_run(4, observe_each=False)  # four micro-batches of 4


def test_steps_never_closed_by_ctx_step_are_not_pooled_into_one_batch() -> None:
    """A loop of its own that observed every step but called ctx.step every other step pooled two steps,
    taken at different parameters, into one 'batch' of 2B."""

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        noise = ctx.noise_tracker(model)
        for i, (xb, yb) in enumerate(torch.utils.data.DataLoader(TRAIN, batch_size=16)):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            noise.observe()
            opt.step()
            if i % 2:
                ctx.step()

    config = TrainConfig(batch_size=16, lr=0.2, max_samples=1600, track_noise=True, noise_every_steps=1)
    with pytest.raises(ConfigError, match=r"noise.observe\(\): has seen 32 examples since the last ctx.step"):
        run_function(fn, config)


def test_counting_part_of_a_batch_from_ctx_loader_is_refused() -> None:
    """samples=len(xm) per micro-batch: the schedule would run k times too slowly until the stream's check."""

    def fn(ctx: TrialContext) -> None:
        for (x,) in ctx.loader(torch.utils.data.TensorDataset(torch.arange(50))):
            for xm in x.split(4):
                ctx.step(samples=len(xm))

    with pytest.raises(ConfigError, match=r"ctx.step: samples: counts 4 samples for a batch of 16 from ctx.loader"):
        run_function(fn, TrainConfig(batch_size=16, lr=0.1, max_samples=640))


def test_a_second_scheduler_beside_the_trials_is_refused() -> None:
    """A newcomer kept their CosineAnnealingLR (or OneCycleLR) beside ctx.lr_scheduler: the two fought over the
    rate, the probe's range test found a ceiling 8,000x too low, and the study finished with every trial at
    chance, after one warning line. The loop's own schedule alone says nothing."""

    def two(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched, mine = ctx.lr_scheduler(opt), torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mine.step()
            sched.step()
            ctx.step(loss)

    config = TrainConfig(batch_size=32, lr=0.1, max_samples=1024)
    run_function(loop, config)
    with pytest.raises(ConfigError, match=r"ctx.lr_scheduler: the optimizer's learning rate changed between two of "
                       r"its steps \(0.1 set, 0.09990? found\): another scheduler"):  # fmt: skip
        run_function(two, config)


def test_a_report_a_step_or_more_past_its_milestone_is_named_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer evaluated every 50 steps of their own: each report was recorded for the milestone it
    passed, thousands of samples late, so trials were compared at different points, without a word."""
    from bstune.training import _context

    def every_7_steps(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.steps % 7 == 0:
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    monkeypatch.setattr(_context, "_late_report_said", False)
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=2048, eval_every_samples=256)
    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        run_function(loop, config)
        assert not [r for r in caplog.records if "recorded for the milestone" in r.getMessage()]
        run_function(every_7_steps, config)
        run_function(every_7_steps, config)
    said = [r.getMessage() for r in caplog.records if "recorded for the milestone" in r.getMessage()]
    assert len(said) == 1 and "ctx.at_milestone()" in said[0], said


def test_a_model_parameter_the_loop_never_reads_is_named_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's typo `model.hiden` in the space was searched for a whole study (the Task path refuses it,
    naming the factory's keywords); a training function reads ctx.config as it likes, so bstune notes which of
    the space's model.<name> parameters it never read."""
    import pickle

    from bstune.training import _read_config

    monkeypatch.setattr(_read_config, "_warned_unread", set())
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=640)
    # momentum and warmup reach the run through ctx.make_optimizer and ctx.lr_scheduler: not the loop's to read
    params = {"model.hiden": 49, "model.width": 16, "momentum": 0.8, "warmup_fraction": 0.1}
    kept: list[dict[str, Any]] = []

    def reads_width(ctx: TrialContext) -> None:
        assert ctx.config["model.width"] == 16
        kept.append(pickle.loads(pickle.dumps(ctx.config)))  # a copy a loop keeps is a plain dict
        loop(ctx)

    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        run_function(reads_width, config, params=params)
        run_function(reads_width, config, params=params)  # the same names: said once
    said = [r.getMessage() for r in caplog.records if "never read" in r.getMessage()]
    assert said == [
        "the training function never read the space's searched parameter(s) 'model.hiden' from ctx.config (nor "
        "ctx.model_kwargs): a misspelled name, or one the loop ignores (a value it fixes itself); the search spends "
        "its trials on them all the same, and the recommended config names values the loop never used"
    ]
    assert type(kept[0]) is dict and kept[0]["model.hiden"] == 49
    caplog.clear()
    _read_config._warned_unread.clear()  # so that each read below would be said again if it did not count

    def by_kwargs(ctx: TrialContext) -> None:
        assert ctx.model_kwargs == {"hiden": 49, "width": 16}
        loop(ctx)

    def unpacked(ctx: TrialContext) -> None:
        assert dict(**ctx.config)["model.hiden"] == 49
        loop(ctx)

    def by_get(ctx: TrialContext) -> None:
        ctx.config.get("model.hiden"), ctx.config.get("model.width", 8)
        loop(ctx)

    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        for fn in (by_kwargs, unpacked, by_get):
            run_function(fn, config, params=params)
    assert not [r for r in caplog.records if "never read" in r.getMessage()]

    def copied(ctx: TrialContext) -> None:  # a deep copy is read later, where ctx.config cannot see it
        import copy

        cfg = copy.deepcopy(ctx.config)
        assert cfg["model.width"] == 16 and type(cfg) is dict
        loop(ctx)

    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        run_function(copied, config, params=params)
    assert not [r for r in caplog.records if "never read" in r.getMessage()]


def test_the_loops_optimizer_is_compared_only_to_one_the_caller_declared(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retraining a recommended config by hand (``run_function(train, config)``, the README's recipe) declares no
    optimizer: an AdamW loop is not told it differs from SGD, which nobody chose. A study's space declares one."""
    import bstune.optim as optim

    monkeypatch.setattr(optim, "_warned_optimizers", set())  # said once per process: as if none was said yet
    adamw = lambda params: torch.optim.AdamW(params, lr=0.01)  # noqa: E731
    config = TrainConfig(batch_size=32, lr=0.01, max_samples=320)
    with caplog.at_level("WARNING", logger="bstune.optim"):
        run_function(lambda ctx: loop(ctx, adamw), config)
    assert "declares optimizer family" not in caplog.text
    with caplog.at_level("WARNING", logger="bstune.optim"):
        run_function(lambda ctx: loop(ctx, adamw), config, optimizer=bstune.OptimizerSpec(family="sgd"))
    assert "declares optimizer family 'sgd'" in caplog.text


def test_searched_optimizer_schedule_and_clip_settings_a_loop_fixes_itself_are_named(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's loop fixed AdamW's weight decay and its own warmup (LambdaLR) while the space searched
    weight_decay, warmup_fraction and grad_clip: the study recommended values the loop never used, without a word."""
    from bstune.training import _read_config

    monkeypatch.setattr(_read_config, "_warned_unread", set())
    config = TrainConfig(batch_size=32, lr=0.01, max_samples=640, weight_decay=0.02, warmup_samples=64)
    params = {"weight_decay": 0.02, "warmup_fraction": 0.1, "grad_clip": 0.5}

    def own_everything(ctx: TrialContext) -> None:
        model = net()
        opt = torch.optim.AdamW(model.parameters(), lr=ctx.config["lr"], weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    def through_helpers(ctx: TrialContext) -> None:  # make_optimizer and lr_scheduler apply them; clip is read
        assert ctx.config["grad_clip"] == 0.5
        loop(ctx)

    def own_optimizer_at_the_trials_values(ctx: TrialContext) -> None:  # the same decay, however it got it
        assert ctx.config.get("grad_clip") == 0.5
        loop(ctx, lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=ctx.train_config.weight_decay))

    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        run_function(own_everything, config, params=params)
    (said,) = [r.getMessage() for r in caplog.records if "never read" in r.getMessage()]
    assert "'grad_clip', 'warmup_fraction', 'weight_decay'" in said
    assert "nor used ctx.make_optimizer (the optimizer's settings) or ctx.lr_scheduler (warmup and schedule)" in said
    caplog.clear()
    _read_config._warned_unread.clear()
    with caplog.at_level("WARNING", logger="bstune.training._read_config"):
        run_function(through_helpers, config, params=params)
        run_function(own_optimizer_at_the_trials_values, config, params=params)
    assert not [r for r in caplog.records if "never read" in r.getMessage()]


def test_config_names_no_optimizer_setting_a_run_was_not_given() -> None:
    """Retraining by hand without an optimizer: a loop's own default (``get("momentum", 0.9)``) applies, not a
    plain-SGD 0.0 the run never chose; ``[...]`` says why the key is absent. Given ones are there."""
    seen: list[tuple[Any, ...]] = []

    def train(ctx: TrialContext) -> None:
        with pytest.raises(KeyError, match=r"^ctx.config: momentum: the run was given no optimizer.*best_optimizer"):
            ctx.config["momentum"]
        with pytest.raises(KeyError, match=r"^'model\.width'$"):
            ctx.config["model.width"]
        seen.append((ctx.config.get("momentum", 0.9), ctx.config.get("weight_decay", 0.01)))
        loop(ctx, lambda p: torch.optim.SGD(p, lr=ctx.config["lr"], momentum=0.9))

    run_function(train, TrainConfig(batch_size=32, lr=0.1, max_samples=256))
    assert seen == [(0.9, 0.01)]

    def given(ctx: TrialContext) -> None:
        seen.append((ctx.config["momentum"], ctx.config.get("weight_decay", 0.01)))
        loop(ctx)

    run_function(given, TrainConfig(batch_size=32, lr=0.1, max_samples=256, momentum=0.5))
    run_function(
        given, TrainConfig(batch_size=32, lr=0.1, max_samples=256), optimizer=bstune.OptimizerSpec(momentum=0.8)
    )
    assert seen[1:] == [(0.5, 0.01), (0.8, 0.0)]


def test_a_sparse_embeddings_gradient_is_measured_as_the_dense_ones_and_kept_sparse() -> None:
    """``nn.Embedding(sparse=True)``: the trajectory and the still phase give the dense embedding's B_simple, over
    micro-batches too, and the gradients kept for them stay sparse (dense, a copy of the whole table per step)."""
    tokens = torch.randint(0, 40, (480, 6), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(tokens, tokens[:, 0] % 2)

    class Bag(nn.Module):
        def __init__(self, sparse: bool) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.emb, self.out = nn.Embedding(40, 8, sparse=sparse), nn.Linear(8, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(t).mean(1))

    def measured(sparse: bool, micro: int) -> tuple[list[float], float, bool]:
        def fn(ctx: TrialContext) -> None:
            model = Bag(sparse)
            opt = ctx.make_optimizer(model.parameters())
            sched = ctx.lr_scheduler(opt)
            noise = ctx.noise_tracker(model)
            for xb, yb in ctx.loader(data):
                opt.zero_grad()
                for x, y in zip(xb.split(micro), yb.split(micro), strict=True):
                    loss = F.cross_entropy(model(x), y) * len(x) / len(xb)
                    loss.backward()
                    noise.observe()
                opt.step()
                sched.step()
                ctx.step(loss)

        config = TrainConfig(batch_size=16, lr=0.5, max_samples=960 + 1600, track_noise=True, noise_every_steps=1)
        _, ctx = run_function(fn, config, still_after=960)
        tracker = ctx._tracker
        assert tracker is not None and tracker.still is not None and tracker.tracker is not None
        kept = tracker.still._sum or {}
        return (
            [p.b_simple for p in tracker.tracker.trajectory],
            tracker.still.estimate().b_simple,
            kept["emb.weight"].is_sparse,
        )

    dense_trajectory, dense_still, dense_kept_sparse = measured(False, 16)
    assert not dense_kept_sparse
    for micro in (16, 5):
        trajectory, still, kept_sparse = measured(True, micro)
        assert kept_sparse
        assert trajectory == pytest.approx(dense_trajectory, rel=1e-5) and still == pytest.approx(dense_still, rel=1e-5)


def own_loader_loop(
    n_examples: int, loader_batch: int | None, count: bool, workers: int = 0, report: bool = False
) -> Callable[[TrialContext], None]:
    """A loop with a DataLoader of its own over ``n_examples`` (batches of ``loader_batch``, else the trial's),
    counting each step with ``samples=len(x)`` when ``count``; with ``workers``, an iterable dataset split across
    that many DataLoader workers (each worker's last batch short); ``report``: val loss at milestones."""
    data: Any = torch.utils.data.TensorDataset(X[:n_examples], Y[:n_examples])
    if workers:
        data = _Shards(X[:n_examples], Y[:n_examples])

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        sched = ctx.lr_scheduler(opt)
        noise = ctx.noise_tracker(model)
        while not ctx.done:
            batches = torch.utils.data.DataLoader(
                data, batch_size=loader_batch or ctx.batch_size, shuffle=not workers, num_workers=workers
            )
            for xb, yb in batches:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                noise.observe()
                opt.step()
                sched.step()
                if ctx.step(loss, samples=len(xb) if count else None):
                    break
                if report and ctx.at_milestone():
                    with torch.no_grad():
                        ctx.report(val_loss=F.cross_entropy(model(VX), VY))

    return fn


def _own_loader_run(
    n_examples: int, loader_batch: int | None, count: bool, workers: int = 0, **config: Any
) -> TrialContext:
    """:func:`own_loader_loop` run once at ``config`` (lr 0.1, 1,600 samples unless given)."""
    fn = own_loader_loop(n_examples, loader_batch, count, workers)
    return run_function(fn, TrainConfig(**{"lr": 0.1, "max_samples": 1600} | config))[1]


class _Shards(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """An iterable dataset that each DataLoader worker reads a contiguous part of."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        parts = 1 if info is None else info.num_workers
        part = 0 if info is None else info.id
        step = -(-len(self.x) // parts)
        for k in range(part * step, min(len(self.x), (part + 1) * step)):
            yield self.x[k], self.y[k]


def test_a_loop_whose_own_loader_mostly_gives_short_batches_is_refused_and_tails_are_not() -> None:
    """A 353-example set with its own DataLoader: trials were recorded, compared and recommended at B=778 while
    every step trained 353. Short steps are an epoch's tail, one per worker of an iterable dataset, one per
    bucket; a run whose steps are mostly short does not train at the trial's batch size."""
    with pytest.raises(
        ConfigError, match=r"4 of the run's 4 steps counted fewer samples than the trial's batch size 64"
    ):
        _own_loader_run(40, None, count=True, batch_size=64)  # the whole set is one batch of 40
    with pytest.raises(
        ConfigError, match=r"counted fewer samples .* or it batches by another size than ctx.batch_size"
    ):
        _own_loader_run(480, 10, count=True, batch_size=16)  # the loop's own batch size
    # legitimate: an epoch's tail (6 of 16 and one of 4), every other step short (60, 40), two workers' tails
    for n, batch, workers in ((100, 16, 0), (100, 60, 0), (100, 16, 2)):
        ctx = _own_loader_run(n, None, count=True, batch_size=batch, workers=workers)
        assert ctx.samples >= 1600 and ctx._short >= 1
    staged = {"batch_size": 16, "batch_schedule": ((0, 16, 0.1), (320, 32, 0.2))}
    with pytest.raises(ConfigError, match=r"with a batch_schedule, make the loader again when ctx.batch_size changes"):
        _own_loader_run(480, 16, count=True, **staged)  # stays at the first stage's batches


def test_a_tracked_step_that_trained_fewer_examples_than_it_counts_is_refused() -> None:
    """Without samples=, ctx.step counted the trial's 64 for each whole-set step of 40: the noise tracker sees the
    examples the step trained and says so where it observes every step, as in the probe's run (a run the probe
    makes is this run_function call with track_noise)."""
    with pytest.raises(ConfigError, match=r"noise\.observe\(\) saw 40 examples in this step, but ctx\.step counts 64"):
        _own_loader_run(40, None, count=False, batch_size=64, track_noise=True, noise_every_steps=1)
    _own_loader_run(40, None, count=False, batch_size=64)  # no tracker: nothing to compare against


def test_a_loop_spinning_on_ctx_done_with_no_batches_is_stopped_with_the_reason() -> None:
    """A newcomer's loop batched with its own drop-last batches, larger than its data: each epoch was empty, and
    ``while not ctx.done`` spun for ever with nothing said."""
    x = torch.randn(40, 4)

    def own_batches(batch: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(x) - batch + 1, batch):  # drop_last: none when batch > 40
            yield x[i : i + batch]

    def train(ctx: TrialContext) -> None:
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
        while not ctx.done:
            for xb in own_batches(ctx.batch_size):
                loss = model(xb).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.step(loss)

    with pytest.raises(ConfigError, match=r"ctx.done: read 100,000 times in a row with no ctx.step\(\) between"):
        run_function(train, TrainConfig(batch_size=64, lr=0.1, max_samples=640))
    done, _ = run_function(train, TrainConfig(batch_size=8, lr=0.1, max_samples=640))  # batches: no complaint
    assert done.status is RunStatus.COMPLETED and done.samples == 640


def test_reading_ctx_done_between_steps_however_often_is_no_spin() -> None:
    ctx = TrialContext(TrainConfig(batch_size=4, lr=0.1, max_samples=400))
    for _ in range(3):
        for _ in range(SPIN_READS - 1):
            assert not ctx.done
        ctx.step(1.0)
