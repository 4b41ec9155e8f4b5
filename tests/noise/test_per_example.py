"""PerExampleNorms against ground truth: one backward pass per example, and the exact noise scale."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import bstune
from bstune.errors import ConfigError, EstimationError
from bstune.noise import PerExampleNorms, exact_noise_scale, per_example_estimate
from bstune.noise._layer_rules import Rule, conv_uses, embedding_uses, layer_norm_uses, linear_uses, materialize

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
B = 6


class SeqModel(nn.Module):
    """Embedding -> Linear on (B, T, d) -> mean over T -> Linear."""

    def __init__(self, vocab: int = 7, d: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(tokens))).mean(1))


class TiedLM(nn.Module):
    """Embedding weight reused as the output projection (a Linear sharing the Parameter)."""

    def __init__(self, vocab: int = 7, d: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.emb(tokens))).flatten(0, 1)  # (B·T, vocab): logits per position


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.conv1d = nn.Conv1d(3, 2, 2, stride=2, padding_mode="reflect", padding=1)
        self.fc = nn.Linear(2 * 9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(2)  # (B, 3, 16)
        return self.fc(self.conv1d(h).flatten(1))


class Scale(nn.Module):
    """A layer type with no per-example rule."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Twice(nn.Module):
    """One Linear applied twice in one forward pass (weights shared across depth)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.block(torch.tanh(self.block(self.inp(x))))))


def _seq_targets(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.roll(-1, dims=1).flatten()


def _tied_loss(out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # (B·T) rows: the mean over an example's positions, then over examples
    per_pos = nn.functional.cross_entropy(out, _seq_targets(tokens), reduction="none")
    return per_pos.view(tokens.shape[0], -1).mean(1).mean()


def _cases(dtype: torch.dtype) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor, Loss]]:
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (B, 5))
    tokens[0, :3] = 2  # a token repeated within one example
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    return {
        "mlp": (
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
            torch.randn(B, 4),
            torch.randint(0, 3, (B,)),
            ce,
        ),
        "sequence": (SeqModel(), tokens, torch.randint(0, 3, (B,)), ce),
        "conv": (ConvNet(), torch.randn(B, 2, 4, 4), torch.randn(B, 2), mse),
        "layernorm": (
            nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 1)),
            torch.randn(B, 4),
            torch.randn(B, 1),
            mse,
        ),
        "tied": (TiedLM(), tokens, tokens, _tied_loss),
        "shared_depth": (Twice(), torch.randn(B, 3), torch.randn(B, 1), mse),
    }


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _truth(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> torch.Tensor:
    """|c_i|² from one backward pass per example: c_i = ∇(loss of example i)/B for a mean-reduced loss."""
    params = dict(model.named_parameters())
    per_example = []
    for i in range(len(x)):
        model.zero_grad()
        (loss_fn(model(x[i : i + 1]), y[i : i + 1]) / len(x)).backward()
        per_example.append({n: params[n].grad.clone() for n in names})  # type: ignore[union-attr]
    model.zero_grad()
    loss_fn(model(x), y).backward()
    for n in names:  # the decomposition the norms are of: Σ_i c_i = p.grad
        torch.testing.assert_close(sum(c[n] for c in per_example), params[n].grad)
    model.zero_grad()
    return torch.stack([sum(c[n].double().pow(2).sum() for n in names) for c in per_example])  # type: ignore[misc]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", ["mlp", "sequence", "conv", "layernorm", "tied", "shared_depth"])
def test_norms_match_one_backward_per_example(case: str, dtype: torch.dtype) -> None:
    model, x, y, loss_fn = _cases(dtype)[case]
    model, x, y = model.to(dtype), _cast(x, dtype), _cast(y, dtype)
    norms = PerExampleNorms(model)
    assert norms.uncovered() == []
    names = norms.covered()
    assert len(names) == len(list(model.parameters()))
    norms.enabled = False
    truth = _truth(model, loss_fn, x, y, names)
    norms.enabled = True
    loss_fn(model(x), y).backward()
    got = norms.sq_norms()
    assert got.shape == (B,) and got.dtype == torch.float64
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, truth, rtol=rtol, atol=0.0)
    grad_sq = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    assert norms.batch_grad_sq == pytest.approx(grad_sq, rel=rtol)
    assert norms.uncovered() == []  # the check of Σ_i c_i against the gradient raised no false alarm


@pytest.mark.parametrize(
    ("module", "x", "rule"),
    [
        (nn.Linear(3, 2), torch.randn(B, 4, 3), linear_uses),
        (nn.Embedding(5, 3, padding_idx=0), torch.tensor([[1, 1, 0, 4]] * B), embedding_uses),
        (nn.Conv2d(2, 3, 2, stride=2, padding="valid"), torch.randn(B, 2, 4, 5), conv_uses),
        (nn.Conv1d(2, 3, 3, padding="same", padding_mode="circular"), torch.randn(B, 2, 7), conv_uses),
        (nn.LayerNorm([2, 3]), torch.randn(B, 4, 2, 3), layer_norm_uses),
    ],
    ids=["linear", "embedding", "conv2d", "conv1d", "layernorm"],
)
def test_contributions_sum_to_the_batch_gradient(module: nn.Module, x: torch.Tensor, rule: Rule) -> None:
    """Σ_i c_i == p.grad for each rule, with c_i materialized from the factors the norms use."""
    module.double()
    x = x if not x.is_floating_point() else x.double()
    out = module(x)
    weight = torch.randn_like(out)
    seen: list[torch.Tensor] = []
    out.register_hook(seen.append)
    (out * weight).sum().backward()
    for name, use in rule(module, x, seen[0], 0).items():
        c = materialize(use, 0, B)  # (B, numel)
        grad = getattr(module, name).grad
        torch.testing.assert_close(c.sum(0), grad.flatten(), rtol=1e-12, atol=1e-12)


def test_gradients_and_outputs_are_bit_identical_with_hooks() -> None:
    for model, x, y, loss_fn in _cases(torch.float32).values():
        plain = copy.deepcopy(model)
        norms = PerExampleNorms(model)
        norms.enabled = True
        out, out_plain = model(x), plain(x)
        loss_fn(out, y).backward()
        loss_fn(out_plain, y).backward()
        norms.sq_norms()
        assert torch.equal(out, out_plain)
        for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
            assert p.grad is not None and torch.equal(p.grad, q.grad), name


def test_disabled_hooks_keep_nothing_and_asking_says_so() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    norms = PerExampleNorms(model)
    out = model(torch.randn(B, 4))
    assert not out._backward_hooks  # no tensor hook, no saved activation
    out.sum().backward()
    assert not norms._step.uses and not norms._step.handles and not norms._step.sq
    with pytest.raises(EstimationError, match="not enabled"):
        norms.sq_norms()


def test_enabled_without_backward_is_an_error_and_the_step_resets() -> None:
    model = nn.Linear(3, 1)
    norms = PerExampleNorms(model)
    norms.enabled = True
    model(torch.randn(B, 3))
    with pytest.raises(EstimationError, match="no backward pass"):
        norms.sq_norms()
    model(torch.randn(B, 3)).sum().backward()
    assert norms.sq_norms().shape == (B,)


def test_a_nan_loss_leaves_every_layer_covered() -> None:
    """A newcomer's loss went NaN: the check of Σ_i c_i against the gradient compared NaN with NaN, called every
    layer's gradient 'outside the hooked layers' and dropped them all, so the tracker raised 'no covered parameter
    received a gradient' from inside the loop instead of the run ending diverged."""
    model, x, y, loss_fn = _cases(torch.float32)["mlp"]
    norms = PerExampleNorms(model)
    norms.enabled = True
    (loss_fn(model(x), y) * math.nan).backward()
    assert torch.isnan(norms.sq_norms()).all()
    assert norms.uncovered() == []
    model.zero_grad()
    loss_fn(model(x), y).backward()  # the next step measures as before
    assert torch.isfinite(norms.sq_norms()).all() and norms.uncovered() == []


def test_a_layer_without_a_rule_is_uncovered_and_left_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Linear(4, 1)).double()
    x, y = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 1, dtype=torch.float64)
    norms = PerExampleNorms(model)
    assert norms.uncovered() == ["1.scale"]
    assert "Scale" in norms.uncovered_reasons()["1.scale"]
    assert norms.covered() == ["0.weight", "0.bias", "2.weight", "2.bias"]
    truth = _truth(model, nn.MSELoss(), x, y, norms.covered())
    norms.enabled = True
    nn.MSELoss()(model(x), y).backward()
    torch.testing.assert_close(norms.sq_norms(), truth, rtol=1e-9, atol=0.0)


def test_grouped_conv_and_frequency_scaled_embedding_are_uncovered() -> None:
    model = nn.ModuleDict({"conv": nn.Conv2d(4, 4, 3, groups=2), "emb": nn.Embedding(5, 2, scale_grad_by_freq=True)})
    norms = PerExampleNorms(model)
    assert norms.uncovered() == ["conv.weight", "conv.bias", "emb.weight"]
    assert "groups=2" in norms.uncovered_reasons()["conv.weight"]


def test_a_functional_use_of_a_parameter_is_detected_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(3, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(torch.tanh(self.inp(x)), self.head.weight, self.head.bias)

    model = Functional()
    norms = PerExampleNorms(model)
    norms.enabled = True
    model(torch.randn(B, 3)).sum().backward()
    norms.sq_norms()
    assert norms.uncovered() == ["head.weight", "head.bias"]
    assert "head.weight" in caplog.text
    assert norms.batch_grad_sq == pytest.approx(float(sum(p.grad.pow(2).sum() for p in model.inp.parameters())))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_a_tied_weight_also_used_functionally_is_detected(dtype: torch.dtype, caplog: pytest.LogCaptureFixture) -> None:
    """The embedding's own hook sees one use; the output projection h @ emb.weight.T is invisible to it."""

    class FunctionalTie(TiedLM):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return (self.norm(self.emb(tokens)) @ self.emb.weight.T).flatten(0, 1)

    torch.manual_seed(0)
    model = FunctionalTie().to(dtype)
    del model.out  # the projection is the functional one
    tokens = torch.randint(0, 7, (B, 5))
    norms = PerExampleNorms(model)
    assert norms.covered() == ["emb.weight", "norm.weight", "norm.bias"]
    norms.enabled = True
    _tied_loss(model(tokens), tokens).backward()
    norms.sq_norms()
    assert norms.uncovered() == ["emb.weight"]
    assert "functional use" in norms.uncovered_reasons()["emb.weight"] and "emb.weight" in caplog.text
    expected = sum(float(p.grad.double().pow(2).sum()) for p in model.norm.parameters())
    assert norms.batch_grad_sq == pytest.approx(expected)


def test_gram_explicit_and_chunked_forms_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both forms of |Σ_t u_t ⊗ v_t|², dense and one-hot, against the materialized c_i."""
    from bstune.noise import _layer_rules as pe

    torch.manual_seed(0)
    idx = torch.randint(0, 4, (5, 6))
    idx[0] = 3  # every position of example 0 the same token
    uses = [
        pe.Outer(torch.randn(5, 2, 6, dtype=torch.float64), torch.randn(5, 2, 7, dtype=torch.float64), 6),  # Gram
        pe.Outer(torch.randn(5, 9, 2, dtype=torch.float64), torch.randn(5, 9, 3, dtype=torch.float64), 2),  # explicit
        pe.Outer(torch.randn(5, 1, 2, dtype=torch.float64), torch.randn(5, 1, 3, dtype=torch.float64), 2),  # T = 1
        pe.Outer(idx, torch.randn(5, 6, 3, dtype=torch.float64), 4),  # embedding
    ]
    for chunk in (1 << 24, 7):
        monkeypatch.setattr(pe, "_CHUNK", chunk)
        for use in uses:
            direct = pe.materialize(use, 0, 5).pow(2).sum(1)
            torch.testing.assert_close(pe.self_sq(use), direct, rtol=1e-12, atol=0.0)
            torch.testing.assert_close(pe.shared_sq([use, use], use.m * use.v.shape[2]), 4 * direct)


def test_batchnorm_in_train_mode_is_a_config_error_naming_it() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ConfigError, match=r"1 \(BatchNorm1d\).*batch statistics"):
        PerExampleNorms(model)
    model.eval()
    norms = PerExampleNorms(model)  # eval mode: running statistics, examples independent
    assert norms.uncovered() == ["1.weight", "1.bias"]
    model.train()  # switched after the hooks went on
    norms.enabled = True
    model(torch.randn(B, 3)).sum().backward()
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        norms.sq_norms()


def test_two_forward_passes_into_one_backward_are_detected() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    norms = PerExampleNorms(model)
    norms.enabled = True
    (model(torch.randn(B, 3)) + model(torch.randn(B, 3))).sum().backward()
    with pytest.raises(EstimationError, match="2 forward passes"):
        norms.sq_norms()
    # A forward that does not reach the loss (a metric computed with grad on) is harmless.
    x = torch.randn(B, 3)
    model(torch.randn(B, 3))
    model(x).sum().backward()
    assert norms.sq_norms().shape == (B,)


def test_two_backward_passes_are_detected() -> None:
    model = nn.Linear(3, 1)
    norms = PerExampleNorms(model)
    norms.enabled = True
    model(torch.randn(B, 3)).sum().backward()
    model(torch.randn(B, 3)).sum().backward()  # gradient accumulation without reading in between
    with pytest.raises(EstimationError, match="2 backward passes"):
        norms.sq_norms()


def test_batch_dim_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    x, y = torch.randn(5, B, 3, dtype=torch.float64), torch.randn(B, dtype=torch.float64)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # examples along dim 1
        return (out.mean((0, 2)) - target).pow(2).mean()

    expected = []
    for i in range(B):
        model.zero_grad()
        (loss_fn(model(x[:, i : i + 1]), y[i : i + 1]) / B).backward()
        expected.append(sum(p.grad.pow(2).sum() for p in model.parameters()))
    model.zero_grad()
    norms = PerExampleNorms(model, batch_dim=1)
    norms.enabled = True
    loss_fn(model(x), y).backward()
    torch.testing.assert_close(norms.sq_norms(), torch.stack(expected), rtol=1e-9, atol=0.0)  # type: ignore[arg-type]


def test_remove_takes_every_hook_off() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    norms = PerExampleNorms(model)
    norms.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- the noise scale ----------------------------------------------------------------------


def _regression_task(n: int = 120, d: int = 4) -> bstune.Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, d, dtype=torch.float64)[:, None] + 0.7 * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    return bstune.Task(model=lambda: nn.Linear(d, 1).double(), train_data=(x, y), val_data=(x, y), loss=nn.MSELoss())


def _step_estimate(
    task: bstune.Task, model: nn.Module, norms: PerExampleNorms, idx: torch.Tensor
) -> tuple[float, float]:
    x, y = task.train_dataset[idx]
    model.zero_grad()
    norms.enabled = True
    task.loss(model(x), y).backward()
    sq = norms.sq_norms()
    assert norms.batch_grad_sq is not None
    grad_sq = sum(float(p.grad.pow(2).sum()) for p in model.parameters())  # |p.grad|² = |G_B|²
    assert norms.batch_grad_sq == pytest.approx(grad_sq, rel=1e-12)
    g, t = per_example_estimate(sq, grad_sq, population=task.n_train)
    return float(g), float(t)


def test_the_full_batch_gives_the_exact_noise_scale() -> None:
    """With B = D the finite-population estimator is the population value itself."""
    task = _regression_task()
    model = task.make_model(seed=0)
    exact = exact_noise_scale(task, model)
    g, t = _step_estimate(task, model, PerExampleNorms(model), torch.arange(task.n_train))
    assert g == pytest.approx(exact.grad_sq, rel=1e-9)
    assert t == pytest.approx(exact.trace_sigma, rel=1e-9)


def test_random_batches_estimate_the_exact_noise_scale_without_bias() -> None:
    task = _regression_task()
    model = task.make_model(seed=0)
    exact = exact_noise_scale(task, model)
    norms = PerExampleNorms(model)
    gen = torch.Generator().manual_seed(1)
    pairs = torch.tensor(
        [_step_estimate(task, model, norms, torch.randperm(task.n_train, generator=gen)[:8]) for _ in range(400)],
        dtype=torch.float64,
    )
    mean, err = pairs.mean(0), pairs.std(0) / math.sqrt(len(pairs))
    assert abs(float(mean[0]) - exact.grad_sq) < 4 * float(err[0])
    assert abs(float(mean[1]) - exact.trace_sigma) < 4 * float(err[1])
    b_simple = float(mean[1] / mean[0])
    assert b_simple == pytest.approx(exact.b_simple, rel=0.1)


def test_bf16_autocast_and_activation_checkpointing() -> None:
    """Mixed dtypes under autocast, and a layer recomputed in the backward pass (a second forward call)."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.norm, self.head = nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = checkpoint(lambda h: torch.tanh(self.norm(self.inp(h))), x, use_reentrant=False)
            return self.head(hidden)  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model, x, y = Checkpointed(), torch.randn(B, 4), torch.randint(0, 3, (B,))
    loss_fn = nn.CrossEntropyLoss()
    norms = PerExampleNorms(model)
    truth = _truth(model, loss_fn, x, y, norms.covered())
    norms.enabled = True
    loss_fn(model(x), y).backward()
    torch.testing.assert_close(norms.sq_norms(), truth, rtol=1e-4, atol=0.0)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(model(x), y)
    loss.backward()
    torch.testing.assert_close(norms.sq_norms(), truth, rtol=3e-2, atol=0.0)
    assert norms.uncovered() == []


def test_the_check_runs_on_the_first_steps_only() -> None:
    with pytest.raises(ConfigError, match="check_steps"):
        PerExampleNorms(nn.Linear(2, 1), check_steps=-1)
    model = nn.Linear(3, 1)
    norms = PerExampleNorms(model, check_steps=2)
    norms.enabled = True
    for checked in (True, True, False):
        model(torch.randn(B, 3)).sum().backward()
        assert bool(norms._step.probe_hooks) is checked
        norms.sq_norms()


def test_detached_hooks_cost_nothing_and_attach_brings_them_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(B, 4), torch.randint(0, 3, (B,))
    norms = PerExampleNorms(model, check_steps=1)
    truth = _truth(model, loss_fn, x, y, norms.covered())
    norms.detach()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    for _ in range(3):  # the first measured step runs the check (general path), the later ones the Linear fast path
        model.zero_grad()
        norms.attach()
        norms.attach()  # idempotent
        norms.enabled = True
        loss_fn(model(x), y).backward()
        norms.enabled = False
        torch.testing.assert_close(norms.sq_norms(), truth, rtol=1e-4, atol=0.0)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert norms.batch_grad_sq == pytest.approx(sum(float(g.pow(2).sum()) for g in grads), rel=1e-5)
        norms.detach()
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    norms.remove()
    norms.attach()  # after remove(): nothing to attach
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_without_grad_hooks_the_norms_stay_and_the_batch_norm_is_left_to_the_caller() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(B, 4), torch.randint(0, 3, (B,))
    norms = PerExampleNorms(model, check_steps=1, grad_hooks=False)
    truth = _truth(model, loss_fn, x, y, norms.covered())
    norms.enabled = True
    for checked in (True, False):  # the check's step still hooks the gradients (it compares with them)
        model.zero_grad()
        loss_fn(model(x), y).backward()
        torch.testing.assert_close(norms.sq_norms(), truth, rtol=1e-4, atol=0.0)
        assert (norms.batch_grad_sq is not None) is checked
    with pytest.raises(EstimationError, match="no backward pass"):
        norms.sq_norms()


class PositionalLM(nn.Module):
    """Token plus positional embeddings, the latter looked up at ``arange(T)``: one row set for the whole batch."""

    def __init__(self, vocab: int = 7, d: int = 4, length: int = 5) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        out: torch.Tensor = self.out(h)
        return out


class ExpandedPositionalLM(PositionalLM):
    """The fix the error names: the positions given the batch dimension, the same values broadcast the same way."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        h = self.tok(tokens) + self.pos(torch.arange(t).expand(b, t))
        out: torch.Tensor = self.out(h)
        return out


def test_the_fix_the_shared_parameter_error_names_gives_exact_per_example_norms() -> None:
    torch.manual_seed(0)
    model, tokens = ExpandedPositionalLM(), torch.randint(0, 7, (8, 5))
    plain = PositionalLM()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(tokens), plain(tokens))  # the same model

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch).reshape(-1, 7), batch.reshape(-1), reduction="sum")

    truth = []
    for i in range(8):
        model.zero_grad()
        loss_of(tokens[i : i + 1]).backward()
        truth.append(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    norms = PerExampleNorms(model)
    norms.enabled = True
    model.zero_grad()
    loss_of(tokens).backward()
    torch.testing.assert_close(
        norms.sq_norms().double(), torch.tensor(truth, dtype=torch.float64), rtol=1e-4, atol=1e-6
    )


def test_a_parameter_shared_across_the_batch_is_named_and_the_trainer_falls_back_to_split_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The positional embedding's hook sees T rows, not B examples: it has no per-example gradient. The error
    names it and says why; training goes on measuring the noise scale from split batches."""
    torch.manual_seed(0)
    model = PositionalLM()
    tokens = torch.randint(0, 7, (8, 5))
    norms = PerExampleNorms(model)
    norms.enabled = True
    nn.functional.cross_entropy(model(tokens).reshape(-1, 7), tokens.reshape(-1)).backward()
    with pytest.raises(
        EstimationError,
        match=r"pos\.weight saw a batch of 5 where other layers saw 8: .*shared.*expand\(B, T\).*baseline",
    ):
        norms.sq_norms()
    x = torch.randint(0, 7, (64, 5))
    task = bstune.Task(
        model=PositionalLM,
        train_data=(x, x[:, 0]),
        val_data=(x[:16], x[:16, 0]),
        loss=lambda out, y: nn.functional.cross_entropy(out[:, -1], y),
    )
    with caplog.at_level("WARNING"):
        run = bstune.train(task, bstune.TrainConfig(batch_size=8, lr=0.1, max_samples=400, track_noise=True))
    assert "per-example gradient norms do not fit this model (pos.weight saw a batch of" in caplog.text
    assert run.status.value == "completed" and run.noise_trajectory  # measured all the same
