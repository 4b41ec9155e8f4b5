"""measure_noise_scale against ground truth: every per-example gradient, and a closed form."""

from __future__ import annotations

import logging

import pytest
import torch

import bstune
from bstune.errors import ConfigError
from bstune.noise import adam_preconditioner, exact_noise_scale, per_example_gradients
from bstune.noise._gradients import batch_gradient
from tests.conftest import make_classification


def _trained(task: bstune.Task, samples: int = 800) -> torch.nn.Module:
    """Some training: B_simple grows from ~7 at init to ~50 here (to ~900 after 3000 samples,
    beyond what batches of 32 from 400 examples can resolve)."""
    run = bstune.train(task, bstune.TrainConfig(batch_size=32, lr=0.3, max_samples=samples, seed=3))
    assert run.model is not None
    return run.model


def test_per_example_gradients_match_one_backward_per_example(blob_task: bstune.Task) -> None:
    model = blob_task.make_model(seed=0)
    x, y = blob_task.train_dataset[:6]
    per_ex = per_example_gradients(model, blob_task.loss, x, y)
    for i in range(6):
        single = batch_gradient(model, blob_task.loss, x[i : i + 1], y[i : i + 1])
        for name, g in single.items():
            torch.testing.assert_close(per_ex[name][i], g, rtol=1e-5, atol=1e-7)


def test_exact_matches_a_direct_computation(blob_task: bstune.Task) -> None:
    model = blob_task.make_model(seed=0)
    x, y = blob_task.train_dataset[:]
    grads = per_example_gradients(model, blob_task.loss, x, y)
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1).double()  # (D, P)
    mean = flat.mean(0)
    trace = ((flat - mean) ** 2).sum(1).mean()
    exact = exact_noise_scale(blob_task, model, chunk_examples=64)
    assert exact.grad_sq == pytest.approx(float(mean @ mean), rel=1e-9)
    assert exact.trace_sigma == pytest.approx(float(trace), rel=1e-9)


@pytest.mark.parametrize("method", ["per_example", "micro_batch"])
@pytest.mark.parametrize("trained", [False, True], ids=["init", "trained"])
def test_estimate_agrees_with_the_exact_full_dataset_value(blob_task: bstune.Task, method: str, trained: bool) -> None:
    model = _trained(blob_task) if trained else blob_task.make_model(seed=0)
    exact = exact_noise_scale(blob_task, model)
    est = bstune.measure_noise_scale(
        blob_task,
        model,
        batch_size=32,
        method=method,
        rel_precision=0.1,  # type: ignore[arg-type]
        max_samples=40_000 if method == "per_example" else 8_000,  # micro-batches: 4 backward passes per batch
        seed=1,
        confidence=0.99,
    )  # one draw: 99%; calibration below
    assert est.ci[0] <= exact.b_simple <= est.ci[1], (est, exact)
    assert est.b_simple == pytest.approx(exact.b_simple, rel=0.2 if method == "per_example" else 0.35)
    assert est.trace_sigma_ci[0] <= exact.trace_sigma <= est.trace_sigma_ci[1]
    assert est.population == blob_task.n_train


@pytest.mark.slow
@pytest.mark.parametrize("method", ["per_example", "micro_batch"])
def test_interval_is_calibrated_over_repeated_draws(blob_task: bstune.Task, method: str) -> None:
    """The exact value falls inside the 90% interval in >= ~85% of seeded repetitions."""
    model = _trained(blob_task)
    exact = exact_noise_scale(blob_task, model).b_simple
    reps = 60
    hits = 0
    for seed in range(reps):
        est = bstune.measure_noise_scale(
            blob_task,
            model,
            batch_size=32,
            method=method,
            seed=seed,  # type: ignore[arg-type]
            max_samples=20 * 32 if method == "micro_batch" else None,
        )
        hits += est.ci[0] <= exact <= est.ci[1]  # per-example: the default stopping rule (rel_precision=0.1)
    assert hits / reps >= 0.83, f"coverage {hits}/{reps}"


def _linear_regression(n: int, d: int, sigma: float, seed: int = 0) -> tuple[bstune.Task, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=gen)
    x = torch.randn(n, d, generator=gen)
    y = x @ w_star + sigma * torch.randn(n, generator=gen)
    task = bstune.Task(
        model=lambda: torch.nn.Linear(d, 1, bias=False),
        train_data=(x, y[:, None]),
        val_data=(x[:100], y[:100, None]),
        loss=torch.nn.MSELoss(),
    )
    return task, w_star


@pytest.mark.parametrize("method", ["per_example", "micro_batch"])
def test_linear_regression_matches_the_closed_form(method: str) -> None:
    """x ~ N(0, I_d), y = w*·x + σε, squared loss at w = w* + δ:
    g = 2x(xᵀδ − σε), G = 2δ, Σ = 4[δδᵀ + (|δ|² + σ²)I], so
    B_simple = ((d + 1)|δ|² + dσ²) / |δ|² (and B_noise equals it, since H ∝ I)."""
    d, sigma = 4, 2.0
    task, w_star = _linear_regression(n=50_000, d=d, sigma=sigma)
    delta = torch.tensor([0.6, -0.8, 0.0, 0.0])  # |δ| = 1
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    closed = ((d + 1) * 1.0 + d * sigma**2) / 1.0  # 21
    exact = exact_noise_scale(task, model, chunk_examples=5000)
    assert exact.b_simple == pytest.approx(closed, rel=0.05)  # the finite dataset is a sample of the population
    est = bstune.measure_noise_scale(
        task,
        model,
        batch_size=64,
        method=method,
        rel_precision=0.05,  # type: ignore[arg-type]
        max_samples=200_000,
        seed=0,
        confidence=0.99,
    )
    assert est.ci[0] <= exact.b_simple <= est.ci[1]
    assert est.b_simple == pytest.approx(closed, rel=0.1)


def test_preconditioned_variant_matches_its_exact_value(blob_task: bstune.Task) -> None:
    task = bstune.Task(
        model=blob_task.model,
        train_data=blob_task.train_data,
        val_data=blob_task.val_data,
        loss=blob_task.loss,
        optimizer="adam",
    )
    model = task.make_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = task.train_dataset[:]
    for i in range(20):
        opt.zero_grad()
        task.loss(model(x[i * 16 : (i + 1) * 16]), y[i * 16 : (i + 1) * 16]).backward()
        opt.step()
    precond = adam_preconditioner(opt, model)
    exact = exact_noise_scale(task, model, preconditioner=precond)
    plain = exact_noise_scale(task, model)
    assert exact.preconditioned and exact.b_simple != pytest.approx(plain.b_simple, rel=0.05)
    est = bstune.measure_noise_scale(
        task, model, batch_size=32, preconditioner=precond, rel_precision=0.1, max_samples=40_000, confidence=0.99
    )
    assert est.preconditioned
    assert est.ci[0] <= exact.b_simple <= est.ci[1]


def test_preconditioner_needs_optimizer_state(blob_task: bstune.Task) -> None:
    model = blob_task.make_model(seed=0)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(bstune.BstuneError, match="second-moment"):
        adam_preconditioner(opt, model)


def test_batchnorm_rejects_per_example_but_allows_micro_batches() -> None:
    x, y = make_classification()
    task = bstune.Task(
        model=lambda: torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        ),
        train_data=(x, y),
        val_data=(x, y),
        loss=torch.nn.CrossEntropyLoss(),
        validate=False,  # the check must not depend on the smoke test having run
    )
    with pytest.raises(ConfigError, match=r"BatchNorm.*micro_batch"):
        bstune.measure_noise_scale(task, batch_size=32)
    est = bstune.measure_noise_scale(task, batch_size=32, method="micro_batch", micro_batch_size=8, n_batches=4)
    assert est.n_batches == 4 and est.micro_batch_size == 8
    with pytest.raises(ConfigError, match="BatchNorm"):
        exact_noise_scale(task, task.make_model(seed=0))
    assert exact_noise_scale(task, task.make_model(seed=0), mode="eval").b_simple > 0


def test_stops_when_precise_enough(blob_task: bstune.Task) -> None:
    est = bstune.measure_noise_scale(blob_task, batch_size=32, rel_precision=0.2, max_samples=100_000)
    assert est.rel_half_width <= 0.2
    assert est.n_examples < 100_000


def test_budget_caps_the_examples_used_and_warns(blob_task: bstune.Task, caplog: pytest.LogCaptureFixture) -> None:
    model = _trained(blob_task, samples=3000)
    with caplog.at_level(logging.WARNING, logger="bstune"):
        est = bstune.measure_noise_scale(blob_task, model, batch_size=16, rel_precision=0.01, max_samples=160)
    assert est.n_examples <= 160
    assert "wider than the requested" in caplog.text


def test_measuring_leaves_the_model_as_it_was(blob_task: bstune.Task) -> None:
    model = blob_task.make_model(seed=0).eval()
    before = [p.detach().clone() for p in model.parameters()]
    bstune.measure_noise_scale(blob_task, model, batch_size=16, n_batches=3, method="micro_batch")
    assert not model.training
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b) and b.grad is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 10_000}, "batch_size"),
        ({"batch_size": 1}, "batch_size"),
        ({"method": "micro_batch", "batch_size": 32, "micro_batch_size": 5}, "micro_batch_size"),
        ({"method": "hessian"}, "method"),
        ({"n_batches": 1}, "n_batches"),
        ({"max_samples": 10}, "max_samples"),
        ({"mode": "inference"}, "mode"),
        ({"confidence": 1.0}, "confidence"),
        ({"ci_method": "bootstrap"}, "ci_method"),
    ],
)
def test_bad_arguments_name_the_field(blob_task: bstune.Task, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        bstune.measure_noise_scale(blob_task, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert "measure_noise_scale" in str(info.value)
