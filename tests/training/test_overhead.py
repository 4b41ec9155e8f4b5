"""The trainer's own cost (issue 16, part 5): the cheap paths must not change what a run computes.

* an untracked run is a plain PyTorch loop bit for bit (data order, init, update, batch losses);
* the training loss is read on the host once per ``LOSS_CHECK_EVERY`` steps, not every step,
  and divergence is still caught, at most that many steps late, against the first step's loss;
* noise tracking on a model the per-example hooks cover takes no extra forward pass, leaves
  the update exactly as untracked, and its B_simple is unbiased (the exact full-dataset value
  at fixed parameters) and agrees with the split estimator; models the hooks do not cover
  (BatchNorm, custom layers) fall back to splitting the measured batch.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import bstune
from bstune.noise import exact_noise_scale
from bstune.training import RunStatus, _loop, _losses
from tests.conftest import accuracy, make_classification, small_mlp


def _params(model: nn.Module | None) -> torch.Tensor:
    assert model is not None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _hand_loop(task: bstune.Task, cfg: bstune.TrainConfig) -> tuple[nn.Module, list[float]]:
    """bstune's run as a plain loop: its init, its data order, SGD; the mean batch loss per window."""
    torch.manual_seed(cfg.seed)
    model = task.make_model(seed=cfg.seed)
    opt = task.optimizer_spec.build(list(model.parameters()), lr=cfg.lr, momentum=cfg.momentum)
    x, y = task.train_dataset.tensors  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    done, window, means = 0, [], []
    marks = [*range(cfg.eval_every, cfg.max_samples, cfg.eval_every), cfg.max_samples]
    while done < cfg.max_samples:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = _loop.lr_at(cfg, done)
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            window.append(loss.item())
            done += cfg.batch_size
            if marks and done >= marks[0]:
                while marks and done >= marks[0]:
                    marks.pop(0)
                total = 0.0
                for v in window:  # as the trainer sums: in step order, in Python floats
                    total += v
                means.append(total / len(window))
                window = []
            if done >= cfg.max_samples:
                return model, means
    return model, means


@pytest.mark.parametrize("schedule", [{}, {"warmup_samples": 480, "schedule": "cosine"}])
def test_an_untracked_run_is_a_plain_loop_bit_for_bit(blob_task: bstune.Task, schedule: dict[str, Any]) -> None:
    cfg = bstune.TrainConfig(
        batch_size=24, lr=0.2, momentum=0.9, max_samples=24 * 70, eval_every_samples=500, seed=3, **schedule
    )
    run = bstune.train(blob_task, cfg)
    model, means = _hand_loop(blob_task, cfg)
    assert torch.equal(_params(run.model), _params(model))
    assert [r.batch_loss for r in run.history] == means  # exactly: same floats, same order of addition


class _Reads:
    """Counts host reads of tensor values (``float(t)``, ``t.item()``, ``t.tolist()``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("__float__", "item", "tolist"):
            original = getattr(torch.Tensor, name)

            def counted(t: torch.Tensor, *args: Any, _original: Any = original) -> Any:
                self.count += 1
                return _original(t, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_training_loss_is_read_once_per_check_interval(
    blob_task: bstune.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 10 * _losses.LOSS_CHECK_EVERY
    cfg = bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=16 * steps, eval_every_samples=16 * steps)
    reads = _Reads(monkeypatch)
    run = bstune.train(blob_task, cfg)
    assert run.steps == steps
    evaluation = 2 * (1 + len(blob_task.metrics))  # one batch each of the train subset and validation set
    assert reads.count <= steps // _losses.LOSS_CHECK_EVERY + evaluation  # was one per step (a host sync)


class _LossAt:
    """Cross-entropy times ``factors[step]`` on training steps (evaluation: plain)."""

    def __init__(self, factors: dict[int, float], default: float = 1.0) -> None:
        self.factors, self.default, self.step = factors, default, 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(out, y)
        if not torch.is_grad_enabled():
            return loss
        factor = self.factors.get(self.step, self.default)
        self.step += 1
        return loss * factor


def _task_with(loss: _LossAt) -> bstune.Task:
    x, y = make_classification(n=400)
    return bstune.Task(model=small_mlp, train_data=(x[:320], y[:320]), val_data=(x[320:], y[320:]), loss=loss)


@pytest.mark.parametrize("bad_step", [0, 5, 37])
def test_a_nan_loss_ends_the_run_diverged_within_the_check_lag(bad_step: int) -> None:
    task = _task_with(_LossAt({bad_step: math.nan}))
    cfg = bstune.TrainConfig(batch_size=16, lr=0.05, max_samples=16 * 200, eval_every_samples=16 * 100)
    run = bstune.train(task, cfg)
    assert run.status is RunStatus.DIVERGED
    assert f"became nan at step {bad_step} (samples {16 * bad_step})" in run.message
    assert bad_step < run.steps <= bad_step + _losses.LOSS_CHECK_EVERY
    assert run.history == []  # no evaluation after the bad step: the losses are checked before each one


def test_the_divergence_factor_still_compares_with_the_first_step() -> None:
    # step 0 is the reference; steps after it are 1000x smaller, so 50x the first is 50,000x the
    # recent ones and still no divergence; 200x the first is
    task = _task_with(_LossAt({0: 1.0, 30: 50.0, 70: 200.0}, default=1e-3))
    cfg = bstune.TrainConfig(batch_size=16, lr=1e-9, max_samples=16 * 200, eval_every_samples=16 * 50)
    run = bstune.train(task, cfg)
    assert run.status is RunStatus.DIVERGED
    assert "exceeded 100x the first step's" in run.message and "at step 70 (samples 1120)" in run.message
    assert 70 < run.steps <= 70 + _losses.LOSS_CHECK_EVERY
    assert [r.milestone for r in run.history] == [800]  # the evaluation at 1600 comes after step 70


class _Counting(nn.Sequential):
    """Counts training forward passes."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            _Counting.calls += 1
        return super().forward(x)


def _counting_mlp() -> nn.Module:
    return _Counting(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _counting_bn() -> nn.Module:
    return _Counting(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


class _Scale(nn.Module):
    """A layer without a per-example rule."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _counting_custom() -> nn.Module:
    return _Counting(nn.Linear(8, 16), _Scale(), nn.Tanh(), nn.Linear(16, 3))


class _Functional(_Counting):
    """Uses the first layer's weight again outside the layer (found by the hooks' check)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + nn.functional.linear(x, self[0].weight)[:, :3]


def _counting_functional() -> nn.Module:
    return _Functional(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _task(model: Any) -> bstune.Task:
    x, y = make_classification(n=520)
    return bstune.Task(
        model=model,
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
    )


def test_per_example_tracking_takes_no_extra_forward_and_keeps_the_update_exact() -> None:
    task = _task(_counting_mlp)
    base = dict(batch_size=32, lr=0.2, momentum=0.9, max_samples=32 * 48, eval_every_samples=32 * 24, seed=4)
    plain = bstune.train(task, bstune.TrainConfig(**base))  # type: ignore[arg-type]
    _Counting.calls = 0
    tracked = bstune.train(task, bstune.TrainConfig(**base, track_noise=True, noise_every_steps=4))  # type: ignore[arg-type]
    assert _Counting.calls == tracked.steps == 48  # the split path ran two forwards per measured step
    assert torch.equal(_params(tracked.model), _params(plain.model))
    assert [p.n_steps for p in tracked.noise_trajectory] == [6, 6]
    assert all(math.isfinite(p.b_simple) for p in tracked.noise_trajectory)
    # the hooks are on the model during measured steps only
    assert tracked.model is not None and not any(m._forward_hooks for m in tracked.model.modules())


@pytest.mark.parametrize("factory", [_counting_bn, _counting_custom], ids=["batchnorm", "custom_layer"])
def test_models_the_hooks_do_not_cover_split_the_measured_batch(factory: Any) -> None:
    task = _task(factory)
    _Counting.calls = 0
    run = bstune.train(
        task,
        bstune.TrainConfig(
            batch_size=32,
            lr=0.1,
            max_samples=32 * 48,
            eval_every_samples=32 * 24,
            noise_every_steps=4,
            track_noise=True,
        ),
    )
    assert run.status is RunStatus.COMPLETED
    assert _Counting.calls == 48 + 12  # measured steps 0, 4, ..., 44 run two half batches
    assert [p.n_steps for p in run.noise_trajectory] == [6, 6]


def test_a_parameter_used_outside_its_layer_falls_back_to_split_after_the_check() -> None:
    task = _task(_counting_functional)
    _Counting.calls = 0
    run = bstune.train(
        task,
        bstune.TrainConfig(
            batch_size=32,
            lr=0.1,
            max_samples=32 * 48,
            eval_every_samples=32 * 24,
            noise_every_steps=4,
            track_noise=True,
        ),
    )
    assert run.status is RunStatus.COMPLETED
    # step 0: per-example, its check finds the functional use and its measurement is dropped;
    # steps 4, ..., 44 split (two forwards each)
    assert _Counting.calls == 48 + 11
    assert [p.n_steps for p in run.noise_trajectory] == [5, 6]


def _windows(task: bstune.Task, monkeypatch: pytest.MonkeyPatch | None) -> list[bstune.noise.TrajectoryPoint]:
    if monkeypatch is not None:  # force the split path
        monkeypatch.setattr(_loop._Run, "_per_example_norms", lambda self: None)
    cfg = bstune.TrainConfig(
        batch_size=32,
        lr=1e-12,  # the parameters stay put: every step measures the same B_simple
        max_samples=32 * 600,
        eval_every_samples=32 * 150,
        noise_every_steps=1,
        track_noise=True,
        seed=2,
    )
    return bstune.train(task, cfg).noise_trajectory


def test_per_example_tracking_is_unbiased_and_agrees_with_the_split_path(
    blob_task: bstune.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = exact_noise_scale(blob_task, blob_task.make_model(seed=2)).b_simple
    per_example = _windows(blob_task, None)
    split = _windows(blob_task, monkeypatch)
    assert [p.n_steps for p in per_example] == [150] * 4
    for points in (per_example, split):
        inside = [p.ci[0] <= exact <= p.ci[1] for p in points]
        assert sum(inside) >= 3, (exact, [(p.b_simple, p.ci) for p in points])  # 90% intervals
        pooled = sum(p.trace_sigma for p in points) / sum(p.grad_sq for p in points)
        assert pooled == pytest.approx(exact, rel=0.1)
    # the same quantity from the two estimators: close, and per-example the tighter
    pe = sum(p.trace_sigma for p in per_example) / sum(p.grad_sq for p in per_example)
    sp = sum(p.trace_sigma for p in split) / sum(p.grad_sq for p in split)
    assert pe == pytest.approx(sp, rel=0.15)
    width = [(p.ci[1] - p.ci[0]) / p.b_simple for p in per_example]
    split_width = [(p.ci[1] - p.ci[0]) / p.b_simple for p in split]
    assert sorted(width)[1] < sorted(split_width)[2]
