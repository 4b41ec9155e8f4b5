"""The rates a loop's own optimizer steps at, against the trial's: bstune.training._rate_watch through run_function."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.optimizer import _global_optimizer_pre_hooks

from bstune.optim import OptimizerSpec
from bstune.training import RunStatus, TrainConfig, TrialContext, lr_at, run_function
from bstune.training._rate_watch import RateWatch, TrialRate, _current

G = torch.Generator().manual_seed(0)
X = torch.randn(480, 8, generator=G)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
TRAIN = torch.utils.data.TensorDataset(X, Y)
CONFIG = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 60)
SAID = "bstune.training._run_function._said_not_followed"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x)))


Scheduler = Callable[[TrialContext, torch.optim.Optimizer], "torch.optim.lr_scheduler.LRScheduler | Any"]


def own_loop(
    make: Callable[[TrialContext, Net], torch.optim.Optimizer],
    scheduler: Scheduler | None = None,
    evaluate: Callable[[], None] | None = None,
) -> Callable[[TrialContext], None]:
    """A loop that logs its whole config (every key read, as wandb does) and steps an optimizer of its own (or
    ``make``'s), and its ``scheduler``; ``evaluate`` runs at each milestone, before the report."""

    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)  # logged
        model = Net()
        opt = make(ctx, model)
        sched = scheduler(ctx, opt) if scheduler is not None else None
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                if evaluate is not None:
                    evaluate()
                ctx.report(val_loss=loss.item())

    return fn


def run(fn: Callable[[TrialContext], None], params: dict[str, object]) -> tuple[list[str], str | None]:
    result, ctx = run_function(fn, CONFIG, params=params)
    assert result.status is RunStatus.COMPLETED
    return result.unread_params, ctx.schedule_not_followed()


def test_an_optimizer_built_with_a_rate_of_its_own_leaves_the_trials_rate_not_applied(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a newcomer's loop: AdamW(lr=3e-4) copied from their script, the config logged whole; every trial trained at
    # 3e-4 while the study recorded, ranked and recommended the rates it drew
    monkeypatch.setattr(SAID, False)
    with caplog.at_level(logging.WARNING, logger="bstune"):
        unread, why = run(own_loop(lambda ctx, m: torch.optim.AdamW(m.parameters(), lr=3e-4)), {"lr": 0.1})
    assert unread == ["lr"]
    assert why is not None and why.startswith("the loop's own AdamW did not follow the trial's learning rate (lr=0.1")
    assert "the highest rate it stepped at was 0.0003, 0.003 times the trial's 0.1: it was given a rate other" in why
    assert caplog.text.count("did not follow") == 1 and "never read" not in caplog.text


def test_an_optimizer_of_its_own_at_the_trials_rate_is_fine() -> None:
    assert run(own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.config["lr"])), {"lr": 0.1}) == (
        [],
        None,
    )
    # a backbone at a tenth of the rate, the head at it: a group at the trial's rate is the trial's
    groups = lambda ctx, m: torch.optim.SGD(  # noqa: E731
        [{"params": m.body.parameters(), "lr": ctx.lr / 10}, {"params": m.head.parameters()}], lr=ctx.lr
    )
    assert run(own_loop(groups), {"lr": 0.1}) == ([], None)


def test_a_schedule_of_its_own_where_the_space_searches_none_is_the_loops_to_choose() -> None:
    # torch's cosine from the trial's rate: the schedule is not the trial's (constant), but the space searches none,
    # and the rate it starts from is the trial's
    cosine = lambda ctx, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)  # noqa: E731
    unread, why = run(own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.lr), cosine), {"lr": 0.1})
    assert unread == [] and why is not None and "a scheduler of its own" in why  # said nowhere: not searched
    # where it does, the trial's (a warmup, then cosine) is recorded as applied: the loop skipped the warmup
    result, _ = run_function(
        own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.lr), cosine),
        TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 60, schedule="cosine", warmup_samples=320),
        params={"lr": 0.1, "schedule": "cosine", "warmup_samples": 320},
    )
    assert result.unread_params == ["schedule", "warmup_samples"]


def test_one_of_two_optimizers_at_the_trials_rate_is_enough() -> None:
    # a GAN's discriminator keeps a rate of its own; the generator's is the searched one
    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)
        gen, disc = Net(), Net()
        opt_g = torch.optim.Adam(gen.parameters(), lr=ctx.lr)
        opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
        for xb, yb in ctx.loader(TRAIN):
            for model, opt in ((disc, opt_d), (gen, opt_g)):
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            ctx.step(loss)

    assert run(fn, {"lr": 0.1}) == ([], None)


def hard_coded(ctx: TrialContext, model: Net) -> torch.optim.Optimizer:
    dict(ctx.config)  # logged
    return torch.optim.AdamW(model.parameters(), lr=3e-4)


def calibrate(lr: float) -> None:
    """Temperature scaling: one LBFGS step of a parameter of its own."""
    t = nn.Parameter(torch.ones(1))
    opt = torch.optim.LBFGS([t], lr=lr)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (t.sum() - 2) ** 2
        loss.backward()
        return loss

    opt.step(closure)


def test_a_one_step_calibration_at_each_evaluation_does_not_clear_a_hard_coded_rate() -> None:
    # a newcomer's loop: temperature scaling by LBFGS, one step per evaluation; with each optimizer judged alone,
    # its few steps counted as "followed" and cleared the AdamW at 3e-4 beside it
    assert run(own_loop(hard_coded, evaluate=lambda: calibrate(0.01)), {"lr": 0.1})[0] == ["lr"]


def test_an_optimizer_made_again_every_few_steps_is_judged_over_the_run() -> None:
    # batches of 180-256 from 1,400 examples: an optimizer made each epoch stepped 8 times or fewer, and each was
    # "followed" for too few steps to judge
    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)
        model = Net()
        for i, (xb, yb) in enumerate(ctx.loader(TRAIN)):
            if i % 6 == 0:
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.step(loss)

    unread, why = run(fn, {"lr": 0.1})
    assert unread == ["lr"] and why is not None and "60 of the 60 steps" in why


def test_a_frozen_group_of_make_optimizer_is_no_rate_of_the_loops_own() -> None:
    # the README freezes a part of the model with a group at lr=0; its rate stood for the optimizer's and every
    # step "missed", lr marked not applied, and the message told the loop to use ctx.make_optimizer, which it did
    def make(ctx: TrialContext, model: Net) -> torch.optim.Optimizer:
        return ctx.make_optimizer([{"params": model.body.parameters(), "lr": 0.0}, {"params": model.head.parameters()}])

    assert run(own_loop(make), {"lr": 0.1}) == ([], None)


def test_a_group_at_the_trials_rate_beside_one_at_ten_times_keeps_the_rate_applied() -> None:
    # the highest rate over all groups was the 10x head's: "a rate of its own", though the body trained at ctx.lr
    def make(ctx: TrialContext, model: Net) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(model.body.parameters(), lr=ctx.config["lr"])
        opt.add_param_group({"params": model.head.parameters(), "lr": 10 * ctx.config["lr"]})
        return opt

    cosine = lambda ctx, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)  # noqa: E731
    result, _ = run_function(own_loop(make, cosine), CONFIG, params={"lr": 0.1, "schedule": "constant"})
    assert result.unread_params == ["schedule"]  # its own cosine: the schedule, not the rate


def test_a_warmup_read_but_never_applied_is_caught_though_it_is_a_few_steps_of_the_run() -> None:
    # a warmup is a few percent of the steps: under any allowance over the whole run, a loop that skipped it passed
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 60, warmup_samples=32 * 6)
    result, ctx = run_function(
        own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.config["lr"])),
        config,
        params={"lr": 0.1, "warmup_samples": 32 * 6},
    )
    why = ctx.schedule_not_followed()
    assert result.unread_params == ["warmup_samples"]
    assert why is not None and "of the warmup 6 steps were more than 20% off it" in why and "ctx.lr held" in why


def test_a_rate_held_as_a_tensor_on_the_cpu_is_read() -> None:
    # the device's are skipped (reading them syncs); a CPU tensor costs nothing and hid a hard-coded rate
    make = lambda ctx, m: (dict(ctx.config), torch.optim.AdamW(m.parameters(), lr=torch.tensor(3e-4)))[1]  # noqa: E731
    assert run(own_loop(make), {"lr": 0.1})[0] == ["lr"]


def test_an_own_optimizer_other_than_the_spaces_is_named() -> None:
    # the summary listed "momentum = 0" as the recommendation for a loop that stepped its own Adam
    result, _ = run_function(
        own_loop(lambda ctx, m: torch.optim.Adam(m.parameters(), lr=ctx.lr)),
        CONFIG,
        params={"lr": 0.1},
        optimizer=OptimizerSpec(family="sgd", momentum=0.9),
    )
    assert result.other_optimizer is not None and "Adam" in result.other_optimizer


def test_an_optimizer_another_thread_steps_is_not_the_trials() -> None:
    # Ray's function trainables run trials on threads of one process, and torch's pre-hook is every optimizer's: the
    # other thread steps at exactly the trial's rate, which must not clear this trial's hard-coded one
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=CONFIG.lr)
    stop = threading.Event()

    def elsewhere() -> None:
        while not stop.is_set():
            other.step()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    try:
        result, ctx = run_function(own_loop(hard_coded), CONFIG, params={"lr": 0.1})
    finally:
        stop.set()
        thread.join()
    assert result.unread_params == ["lr"] and ctx._rate_watch.checked_steps() == 60


def test_torch_schedulers_stepped_per_epoch_miss_little_near_the_end_of_a_decay() -> None:
    # a review: the relative slack around a rate near 0 took a per-epoch CosineAnnealingLR's tail for misses
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 150, schedule="cosine", final_lr_ratio=0.0)

    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        data = torch.utils.data.DataLoader(TRAIN, batch_size=32)
        while not ctx.done:
            for xb, yb in data:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if ctx.step(loss):
                    break
            sched.step()

    result, _ = run_function(fn, config, params={"lr": 0.1, "schedule": "cosine"})
    assert result.unread_params == []


def test_ctx_step_before_the_optimizers_is_followed_too() -> None:
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 60, schedule="cosine", warmup_samples=32 * 12)

    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
        for xb, yb in ctx.loader(TRAIN):
            for group in opt.param_groups:
                group["lr"] = lr_at(ctx.train_config, ctx.samples)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            ctx.step(loss)  # first: the optimizer's step comes a training step late
            opt.step()

    result, ctx = run_function(fn, config, params={"lr": 0.1, "schedule": "cosine", "warmup_samples": 384})
    assert result.unread_params == [] and ctx.schedule_not_followed() is None


def trained(lr: float | torch.Tensor) -> torch.optim.Optimizer:
    """An optimizer whose one parameter has a gradient (a group without one trains nothing: not judged)."""
    weight = nn.Parameter(torch.zeros(1))
    weight.grad = torch.ones(1)
    return torch.optim.SGD([weight], lr=lr)


def test_a_function_that_raises_leaves_no_watch_on_its_thread() -> None:
    hooks = len(_global_optimizer_pre_hooks)

    def fn(ctx: TrialContext) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_function(fn, CONFIG, params={"lr": 0.1})
    assert getattr(_current, "watch", None) is None
    watch = RateWatch()
    with pytest.raises(KeyboardInterrupt), watch.watching(lambda: TrialRate(0, (0.1,) * 3, base=0.1, warmup=False)):
        raise KeyboardInterrupt
    trained(0.01).step()
    assert watch.checked_steps() == 0 and getattr(_current, "watch", None) is None
    run_function(own_loop(hard_coded), CONFIG, params={"lr": 0.1})
    assert len(_global_optimizer_pre_hooks) in (hooks, hooks + 1)  # one, however many runs


def test_a_rate_the_hook_cannot_read_cheaply_is_left_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = RateWatch()
    rate = TrialRate(0, (0.1,) * 3, base=0.1, warmup=False)
    opt = trained(torch.tensor(0.01))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("meta")))  # as on a GPU
    with watch.watching(lambda: rate):
        opt.step()
    monkeypatch.undo()
    assert watch.checked_steps() == 0
    with watch.watching(lambda: None):  # the probe's ramp, or its still phase: nothing to check
        trained(0.01).step()
    assert watch.checked_steps() == 0
    with watch.watching(lambda: rate):  # what is checked, where it can be read
        opt.step()
    assert watch.checked_steps() == 1


def test_a_calibration_optimizer_beside_make_optimizers_is_not_taken_for_the_loops() -> None:
    # a review: the first optimizer of the loop's own to step was compared with the space's, so a temperature fitted
    # by SGD at each evaluation made the report drop the space's momentum as "not the space's optimizer"
    temperature = nn.Parameter(torch.ones(1))
    fit = torch.optim.SGD([temperature], lr=0.01)  # plain SGD: not the space's (momentum 0.9)

    def fit_temperature() -> None:
        for _ in range(20):
            fit.zero_grad()
            ((temperature - 2) ** 2).sum().backward()
            fit.step()

    fn = own_loop(lambda ctx, m: ctx.make_optimizer(m.parameters()), evaluate=fit_temperature)
    result, _ = run_function(fn, CONFIG, params={"lr": 0.1}, optimizer=OptimizerSpec(family="sgd", momentum=0.9))
    assert result.other_optimizer is None and result.unread_params == []


def test_the_probes_still_phase_is_not_judged() -> None:
    # a review: the still phase (rate held at 0 by ctx.lr_scheduler) was compared with the trial's rate
    fn = own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.lr), lambda ctx, opt: ctx.lr_scheduler(opt))
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 90, schedule="cosine", warmup_samples=320)
    result, ctx = run_function(
        fn, config, params={"lr": 0.1, "schedule": "cosine", "warmup_samples": 320}, still_after=32 * 40
    )
    assert result.status is RunStatus.COMPLETED and ctx.schedule_not_followed() is None
    assert ctx._rate_watch.checked_steps() == 40  # the training steps, not the still ones


def test_an_amp_loop_that_skips_its_scheduler_with_its_skipped_steps_follows_the_warmup() -> None:
    # GradScaler skips the first steps (their gradients overflow) and the loop its scheduler with them (Hugging
    # Face's Trainer does): its warmup runs those steps late
    config = TrainConfig(batch_size=32, lr=0.1, max_samples=32 * 60, warmup_samples=32 * 20)

    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
        warmup_steps = ctx.train_config.warmup_samples // ctx.batch_size
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup_steps))
        for i, (xb, yb) in enumerate(ctx.loader(TRAIN)):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if i >= 6:  # the scaler's skipped steps: no opt.step(), no sched.step()
                opt.step()
                sched.step()
            ctx.step(loss)

    result, ctx = run_function(fn, config, params={"lr": 0.1, "warmup_samples": 640})
    assert result.unread_params == [] and ctx.schedule_not_followed() is None


def test_a_frozen_group_at_the_trials_rate_does_not_clear_a_hard_coded_one() -> None:
    # a review: a group whose parameters take no gradient trains nothing, at whatever rate it holds
    def make(ctx: TrialContext, model: Net) -> torch.optim.Optimizer:
        dict(ctx.config)
        model.body.requires_grad_(False)
        return torch.optim.AdamW(
            [{"params": model.body.parameters(), "lr": ctx.lr}, {"params": model.head.parameters()}], lr=3e-4
        )

    assert run(own_loop(make), {"lr": 0.1})[0] == ["lr"]


def test_rates_of_its_own_given_to_make_optimizers_groups_are_the_loops() -> None:
    # a review: every group at a rate of the loop's own was taken for a multiple of the trial's
    def make(ctx: TrialContext, model: Net) -> torch.optim.Optimizer:
        return ctx.make_optimizer(
            [{"params": model.body.parameters(), "lr": 1e-4}, {"params": model.head.parameters(), "lr": 1e-3}]
        )

    assert run(own_loop(make), {"lr": 0.1})[0] == ["lr"]
