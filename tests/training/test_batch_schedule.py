"""TrainConfig.batch_schedule: validation, storage, the steps the trainer and a user's loop take, the
rate of each stage, and the noise tracker across a change of batch size."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bstune
from bstune.errors import ConfigError
from bstune.noise import NoiseTracker, exact_noise_scale
from bstune.training import RunStatus, TrainConfig, TrialContext, lr_at, run_function
from bstune.training._sampling import EpochBatchSampler, epoch_batches
from bstune.training._schedule import samples_before_step, stage_at, step_batch_sizes

SCHED = ((0, 8, 0.05), (40, 16, 0.08), (150, 32, 0.12))


def scheduled(**kwargs: Any) -> TrainConfig:
    args: dict[str, Any] = {"batch_size": 8, "lr": 0.05, "max_samples": 400, "batch_schedule": SCHED} | kwargs
    return TrainConfig(**args)


# -- the config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (((8, 8, 0.05), (40, 16, 0.1)), "start at 0"),
        (((0, 8, 0.05), (40, 16, 0.1), (40, 32, 0.1)), "increase strictly"),
        (((0, 8, 0.05), (60, 16, 0.1), (50, 32, 0.1)), "increase strictly"),
        (((0, 8, 0.05), (400, 16, 0.1)), "below max_samples=400"),
        (((0, 8, 0.05), (40, 0, 0.1)), "stage 1: batch_size must be a positive integer"),
        (((0, 8, 0.05), (40, 16.0, 0.1)), "stage 1: batch_size"),
        (((0, 8, 0.05), (40, 16, 0.0)), "stage 1: lr must be a positive number"),
        (((0, 8, 0.05), (40, 16, math.inf)), "stage 1: lr"),
        (((0, 8, 0.05), (40, 16, math.nan)), "stage 1: lr"),
        (((0, 8, 0.05), (-1, 16, 0.1)), "start_samples must be a non-negative integer"),
        (((0, 8, 0.05), (40, 16)), "stage 1 must be (start_samples, batch_size, lr)"),
        ((), "at least one stage"),
        ("0,8,0.05", "sequence"),
        (((0, 16, 0.05),), "must equal the first stage's"),  # batch_size=8 says otherwise
        (((0, 8, 0.1),), "must equal the first stage's"),  # lr=0.05 says otherwise
    ],
)
def test_bad_schedules_name_the_field_and_the_reason(schedule: Any, words: str) -> None:
    with pytest.raises(ConfigError, match="batch_schedule") as info:
        scheduled(batch_schedule=schedule)
    assert info.value.field == "batch_schedule" and info.value.source == "TrainConfig"
    assert words in str(info.value)


def test_micro_batches_and_noise_tracking_must_fit_every_stage() -> None:
    with pytest.raises(ConfigError) as info:
        scheduled(batch_size=16, batch_schedule=((0, 16, 0.05), (40, 4, 0.02)), micro_batch_size=8)
    assert info.value.field == "micro_batch_size" and "smallest 4" in str(info.value)
    with pytest.raises(ConfigError) as info:
        scheduled(batch_size=16, batch_schedule=((0, 16, 0.05), (40, 1, 0.02)), track_noise=True)
    assert info.value.field == "track_noise"


def test_a_schedule_round_trips_through_to_dict_and_json() -> None:
    cfg = scheduled(warmup_samples=40, schedule="cosine")
    stored = json.loads(json.dumps(cfg.to_dict()))
    assert stored["batch_schedule"] == [[0, 8, 0.05], [40, 16, 0.08], [150, 32, 0.12]]
    back = TrainConfig.from_dict(stored)
    assert back == cfg and back.batch_schedule == SCHED and hash(back) == hash(cfg)
    assert TrainConfig.from_dict(TrainConfig(batch_size=8, lr=0.1, max_samples=80).to_dict()).batch_schedule is None


def test_steps_count_over_the_stages() -> None:
    cfg = scheduled()
    # 8s up to 40 (5 steps), 16s from 40 to 152 (7 steps, the last runs past 150), 32s from 152 to 408 (8 steps)
    sizes = list(step_batch_sizes(cfg))
    assert sizes == [8] * 5 + [16] * 7 + [32] * 8
    assert cfg.steps == len(sizes) == 20
    assert [samples_before_step(cfg, k) for k in (0, 5, 12, 19, 20)] == [0, 40, 152, 376, 408]
    # a stage the previous stage's last step runs past takes no step
    skipped = scheduled(batch_schedule=((0, 8, 0.05), (4, 16, 0.08), (6, 32, 0.12)))
    assert list(step_batch_sizes(skipped))[:2] == [8, 32] and skipped.steps == 1 + math.ceil(392 / 32)


def test_each_stage_gets_its_rate_times_the_warmup_and_decay() -> None:
    cfg = scheduled(warmup_samples=80, schedule="linear", final_lr_ratio=0.0)
    # the warmup ramps the stage's rate by the end of the step over warmup_samples; the decay is linear in samples
    assert lr_at(cfg, 0) == pytest.approx(0.05 * 8 / 80)
    assert lr_at(cfg, 40) == pytest.approx(0.08 * 56 / 80)  # the first 16-step
    assert lr_at(cfg, 152) == pytest.approx(0.12 * (1 - (152 - 80) / 320))
    assert stage_at(cfg, 149) == (16, 0.08) and stage_at(cfg, 150) == (32, 0.12)


# -- the data order ---------------------------------------------------------------------------


def test_a_change_of_batch_size_continues_the_epoch_permutation() -> None:
    fixed = [b.tolist() for b in itertools.islice(epoch_batches(10, 3, seed=4), 6)]
    assert [b.tolist() for b in epoch_batches(10, 3, seed=4, sizes=[3] * 6)] == fixed
    grown = [b.tolist() for b in epoch_batches(10, 3, seed=4, sizes=[3, 3, 4, 4, 4])]
    perm0 = fixed[0] + fixed[1] + fixed[2]  # the first epoch's first 9 examples
    assert grown[0] + grown[1] == perm0[:6]
    assert sorted(grown[0] + grown[1] + grown[2]) == list(range(10))  # 3+3+4 fill the epoch exactly
    assert [len(b) for b in grown] == [3, 3, 4, 4, 4]
    assert len(set(grown[3] + grown[4])) == 8  # the next epoch: two batches of 4, its tail of 2 dropped
    sampler = EpochBatchSampler(10, 3, seed=4, num_batches=7, sizes=[3, 3, 4])
    assert [len(b) for b in sampler] == [3, 3, 4, 4, 4, 4, 4]  # the last size repeats


# -- the trainer ------------------------------------------------------------------------------


class _Seen(nn.Module):
    """A model that records the batch size of every training forward pass."""

    def __init__(self, inner: nn.Module, seen: list[int]) -> None:
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(len(x))
        return self.inner(x)


def test_the_trainer_takes_each_stage_s_batch_and_evaluates_at_the_sample_milestones(blob_task: bstune.Task) -> None:
    seen: list[int] = []
    cfg = scheduled(eval_every_samples=100)
    run = bstune.train(blob_task, cfg, model=_Seen(blob_task.make_model(seed=0), seen))
    assert run.status is RunStatus.COMPLETED
    assert seen == list(step_batch_sizes(cfg)) == [8] * 5 + [16] * 7 + [32] * 8
    assert (run.steps, run.samples) == (20, 408)
    assert [r.milestone for r in run.history] == [100, 200, 300, 400]
    assert [r.samples for r in run.history] == [104, 216, 312, 408]
    assert [r.lr for r in run.history] == [0.08, 0.12, 0.12, 0.12]  # the rate of the step before each evaluation


def test_workers_load_the_same_scheduled_batches_as_the_in_process_path(blob_task: bstune.Task) -> None:
    class Plain(torch.utils.data.Dataset[Any]):  # not a pair of tensors: workers load it
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int) -> Any:
            return self.inner[i]

    generic = bstune.Task(
        model=blob_task.model,
        train_data=Plain(blob_task.train_data),
        val_data=blob_task.val_data,
        loss=blob_task.loss,
    )
    runs = []
    for workers in (0, 1):
        seen: list[int] = []
        cfg = scheduled(num_workers=workers, max_samples=200)
        runs.append(bstune.train(generic, cfg, model=_Seen(generic.make_model(seed=0), seen)))
        assert seen == list(step_batch_sizes(cfg))
    params = [torch.cat([p.detach().flatten() for p in r.model.parameters()]) for r in runs if r.model is not None]
    assert torch.equal(params[0], params[1])


def test_micro_batches_accumulate_within_each_stage(blob_task: bstune.Task) -> None:
    whole = bstune.train(blob_task, scheduled(max_samples=200))
    micro = bstune.train(blob_task, scheduled(max_samples=200, micro_batch_size=8))
    assert whole.model is not None and micro.model is not None
    for a, b in zip(whole.model.parameters(), micro.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_precision_and_the_divergence_check_run_across_stages(blob_task: bstune.Task) -> None:
    seen: list[int] = []
    amp = bstune.train(blob_task, scheduled(amp=True), model=_Seen(blob_task.make_model(seed=0), seen))
    assert amp.status is RunStatus.COMPLETED and seen == list(step_batch_sizes(scheduled()))
    blown = scheduled(batch_schedule=((0, 8, 0.05), (40, 16, 1e4)))  # the second stage's rate blows up
    run = bstune.train(blob_task, blown)
    assert run.status is RunStatus.DIVERGED and run.samples > 40


@pytest.mark.parametrize("micro", [None, 4])  # per-example hooks, and split batches
def test_noise_tracking_across_a_change_of_batch_size_measures_each_stage_at_its_size(
    blob_task: bstune.Task, micro: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a rate of ~0 the parameters stay put, so every window must find the same B_simple: at the new
    batch size, an estimator still told the old one (or a window pooling both) is far off."""
    sizes: list[int] = []
    original = NoiseTracker.update

    def update(self: NoiseTracker, *args: Any, **kwargs: Any) -> None:
        sizes.append(self.batch_size)
        original(self, *args, **kwargs)

    monkeypatch.setattr(NoiseTracker, "update", update)
    cfg = TrainConfig(
        batch_size=8,
        lr=1e-12,
        max_samples=8 * 150 + 32 * 150,
        eval_every_samples=8 * 150,
        batch_schedule=((0, 8, 1e-12), (8 * 150, 32, 1e-12)),
        micro_batch_size=micro,
        noise_every_steps=1,
        track_noise=True,
        seed=2,
    )
    run = bstune.train(blob_task, cfg)
    assert sizes == list(step_batch_sizes(cfg))  # every step measured, each by an estimator told its batch size
    exact = exact_noise_scale(blob_task, blob_task.make_model(seed=2)).b_simple
    points = run.noise_trajectory
    assert [p.samples for p in points] == [1200, 2416, 3600, 4816, 6000]
    assert [p.n_steps for p in points] == [150, 38, 37, 38, 37]
    for p in points:
        assert p.b_simple == pytest.approx(exact, rel=0.15)
    assert points[0].temperature == pytest.approx(1e-12 / 8) and points[-1].temperature == pytest.approx(1e-12 / 32)


def test_batches_larger_than_the_training_set_are_refused_by_the_trainer(blob_task: bstune.Task) -> None:
    cfg = scheduled(batch_schedule=((0, 8, 0.05), (40, 1024, 0.1)))
    with pytest.raises(ConfigError, match="1024 is larger than the training set") as info:
        bstune.train(blob_task, cfg)
    assert info.value.field == "batch_schedule"


def test_data_parallel_runs_refuse_a_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    from bstune.training._distributed import DataParallel

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(ConfigError, match="not supported in data-parallel") as info:
        DataParallel.current(scheduled(), torch.device("cpu"))
    assert info.value.field == "batch_schedule"


# -- the trial context ------------------------------------------------------------------------

G = torch.Generator().manual_seed(0)
X = torch.randn(480, 8, generator=G)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()


class _Indexed(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return X[i], Y[i], i


def test_a_user_loop_follows_the_schedule_through_the_context() -> None:
    steps: list[tuple[int, int, float, float]] = []  # (batch seen, ctx.batch_size, optimizer's lr, ctx.lr)
    order: list[list[int]] = []

    def train(ctx: TrialContext) -> None:
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        sched = ctx.lr_scheduler(opt)
        for xb, yb, idx in ctx.loader(_Indexed()):
            steps.append((len(xb), ctx.batch_size, opt.param_groups[0]["lr"], ctx.lr))
            order.append(idx.tolist())
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ctx.step(loss)
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_loss=F.cross_entropy(model(X), Y))

    cfg = scheduled(warmup_samples=80, schedule="cosine", eval_every_samples=100)
    run, ctx = run_function(train, cfg)
    assert run.status is RunStatus.COMPLETED and (run.steps, run.samples) == (20, 408)
    expected = list(step_batch_sizes(cfg))
    assert [s[0] for s in steps] == [s[1] for s in steps] == expected
    want = [lr_at(cfg, samples_before_step(cfg, k)) for k in range(20)]
    assert [s[2] for s in steps] == pytest.approx(want) and [s[3] for s in steps] == pytest.approx(want)
    assert order == [b.tolist() for b in epoch_batches(len(X), 8, cfg.seed, expected)]  # the trainer's order
    assert [r.samples for r in run.history] == [104, 216, 312, 408]
    assert ctx.config["batch_size"] == 8  # what the study chose: the first stage


def test_the_loop_noise_tracker_closes_its_window_at_a_change_of_batch_size() -> None:
    def train(ctx: TrialContext) -> None:
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
        tracker = ctx.noise_tracker(model)
        for xb, yb, _ in ctx.loader(_Indexed()):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            tracker.observe()
            opt.step()
            ctx.step(loss)

    cfg = scheduled(track_noise=True, noise_every_steps=1, lr=1e-12, batch_schedule=((0, 8, 1e-12), (80, 32, 1e-12)))
    run, _ = run_function(train, cfg)
    points = run.noise_trajectory
    assert [(p.samples, p.n_steps) for p in points] == [(80, 10), (400, 10)]
    assert points[0].temperature == pytest.approx(1e-12 / 8) and points[1].temperature == pytest.approx(1e-12 / 32)
