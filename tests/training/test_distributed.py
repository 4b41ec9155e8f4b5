"""Data-parallel training: bstune.train on 2 gloo CPU processes against one process, the DDP noise estimator.

Every launch spawns two processes (a few seconds each on a loaded machine), so the tests that
launch are marked slow; the launcher's timeout keeps a broken run from hanging the suite.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import bstune
from bstune.errors import ConfigError, UserCodeError
from bstune.noise import exact_noise_scale, summarize
from bstune.training import Decision, EvalRecord, RunStatus, TrainConfig, train_data_parallel, trained_before
from bstune.training._sampling import rank_slices

LAUNCH = {"nprocs": 2, "timeout_s": 180, "threads_per_rank": 1}


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


class _RaisesOnRank1(torch.nn.Module):
    """Raises ``error`` on rank 1's third training forward, after two steps of the run (default: a simulated
    out-of-memory; the user's own code's error where a subclass says)."""

    error: Exception = torch.OutOfMemoryError("CUDA out of memory (simulated on rank 1)")

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.training and dist.is_initialized() and dist.get_rank() == 1 and self.calls == 3:
            raise self.error
        return self.net(x)  # type: ignore[no-any-return]


class _OOMOnRank1(_RaisesOnRank1):
    """Runs out of memory (a simulated torch.OutOfMemoryError) on rank 1's third forward."""


class _FailsOnRank1(_RaisesOnRank1):
    """Raises (the user's code) on rank 1's third training forward."""

    error = ValueError("boom on rank 1")


class _Items(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A generic map-style dataset (not a tensor pair): its batches load in DataLoader workers."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _task(model: object = _mlp, n: int = 512, optimizer: str = "sgd", generic: bool = False) -> bstune.Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    w = torch.randn(8, 3, generator=gen)
    y = (x @ w + 0.8 * torch.randn(n, 3, generator=gen)).argmax(1)
    return bstune.Task(
        model=model,  # type: ignore[arg-type]
        train_data=_Items(x, y) if generic else (x, y),
        val_data=(x[:200], y[:200]),
        loss=torch.nn.CrossEntropyLoss(),
        metrics={
            "accuracy": lambda out, t: (out.argmax(1) == t).float().mean(),
            # not a mean over examples: the ranks' outputs are gathered and it is computed once, as in one process
            "top_logit": bstune.Metric(lambda out, t: out.max(), "maximize"),
        },
        optimizer=optimizer,
    )


def _spawned_children() -> list[int]:
    """Processes this test process spawned through multiprocessing that are still alive."""
    me, found = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"spawn_main" in cmd:
            found.append(int(proc.name))
    return found


def _same_run(single: bstune.TrainResult, ddp: bstune.TrainResult) -> None:
    assert ddp.status is single.status is RunStatus.COMPLETED
    assert (ddp.steps, ddp.samples) == (single.steps, single.samples)
    assert [r.samples for r in ddp.history] == [r.samples for r in single.history]
    for a, b in zip(ddp.history, single.history, strict=True):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.batch_loss == pytest.approx(b.batch_loss, rel=1e-5)
        assert a.metrics == pytest.approx(b.metrics, rel=1e-5)
    assert ddp.model is not None and single.model is not None
    for (name, p), q in zip(single.model.named_parameters(), ddp.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ddp_run_equals_single_process_run() -> None:
    task = _task()
    cfg = TrainConfig(  # evaluation batches of 64: the 200 validation examples are sharded over the ranks
        batch_size=32, lr=0.2, max_samples=32 * 24, eval_every_samples=32 * 6, eval_batch_size=64, seed=3, device="cpu"
    )
    ddp = train_data_parallel(task, cfg, **LAUNCH)
    _same_run(bstune.train(task, cfg), ddp)
    assert not _spawned_children()


@pytest.mark.slow
def test_uneven_slices_and_micro_batches_equal_single_process() -> None:
    # B=9 on 2 ranks: slices of 5 and 4, each accumulated in micro-batches of 3 under no_sync
    task = _task()
    cfg = TrainConfig(batch_size=9, lr=0.1, max_samples=9 * 30, micro_batch_size=3, seed=1, device="cpu")
    _same_run(bstune.train(task, cfg), train_data_parallel(task, cfg, **LAUNCH))


@pytest.mark.slow
def test_each_rank_loads_its_slice_in_dataloader_workers() -> None:
    task = _task(generic=True)
    cfg = TrainConfig(  # the noise estimate tells a rank's slice from the whole batch: the halves one process measures
        batch_size=10, lr=0.1, max_samples=10 * 20, seed=2, device="cpu", track_noise=True, noise_every_steps=1
    )
    ddp = train_data_parallel(task, TrainConfig.from_dict(cfg.to_dict() | {"num_workers": 1}), **LAUNCH)
    single = bstune.train(task, replace(cfg, micro_batch_size=5))  # measured on the halves the ranks hold
    _same_run(single, ddp)
    assert len(ddp.noise_trajectory) == len(single.noise_trajectory) > 0
    for a, b in zip(ddp.noise_trajectory, single.noise_trajectory, strict=True):
        assert a.trace_sigma == pytest.approx(b.trace_sigma, rel=1e-4)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_ends_every_rank_diverged() -> None:
    # one example with a NaN input: every batch holds all 64 examples, so it is in one rank's slice only
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    x[41] = float("nan")
    task = bstune.Task(model=_mlp, train_data=(x, y), val_data=(x[:8], y[:8]), loss=torch.nn.CrossEntropyLoss())
    cfg = TrainConfig(batch_size=64, lr=0.1, max_samples=64 * 5, device="cpu")
    result = train_data_parallel(task, cfg, **LAUNCH)
    assert result.status is RunStatus.DIVERGED and result.steps == 0, result.message
    assert not _spawned_children()


def test_rank_slices_and_too_small_a_batch() -> None:
    assert rank_slices(9, 2) == [(0, 5), (5, 9)]
    assert rank_slices(3, 4) == [(0, 1), (1, 2), (2, 3), (3, 3)]
    cfg = TrainConfig(batch_size=1, lr=0.1, max_samples=10, device="cpu")
    with pytest.raises(ConfigError, match=r"batch_size.*world size 2"):
        train_data_parallel(_task(), cfg, nprocs=2)


@pytest.mark.slow
def test_ddp_noise_scale_matches_single_process_and_covers_the_exact_value() -> None:
    # lr ~ 0: the parameters stay at their initialisation, so every window measures one fixed B_simple
    task = _task()
    steps_per_window, windows, batch = 25, 8, 32
    cfg = TrainConfig(
        batch_size=batch,
        lr=1e-30,
        momentum=0.0,
        max_samples=batch * steps_per_window * windows,
        eval_every_samples=batch * steps_per_window,
        track_noise=True,
        noise_every_steps=1,
        seed=5,
        device="cpu",
    )
    ddp = train_data_parallel(task, cfg, **LAUNCH)
    # one process measures on the same two halves the ranks hold when it accumulates them (tracking
    # a whole batch, it would take per-example norms: another estimator of the same quantity)
    single = bstune.train(task, replace(cfg, micro_batch_size=batch // 2))
    assert len(ddp.noise_trajectory) == windows
    for a, b in zip(ddp.noise_trajectory, single.noise_trajectory, strict=True):
        assert a.n_steps == b.n_steps == steps_per_window
        assert a.grad_sq == pytest.approx(b.grad_sq, rel=1e-4)
        assert a.trace_sigma == pytest.approx(b.trace_sigma, rel=1e-4)
        assert a.b_simple == pytest.approx(b.b_simple, rel=1e-4)
    exact = exact_noise_scale(task, task.make_model(seed=cfg.seed), device="cpu").b_simple
    covered = sum(p.ci[0] <= exact <= p.ci[1] for p in ddp.noise_trajectory)
    assert covered >= 5, (exact, [p.ci for p in ddp.noise_trajectory])  # 90% intervals: P(<= 4 of 8) < 1%
    pooled = summarize(
        [p.grad_sq for p in ddp.noise_trajectory],
        [p.trace_sigma for p in ddp.noise_trajectory],
        batch_size=batch,
        micro_batch_size=1,
        method="training",
        population=task.n_train,
    )
    assert pooled.ci[0] <= exact <= pooled.ci[1], (exact, pooled)


@pytest.mark.slow
def test_ddp_preconditioned_noise_scale_matches_single_process() -> None:
    # Adam moves the parameters, identically in both runs: each window's estimate must agree
    task = _task(optimizer="adam")
    cfg = TrainConfig(
        batch_size=32,
        lr=1e-3,
        max_samples=32 * 40,
        eval_every_samples=32 * 20,
        track_noise=True,
        noise_every_steps=1,
        noise_preconditioned=True,
        device="cpu",
    )
    ddp, single = train_data_parallel(task, cfg, **LAUNCH), bstune.train(task, cfg)
    assert [p.n_steps for p in ddp.noise_trajectory] == [p.n_steps for p in single.noise_trajectory] == [19, 20]
    for a, b in zip(ddp.noise_trajectory, single.noise_trajectory, strict=True):  # (no second moments at step 0)
        assert a.grad_sq == pytest.approx(b.grad_sq, rel=1e-3)
        assert a.trace_sigma == pytest.approx(b.trace_sigma, rel=1e-3)


@pytest.mark.slow
def test_a_rank_that_raises_is_a_clear_error_and_leaves_no_process() -> None:
    cfg = TrainConfig(batch_size=16, lr=0.1, max_samples=16 * 10, device="cpu")
    started = time.monotonic()
    with pytest.raises(UserCodeError, match="rank 1 of 2 raised") as info:
        train_data_parallel(_task(_FailsOnRank1), cfg, **LAUNCH)
    assert "boom on rank 1" in str(info.value)
    assert info.value.traceback is not None and "ValueError: boom on rank 1" in info.value.traceback
    assert trained_before(info.value) == (2 * 16, 2)  # the two steps trained before it: a study counts them
    assert time.monotonic() - started < 60
    assert not _spawned_children()


@pytest.mark.slow
def test_an_oom_on_one_rank_ends_the_run_oom_without_a_hang() -> None:
    cfg = TrainConfig(batch_size=16, lr=0.1, max_samples=16 * 10, device="cpu")
    started = time.monotonic()
    result = train_data_parallel(_task(_OOMOnRank1), cfg, **LAUNCH)
    assert result.status is RunStatus.OOM and "simulated on rank 1" in result.message
    assert time.monotonic() - started < 60
    assert not _spawned_children()


@pytest.mark.slow
def test_the_pruning_callback_runs_in_the_parent_and_stops_every_rank() -> None:
    seen: list[EvalRecord] = []
    here = object()  # not picklable into a child: the callback must run in this process

    def prune_at_second(record: EvalRecord) -> Decision:
        assert here is not None
        seen.append(record)
        return Decision.STOP if len(seen) == 2 else Decision.CONTINUE

    cfg = TrainConfig(batch_size=16, lr=0.1, max_samples=16 * 40, eval_every_samples=16 * 4, device="cpu")
    result = train_data_parallel(_task(), cfg, prune_at_second, **LAUNCH)
    assert result.status is RunStatus.STOPPED
    assert [r.samples for r in result.history] == [r.samples for r in seen] == [64, 128]
    assert result.steps == 8  # rank 1 stopped too: a rank still training would fail the launch
    assert not _spawned_children()
