"""The rates a loop's own optimizer steps at, against the trial's: bstune.training._rate_watch through run_function."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bstune.training import RunStatus, TrainConfig, TrialContext, run_function
from bstune.training._rate_watch import RateWatch

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


def own_loop(
    make: Callable[[TrialContext, Net], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
) -> Callable[[TrialContext], None]:
    """A loop that logs its whole config (every key read, as wandb does) and steps an optimizer of its own."""

    def fn(ctx: TrialContext) -> None:
        dict(ctx.config)  # logged
        model = Net()
        opt = make(ctx, model)
        sched = scheduler(opt) if scheduler is not None else None
        for xb, yb in ctx.loader(TRAIN):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            ctx.step(loss)

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
    assert "its highest rate was 0.0003 where the trial's is 0.1: it was given a rate of its own" in why
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
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)  # noqa: E731
    unread, why = run(own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.lr), cosine), {"lr": 0.1})
    assert unread == [] and why is not None and "A scheduler of the loop's own" in why  # said nowhere: not searched
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


def test_an_optimizer_another_thread_steps_is_not_the_trials() -> None:
    # Ray's function trainables run trials on threads of one process; the pre-hook is every optimizer's
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-5)
    stop = threading.Event()

    def elsewhere() -> None:
        while not stop.is_set():
            other.step()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    try:
        assert run(own_loop(lambda ctx, m: torch.optim.SGD(m.parameters(), lr=ctx.lr)), {"lr": 0.1}) == ([], None)
    finally:
        stop.set()
        thread.join()


def test_a_rate_the_hook_cannot_read_cheaply_is_left_unchecked() -> None:
    watch = RateWatch()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=torch.tensor(0.01))  # a rate on the device
    with watch.watching(lambda: (0, (0.1,))):
        for _ in range(20):
            opt.step()
    assert watch.checked_steps() == 0 and watch.verdict().why is None
    with watch.watching(lambda: None):  # ctx.lr_scheduler sets the rates: nothing to check
        torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01).step()
    assert watch.checked_steps() == 0


def test_the_hook_is_gone_after_the_run() -> None:
    watch = RateWatch()
    with watch.watching(lambda: (0, (0.1,))):
        pass
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01).step()
    assert watch.checked_steps() == 0
