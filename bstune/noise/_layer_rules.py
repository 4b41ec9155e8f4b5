"""Per-example gradient contributions of one layer, and their squared norms.

For a layer y_t = W a_t applied at positions t of example i, the batch loss gradient is
W.grad = Σ_i c_i with c_i = Σ_t g_it a_itᵀ and g = ∂loss/∂y (Goodfellow 2015), and

    |c_i|² = Σ_{t,s} (g_it·g_is)(a_it·a_is)       (Gram form: B·T²·(d_in + d_out) work)
           = |Σ_t g_it ⊗ a_it|²                   (explicit form: B·T·d_in·d_out work)

whichever is cheaper (:func:`self_sq`). An embedding is the same with one-hot a (rows of
one token summed first, so a token repeated in an example counts once, with its summed
gradient); a convolution is a linear layer on the unfolded input patches; LayerNorm's
c_i = Σ_t g_it ⊙ x̂_it. A rule (:func:`rule_for`) turns a module's kept input and its
output's gradient into one :data:`Use` per parameter: the factors of c_i (:class:`Outer`)
or c_i itself (:class:`Summed`). :func:`shared_sq` gives the norm of a parameter's uses
summed first (tied weights), and :class:`DirectionCheck` checks Σ_i c_i against autograd's
gradient along a random direction. The hooks that collect the uses are
:class:`~bstune.noise.PerExampleNorms`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bstune.errors import EstimationError

__all__ = [
    "DirectionCheck",
    "Outer",
    "Rule",
    "Summed",
    "Use",
    "batch_of",
    "conv_uses",
    "embedding_uses",
    "in_compute_dtype",
    "layer_norm_uses",
    "linear_uses",
    "materialize",
    "rule_for",
    "self_sq",
    "shared_sq",
]

_CHUNK = 1 << 24  # elements in the largest temporary tensor (64 MiB in fp32)


@dataclass
class Outer:
    """c_i = Σ_t u_it ⊗ v_it over a parameter viewed as (m, n).

    ``u`` is dense (B, T, m), or for an embedding the row indices (B, T) of a one-hot u.
    """

    u: Tensor
    v: Tensor  # (B, T, n)
    m: int

    @property
    def index(self) -> bool:
        return not self.u.is_floating_point()


@dataclass
class Summed:
    """c_i given explicitly: (B, numel), the sum over t of ``products`` (B, T, numel)."""

    c: Tensor
    products: Tensor  # kept for the check's rounding bound, which needs Σ_t |products_it|


def _summed(products: Tensor) -> Summed:
    return Summed(products.sum(1), products)


Use = Outer | Summed
Rule = Callable[[nn.Module, Tensor, Tensor, int], dict[str, Use]]


def in_compute_dtype(*tensors: Tensor) -> list[Tensor]:
    """The tensors in one dtype of at least float32 (activations under AMP are fp16/bf16)."""
    if all(t.dtype == torch.float32 or not t.is_floating_point() for t in tensors):
        return list(tensors)
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) if t.is_floating_point() else t for t in tensors]


def _rows(x: Tensor, batch_dim: int, feature_dims: int = 1) -> Tensor:
    """(B, T, features): the batch dim first, every other non-feature dim flattened into T."""
    x = x.movedim(batch_dim, 0)
    features = math.prod(x.shape[x.dim() - feature_dims :]) if feature_dims else 1
    return x.reshape(x.shape[0], -1, features) if feature_dims else x.reshape(x.shape[0], -1)


def linear_uses(module: nn.Module, a: Tensor, g: Tensor, batch_dim: int) -> dict[str, Use]:
    a, g = in_compute_dtype(_rows(a, batch_dim), _rows(g, batch_dim))  # (B, T, d_in), (B, T, d_out)
    out: dict[str, Use] = {"weight": Outer(g, a, g.shape[2])}
    if module.bias is not None:
        out["bias"] = _summed(g)
    return out


def embedding_uses(module: nn.Module, idx: Tensor, g: Tensor, batch_dim: int) -> dict[str, Use]:
    assert isinstance(module, nn.Embedding)
    idx = _rows(idx, batch_dim, feature_dims=0)  # (B, T)
    (g,) = in_compute_dtype(_rows(g, batch_dim))  # (B, T, d)
    if module.padding_idx is not None:  # the padding row gets no gradient
        g = g * (idx != module.padding_idx).unsqueeze(2).to(g.dtype)
    return {"weight": Outer(idx.long(), g, module.num_embeddings)}


def conv_uses(module: nn.Module, x: Tensor, g: Tensor, batch_dim: int) -> dict[str, Use]:
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    if x.dim() != (3 if isinstance(module, nn.Conv1d) else 4):
        raise EstimationError(f"expected a batched input, got shape {tuple(x.shape)}")
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # what the conv itself pads
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):  # a Conv2d of height 1
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation = (1, kernel[0]), (1, stride[0]), (1, dilation[0])
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride).transpose(1, 2)  # (B, L, C_in·kh·kw)
    cols, g = in_compute_dtype(cols, g.flatten(2).transpose(1, 2))  # (B, L, C_out)
    out: dict[str, Use] = {"weight": Outer(g, cols, g.shape[2])}
    if module.bias is not None:
        out["bias"] = _summed(g)
    return out


def layer_norm_uses(module: nn.Module, x: Tensor, g: Tensor, batch_dim: int) -> dict[str, Use]:
    assert isinstance(module, nn.LayerNorm)
    k = len(module.normalized_shape)
    x, g = in_compute_dtype(x, g)
    dims = tuple(range(x.dim() - k, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    x_hat = (x - mean) * torch.rsqrt(var + module.eps)
    g_rows = _rows(g, batch_dim, k)  # (B, T, numel)
    out: dict[str, Use] = {}
    if module.weight is not None:
        out["weight"] = _summed(g_rows * _rows(x_hat, batch_dim, k))
    if module.bias is not None:
        out["bias"] = _summed(g_rows)
    return out


def rule_for(module: nn.Module) -> tuple[Rule | None, str]:
    """The per-example rule for a module, or None and the reason it has none."""
    kind = type(module)
    if kind is nn.Linear:
        return linear_uses, ""
    if kind is nn.Embedding:
        assert isinstance(module, nn.Embedding)
        if module.scale_grad_by_freq:
            return None, "Embedding with scale_grad_by_freq (the scale couples the examples)"
        return embedding_uses, ""
    if kind in (nn.Conv1d, nn.Conv2d):
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if module.groups != 1:
            return None, f"{kind.__name__} with groups={module.groups}"
        return conv_uses, ""
    if kind is nn.LayerNorm:
        return layer_norm_uses, ""
    return None, f"module type {kind.__name__} has no per-example rule"


def self_sq(use: Use) -> Tensor:
    """|c_i|² for one use of a parameter: (B,) float64."""
    if isinstance(use, Summed):
        return use.c.pow(2).sum(1).double()
    u, v = use.u, use.v
    b, t, n = v.shape
    if use.index:  # sum the rows of each (example, token) first: repeated tokens count once
        key = (torch.arange(b, device=u.device).unsqueeze(1) * use.m + u).flatten()
        uniq, inverse = torch.unique(key, return_inverse=True)
        rows = v.new_zeros(len(uniq), n).index_add_(0, inverse, v.reshape(-1, n))
        return v.new_zeros(b, dtype=torch.float64).index_add_(0, uniq // use.m, rows.pow(2).sum(1).double())
    m = use.m
    if t == 1:
        return (u.pow(2).sum((1, 2)) * v.pow(2).sum((1, 2))).double()
    out = []
    if t * (m + n) <= m * n:  # Gram form: Σ_{t,s} (u_t·u_s)(v_t·v_s)
        step = max(1, _CHUNK // (t * t))
        for i in range(0, b, step):
            uu = torch.bmm(u[i : i + step], u[i : i + step].transpose(1, 2))
            vv = torch.bmm(v[i : i + step], v[i : i + step].transpose(1, 2))
            out.append((uu * vv).sum((1, 2)).double())
    else:  # explicit per-example gradients, (chunk, m, n)
        step = max(1, _CHUNK // (m * n))
        for i in range(0, b, step):
            out.append(torch.bmm(u[i : i + step].transpose(1, 2), v[i : i + step]).pow(2).sum((1, 2)).double())
    return torch.cat(out)


def materialize(use: Use, start: int, stop: int) -> Tensor:
    """c_i for examples start..stop as (stop − start, numel)."""
    if isinstance(use, Summed):
        return use.c[start:stop]
    u, v = use.u[start:stop], use.v[start:stop]
    b, _, n = v.shape
    if use.index:
        key = (torch.arange(b, device=u.device).unsqueeze(1) * use.m + u).flatten()
        return v.new_zeros(b * use.m, n).index_add_(0, key, v.reshape(-1, n)).reshape(b, -1)
    return torch.bmm(u.transpose(1, 2), v).reshape(b, -1)


def shared_sq(uses: list[Use], numel: int) -> Tensor:
    """|Σ_k c_i^(k)|² for a parameter with several uses: (B,) float64, in chunks of examples."""
    batch = uses[0].c.shape[0] if isinstance(uses[0], Summed) else uses[0].v.shape[0]
    step = max(1, _CHUNK // numel)
    out = []
    for i in range(0, batch, step):
        stop = min(batch, i + step)
        total = materialize(uses[0], i, stop).clone()
        for use in uses[1:]:
            total += materialize(use, i, stop)
        out.append(total.pow(2).sum(1).double())
    return torch.cat(out)


def batch_of(use: Use) -> int:
    return use.c.shape[0] if isinstance(use, Summed) else use.v.shape[0]


class DirectionCheck:
    """A fixed random direction R of one parameter, to check Σ_i c_i against the gradient.

    ⟨Σ_i c_i, R⟩ from the hooks must equal ⟨grad, R⟩ from autograd up to rounding; it
    does not when the parameter also gets gradient outside the hooked layers (a
    functional use such as ``h @ emb.weight.T``). With R = u ⊗ v over the parameter
    viewed as (m, n) the check costs two matrix-vector products per use, and a
    discrepancy D ≠ 0 goes unnoticed only if uᵀDv = 0, which has probability zero.
    """

    def __init__(self, use: Use, numel: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.outer = isinstance(use, Outer)
        m = use.m if isinstance(use, Outer) else numel
        self.u = torch.randn(m, generator=gen, dtype=torch.float64)
        self.v = torch.randn(numel // m, generator=gen, dtype=torch.float64)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _vectors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """u and v on ``like``'s device and in its dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = (self.u.to(like), self.v.to(like))
        return self._cast[key]

    def on_use(self, use: Use) -> tuple[Tensor, Tensor, int] | None:
        """(⟨Σ_i c_i, R⟩, Σ of the absolute values of its terms, number of terms), or None
        for a use of another layout than the first (not checked)."""
        if isinstance(use, Summed):
            if self.outer:
                return None
            r, _ = self._vectors(use.c)
            abs_sum = use.products.abs().sum((0, 1)) @ r.abs()
            return (use.c @ r).double().sum(), abs_sum.double(), use.products.shape[:2].numel() + len(r)
        if not self.outer:
            return None
        u, v = self._vectors(use.v)
        pv, av = use.v @ v, use.v.abs() @ v.abs()  # (B, T)
        if use.index:
            pu, au = u[use.u], u.abs()[use.u]
        else:
            pu, au = use.u @ u, use.u.abs() @ u.abs()
        return (pu * pv).double().sum(), (au * av).double().sum(), pu.numel() + len(u) + len(v)

    def on_grad(self, grad: Tensor) -> Tensor:
        if grad.is_sparse and self.outer and grad.sparse_dim() == 1:  # an embedding's rows: uᵀ g v row by row
            g = grad.coalesce()
            rows, values = g.indices()[0], g.values()
            values = values if values.dtype in (torch.float32, torch.float64) else values.float()
            u, v = self._vectors(values)
            return (u[rows] @ (values.reshape(len(rows), -1) @ v)).double()
        g = grad.to_dense() if grad.is_sparse else grad
        g = g if g.dtype in (torch.float32, torch.float64) else g.float()
        u, v = self._vectors(g)
        if not self.outer:
            return (g.flatten() @ u).double()
        return (u @ g.reshape(len(u), -1) @ v).double()
