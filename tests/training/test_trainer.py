"""The trainer: sample counting, accumulation, determinism, divergence, milestones, AMP, OOM."""

from __future__ import annotations

import math

import pytest
import torch

import bstune
from bstune.errors import ConfigError
from bstune.noise import exact_noise_scale
from bstune.training import Decision, RunStatus, lr_at, trained_before


def _params(model: torch.nn.Module | None) -> torch.Tensor:
    assert model is not None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_counts_samples_and_steps(blob_task: bstune.Task) -> None:
    run = bstune.train(blob_task, bstune.TrainConfig(batch_size=48, lr=0.1, max_samples=1000))
    assert run.status is RunStatus.COMPLETED
    assert run.steps == math.ceil(1000 / 48)
    assert run.samples == run.steps * 48  # every step holds exactly batch_size examples
    assert run.final is not None and run.final.samples == run.samples


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gradient_accumulation_gives_the_full_batch_update(blob_task: bstune.Task, momentum: float) -> None:
    base = dict(batch_size=32, lr=0.2, momentum=momentum, max_samples=640, seed=4)
    full = bstune.train(blob_task, bstune.TrainConfig(**base))  # type: ignore[arg-type]
    accumulated = bstune.train(blob_task, bstune.TrainConfig(**base, micro_batch_size=8))  # type: ignore[arg-type]
    uneven = bstune.train(blob_task, bstune.TrainConfig(**base, micro_batch_size=12))  # type: ignore[arg-type]  # 12+12+8
    torch.testing.assert_close(_params(accumulated.model), _params(full.model), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_params(uneven.model), _params(full.model), rtol=1e-5, atol=1e-6)


def test_noise_tracking_does_not_change_the_update(blob_task: bstune.Task) -> None:
    base = dict(batch_size=32, lr=0.2, max_samples=640, seed=4)
    plain = bstune.train(blob_task, bstune.TrainConfig(**base))  # type: ignore[arg-type]
    tracked = bstune.train(blob_task, bstune.TrainConfig(**base, track_noise=True))  # type: ignore[arg-type]
    torch.testing.assert_close(_params(tracked.model), _params(plain.model), rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_and_another_seed_differs(blob_task: bstune.Task) -> None:
    cfg = bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=800, seed=7, track_noise=True)
    a, b = bstune.train(blob_task, cfg), bstune.train(blob_task, cfg)
    assert [r.to_dict() | {"elapsed_s": 0} for r in a.history] == [r.to_dict() | {"elapsed_s": 0} for r in b.history]
    assert torch.equal(_params(a.model), _params(b.model))
    c = bstune.train(blob_task, bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=800, seed=8))
    assert not torch.equal(_params(a.model), _params(c.model))


def test_divergence_ends_the_run_without_raising(blob_task: bstune.Task) -> None:
    run = bstune.train(blob_task, bstune.TrainConfig(batch_size=16, lr=1e6, momentum=0.9, max_samples=4000))
    assert run.status is RunStatus.DIVERGED
    assert "samples" in run.message and run.samples < 4000


def test_non_finite_loss_is_divergence_even_without_the_factor(blob_task: bstune.Task) -> None:
    def exploding_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_example = torch.nn.functional.cross_entropy(out, y, reduction="none")
        return (per_example * torch.exp(out.abs().amax(dim=-1))).mean()  # overflows to inf once logits pass ~88

    task = bstune.Task(
        model=blob_task.model, train_data=blob_task.train_data, val_data=blob_task.val_data, loss=exploding_loss
    )
    run = bstune.train(task, bstune.TrainConfig(batch_size=16, lr=10.0, max_samples=4000, divergence_factor=None))
    assert run.status is RunStatus.DIVERGED
    assert "inf" in run.message or "nan" in run.message


@pytest.mark.parametrize("error", [RuntimeError("model broke"), KeyboardInterrupt()])
def test_a_model_that_raises_goes_up_with_what_the_run_trained(blob_task: bstune.Task, error: BaseException) -> None:
    """A model that raises mid-run, or Ctrl-C: the error goes up, with the samples and steps the run had trained (a
    study counts them for the failed trial, and for the interrupted one, which kept its last milestone's count)."""

    class Breaks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = blob_task.make_model(seed=0), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.calls += 1
                if self.calls > 12:
                    raise error
            return self.inner(x)  # type: ignore[no-any-return]

    with pytest.raises(type(error)) as info:
        bstune.train(blob_task, bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=2048), model=Breaks())
    assert trained_before(info.value) == (12 * 16, 12)


def test_milestones_are_shared_across_batch_sizes(blob_task: bstune.Task) -> None:
    marks = {}
    for batch in (16, 48, 100):
        cfg = bstune.TrainConfig(batch_size=batch, lr=0.1, max_samples=1000, eval_every_samples=250)
        run = bstune.train(blob_task, cfg)
        marks[batch] = [r.milestone for r in run.history]
        assert all(r.samples >= r.milestone and r.samples - r.milestone < batch for r in run.history)
    assert marks[16] == marks[48] == marks[100] == [250, 500, 750, 1000]


def test_history_holds_losses_metrics_and_gap(blob_task: bstune.Task) -> None:
    cfg = bstune.TrainConfig(batch_size=32, lr=0.3, max_samples=2000, eval_at_start=True)
    run = bstune.train(blob_task, cfg)
    first, last = run.history[0], run.history[-1]
    assert first.milestone == 0 and math.isnan(first.batch_loss)
    assert last.val_loss < first.val_loss
    assert set(last.metrics) == {"train_accuracy", "val_accuracy"}
    assert last.gap == pytest.approx(last.val_loss - last.train_loss)
    assert run.to_dict()["history"][-1]["gap"] == pytest.approx(last.gap)


def _r2(out: torch.Tensor, y: torch.Tensor) -> float:
    return float(1 - ((out.squeeze(-1) - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def test_a_metric_is_the_whole_sets_not_an_average_over_evaluation_batches() -> None:
    """A newcomer's R² on a validation set sorted by its target read -5.29 against the set's 0.943: it was the
    mean over chunks of eval_batch_size rows. Ground truth: the metric on the whole set's outputs, computed here."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 5, generator=gen)
    y = x @ torch.randn(5, generator=gen) + 0.3 * torch.randn(600, generator=gen)
    order = y[400:].argsort()  # a validation set sorted by its target
    task = bstune.Task(
        model=lambda: torch.nn.Linear(5, 1),
        train_data=(x[:400], y[:400].unsqueeze(-1)),
        val_data=(x[400:][order], y[400:][order].unsqueeze(-1)),
        loss=torch.nn.MSELoss(),
        metrics={
            "r2": bstune.Metric(lambda out, t: _r2(out, t.squeeze(-1)), "maximize"),
            "chunked_r2": bstune.Metric(lambda out, t: _r2(out, t.squeeze(-1)), "maximize", over="batch"),
            "mse": bstune.Metric(lambda out, t: ((out - t) ** 2).mean(), "minimize", over="batch"),
        },
        optimizer="sgd",
    )
    cfg = bstune.TrainConfig(batch_size=32, lr=0.05, max_samples=4000, eval_batch_size=50, device="cpu")
    run = bstune.train(task, cfg)
    assert run.model is not None
    with torch.no_grad():
        out = run.model(x[400:][order])
    truth = _r2(out, y[400:][order])
    last = run.history[-1].metrics
    assert truth > 0.8 and last["val_r2"] == pytest.approx(truth, rel=1e-5)
    assert last["val_chunked_r2"] < truth - 0.25  # what it read before (0.65 against 0.98)
    # a mean over examples is exact either way: the weighted mean of the batches' means is the set's mean
    assert last["val_mse"] == pytest.approx(float(((out.squeeze(-1) - y[400:][order]) ** 2).mean()), rel=1e-5)
    assert run.history[-1].val_loss == pytest.approx(last["val_mse"], rel=1e-5)


def test_callback_can_stop_the_run(blob_task: bstune.Task) -> None:
    seen: list[int] = []

    def stop_at_second(record: bstune.EvalRecord) -> Decision:
        seen.append(record.milestone)
        return Decision.STOP if len(seen) == 2 else Decision.CONTINUE

    run = bstune.train(blob_task, bstune.TrainConfig(batch_size=32, lr=0.1, max_samples=3200), stop_at_second)
    assert run.status is RunStatus.STOPPED
    assert seen == [320, 640] and run.samples == 640


def test_a_stop_at_the_last_milestone_leaves_the_run_completed(blob_task: bstune.Task) -> None:
    # a run that has spent its budget is complete: the callback's STOP comes too late to save anything
    config = bstune.TrainConfig(batch_size=32, lr=0.1, max_samples=960, eval_every_samples=320)
    run = bstune.train(blob_task, config, lambda r: Decision.STOP if r.milestone == 960 else Decision.CONTINUE)
    assert run.status is RunStatus.COMPLETED and run.samples == 960
    assert [r.milestone for r in run.history] == [320, 640, 960]


def test_tracked_noise_scale_matches_the_exact_value_at_fixed_parameters(blob_task: bstune.Task) -> None:
    """With a learning rate of ~0 the parameters stay put, so every step measures the same B_simple."""
    cfg = bstune.TrainConfig(
        batch_size=32,
        lr=1e-12,
        max_samples=32 * 200,
        eval_every_samples=32 * 200,
        micro_batch_size=8,
        noise_every_steps=1,
        track_noise=True,
        seed=2,
    )
    run = bstune.train(blob_task, cfg)
    exact = exact_noise_scale(blob_task, blob_task.make_model(seed=2)).b_simple
    point = run.noise_trajectory[-1]
    assert point.n_steps == 200
    assert point.ci[0] <= exact <= point.ci[1]
    assert point.b_simple == pytest.approx(exact, rel=0.1)
    assert point.temperature == pytest.approx(1e-12 / 32)


def test_tracking_without_accumulation_splits_every_nth_step(blob_task: bstune.Task) -> None:
    cfg = bstune.TrainConfig(
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        max_samples=3200,
        eval_every_samples=1600,
        track_noise=True,
        noise_every_steps=4,
    )
    run = bstune.train(blob_task, cfg)
    assert [p.n_steps for p in run.noise_trajectory] == [13, 12]  # steps 0, 4, 8, ... of 100
    assert run.history[-1].noise is run.noise_trajectory[-1]
    assert run.noise_trajectory[0].temperature == pytest.approx(0.05 / (32 * 0.1))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_runs_and_the_tracker_unscales_gradients(blob_task: bstune.Task, dtype: str) -> None:
    """float16 goes through a GradScaler (gradients scaled by 2^16); norms must be divided by scale²."""
    base = dict(
        batch_size=32,
        lr=1e-12,
        max_samples=32 * 100,
        eval_every_samples=32 * 100,
        micro_batch_size=8,
        noise_every_steps=1,
        track_noise=True,
        seed=2,
    )
    amp = bstune.train(blob_task, bstune.TrainConfig(**base, amp=True, amp_dtype=dtype))  # type: ignore[arg-type]
    assert amp.status is RunStatus.COMPLETED
    exact = exact_noise_scale(blob_task, blob_task.make_model(seed=2))
    point = amp.noise_trajectory[-1]
    assert point.grad_sq == pytest.approx(exact.grad_sq, rel=0.3)  # off by 2^32 if the scale leaked in
    assert point.b_simple == pytest.approx(exact.b_simple, rel=0.25)


def test_out_of_memory_ends_the_run_as_oom(blob_task: bstune.Task) -> None:
    class Hungry(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = blob_task.model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and x.shape[0] > 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner(x)

    task = bstune.Task(model=Hungry, train_data=blob_task.train_data, val_data=blob_task.val_data, loss=blob_task.loss)
    run = bstune.train(task, bstune.TrainConfig(batch_size=128, lr=0.1, max_samples=1000))
    assert run.status is RunStatus.OOM
    assert "batch_size=128" in run.message
    fits = bstune.train(task, bstune.TrainConfig(batch_size=128, lr=0.1, max_samples=1000, micro_batch_size=64))
    assert fits.status is RunStatus.COMPLETED  # accumulation is the way out


def test_errors_from_user_code_propagate(blob_task: bstune.Task) -> None:
    calls = {"n": 0}

    def flaky_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("boom in user loss")
        return torch.nn.functional.cross_entropy(out, y)

    task = bstune.Task(
        model=blob_task.model, train_data=blob_task.train_data, val_data=blob_task.val_data, loss=flaky_loss
    )
    with pytest.raises(RuntimeError, match="boom in user loss"):
        bstune.train(task, bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=1000))


def test_schedules_warm_up_and_decay() -> None:
    cfg = bstune.TrainConfig(
        batch_size=10, lr=1.0, max_samples=110, warmup_samples=10, schedule="cosine", final_lr_ratio=0.1
    )
    assert lr_at(cfg, 0) == pytest.approx(1.0)  # the first step already ends the 10-sample warmup
    assert lr_at(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    constant = bstune.TrainConfig(batch_size=10, lr=0.3, max_samples=100, warmup_samples=40)
    assert [lr_at(constant, s) for s in (0, 20, 40, 90)] == pytest.approx([0.075, 0.225, 0.3, 0.3])


def test_batch_larger_than_the_dataset_is_refused(blob_task: bstune.Task) -> None:
    with pytest.raises(ConfigError, match="larger than the training set") as info:
        bstune.train(blob_task, bstune.TrainConfig(batch_size=1000, lr=0.1, max_samples=2000))
    assert info.value.field == "batch_size"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 8.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"max_samples": 0}, "max_samples"),
        ({"momentum": 1.0}, "momentum"),
        ({"warmup_samples": 10_000}, "warmup_samples"),
        ({"schedule": "step"}, "schedule"),
        ({"micro_batch_size": 64}, "micro_batch_size"),
        ({"amp_dtype": "int8"}, "amp_dtype"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"batch_size": 32, "lr": 0.1, "max_samples": 1000} | kwargs
    with pytest.raises(ConfigError) as info:
        bstune.TrainConfig(**args)  # type: ignore[arg-type]
    assert info.value.field == field and info.value.source == "TrainConfig"


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = bstune.TrainConfig(batch_size=32, lr=0.1, max_samples=1000, warmup_samples=100)
    assert bstune.TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        bstune.TrainConfig.from_dict(cfg.to_dict() | {"learning_rate": 0.1})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_with_noise_tracking(blob_task: bstune.Task) -> None:
    cfg = bstune.TrainConfig(
        batch_size=64, lr=0.1, max_samples=6400, device="cuda", amp=True, micro_batch_size=16, track_noise=True
    )
    run = bstune.train(blob_task, cfg)
    assert run.status is RunStatus.COMPLETED
    assert next(run.model.parameters()).is_cuda  # type: ignore[union-attr]
    assert all(p.b_simple > 0 for p in run.noise_trajectory)


def test_preconditioned_tracking_for_adam(blob_task: bstune.Task) -> None:
    adam = bstune.Task(
        model=blob_task.model,
        train_data=blob_task.train_data,
        val_data=blob_task.val_data,
        loss=blob_task.loss,
        optimizer="adam",
    )
    cfg = bstune.TrainConfig(
        batch_size=32,
        lr=1e-2,
        max_samples=3200,
        eval_every_samples=1600,
        track_noise=True,
        noise_every_steps=1,
        noise_preconditioned=True,
    )
    run = bstune.train(adam, cfg)
    assert run.status is RunStatus.COMPLETED
    assert [p.n_steps for p in run.noise_trajectory] == [49, 50]  # the first step has no second moments yet
    assert all(p.b_simple > 0 for p in run.noise_trajectory)
    with pytest.raises(ConfigError, match="Adam-family"):
        bstune.train(blob_task, cfg)


def test_a_run_continued_with_its_optimizer_state_is_the_uninterrupted_run(blob_task: bstune.Task) -> None:
    """Full-batch steps (the data order cannot differ): 5 + 5 momentum steps, the state carried, are 10."""
    n = blob_task.n_train
    cfg = bstune.TrainConfig(batch_size=n, lr=0.3, momentum=0.9, max_samples=10 * n, seed=2)
    whole = bstune.train(blob_task, cfg)
    half = bstune.TrainConfig(batch_size=n, lr=0.3, momentum=0.9, max_samples=5 * n, seed=2)
    first = bstune.train(blob_task, half)
    assert first.optimizer_state is not None and first.optimizer_state["state"]  # the momentum buffers
    carried = bstune.train(blob_task, half, model=first.model, optimizer_state=first.optimizer_state)
    torch.testing.assert_close(_params(carried.model), _params(whole.model), rtol=1e-5, atol=1e-6)
    first = bstune.train(blob_task, half)
    fresh = bstune.train(blob_task, half, model=first.model)  # momentum restarts from zero
    assert not torch.allclose(_params(fresh.model), _params(whole.model), rtol=1e-3, atol=1e-4)
    # the config's hyperparameters apply, not the saved ones
    other = bstune.TrainConfig(batch_size=n, lr=0.05, momentum=0.5, max_samples=n, seed=2)
    run = bstune.train(blob_task, other, model=first.model, optimizer_state=first.optimizer_state)
    assert run.optimizer_state is not None
    group = run.optimizer_state["param_groups"][0]
    assert (group["lr"], group["momentum"]) == (0.05, 0.5)
