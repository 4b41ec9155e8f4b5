"""Per-example squared gradient norms from module hooks, during the user's own backward pass.

Goodfellow 2015, "Efficient Per-Example Gradient Computations" (the trick Opacus and
BackPACK use). For a layer y_t = W a_t applied at positions t of example i, the batch
loss gradient is W.grad = Σ_i c_i with c_i = Σ_t g_it a_itᵀ and g = ∂loss/∂y. A forward
hook keeps the layer's input a (detached), a hook on its output receives g while the
user's ``loss.backward()`` runs, and

    |c_i|² = Σ_{t,s} (g_it·g_is)(a_it·a_is)       (Gram form: B·T²·(d_in + d_out) work)
           = |Σ_t g_it ⊗ a_it|²                   (explicit form: B·T·d_in·d_out work)

whichever is cheaper. An embedding is the same with one-hot a (rows of one token
summed first, so a token repeated in an example counts once, with its summed
gradient); a convolution is a linear layer on the unfolded input patches; LayerNorm's
c_i = Σ_t g_it ⊙ x̂_it. A parameter used by several modules (tied weights) or by
one module called several times gets c_i = Σ_k c_i^(k) summed over its uses *before*
the norm.

Units: sq_norms are in the units of ``p.grad``. c_i is example i's contribution to
the batch gradient, Σ_i c_i = p.grad. With AMP loss scaling by s they carry a factor
s²; B_simple = tr(Σ)/|G|² does not depend on a common factor, but whoever mixes them
with unscaled quantities divides by s².

From norms to the noise scale: write g_i := B·c_i and G_B := Σ_i c_i = p.grad. For a
mean-reduced loss g_i is exactly example i's gradient and G_B the batch-mean gradient;
for a sum-reduced loss both are B times too large, a common factor that B_simple
ignores. The per-example (b_small = 1) two-batch estimator then gives unbiased |G|²
and tr(Σ) from mean_i |g_i|² = B²·mean(sq_norms) and |G_B|² (see
:func:`per_example_estimate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bstune.errors import ConfigError, EstimationError
from bstune.noise._two_batch import two_batch_estimate

__all__ = ["PerExampleNorms", "per_example_estimate"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 24  # elements in the largest temporary tensor (64 MiB in fp32)
_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


@dataclass
class _Outer:
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
class _Summed:
    """c_i given explicitly: (B, numel), the sum over t of ``products`` (B, T, numel)."""

    c: Tensor
    products: Tensor  # kept for the check's rounding bound, which needs Σ_t |products_it|


def _summed(products: Tensor) -> _Summed:
    return _Summed(products.sum(1), products)


_Use = _Outer | _Summed
_Rule = Callable[[nn.Module, Tensor, Tensor, int], dict[str, _Use]]


def _compute(*tensors: Tensor) -> list[Tensor]:
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


def _linear(module: nn.Module, a: Tensor, g: Tensor, batch_dim: int) -> dict[str, _Use]:
    a, g = _compute(_rows(a, batch_dim), _rows(g, batch_dim))  # (B, T, d_in), (B, T, d_out)
    out: dict[str, _Use] = {"weight": _Outer(g, a, g.shape[2])}
    if module.bias is not None:
        out["bias"] = _summed(g)
    return out


def _embedding(module: nn.Module, idx: Tensor, g: Tensor, batch_dim: int) -> dict[str, _Use]:
    assert isinstance(module, nn.Embedding)
    idx = _rows(idx, batch_dim, feature_dims=0)  # (B, T)
    (g,) = _compute(_rows(g, batch_dim))  # (B, T, d)
    if module.padding_idx is not None:  # the padding row gets no gradient
        g = g * (idx != module.padding_idx).unsqueeze(2).to(g.dtype)
    return {"weight": _Outer(idx.long(), g, module.num_embeddings)}


def _conv(module: nn.Module, x: Tensor, g: Tensor, batch_dim: int) -> dict[str, _Use]:
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
    cols, g = _compute(cols, g.flatten(2).transpose(1, 2))  # (B, L, C_out)
    out: dict[str, _Use] = {"weight": _Outer(g, cols, g.shape[2])}
    if module.bias is not None:
        out["bias"] = _summed(g)
    return out


def _layer_norm(module: nn.Module, x: Tensor, g: Tensor, batch_dim: int) -> dict[str, _Use]:
    assert isinstance(module, nn.LayerNorm)
    k = len(module.normalized_shape)
    x, g = _compute(x, g)
    dims = tuple(range(x.dim() - k, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    x_hat = (x - mean) * torch.rsqrt(var + module.eps)
    g_rows = _rows(g, batch_dim, k)  # (B, T, numel)
    out: dict[str, _Use] = {}
    if module.weight is not None:
        out["weight"] = _summed(g_rows * _rows(x_hat, batch_dim, k))
    if module.bias is not None:
        out["bias"] = _summed(g_rows)
    return out


def _rule(module: nn.Module) -> tuple[_Rule | None, str]:
    """The per-example rule for a module, or None and the reason it has none."""
    kind = type(module)
    if kind is nn.Linear:
        return _linear, ""
    if kind is nn.Embedding:
        assert isinstance(module, nn.Embedding)
        if module.scale_grad_by_freq:
            return None, "Embedding with scale_grad_by_freq (the scale couples the examples)"
        return _embedding, ""
    if kind in (nn.Conv1d, nn.Conv2d):
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        if module.groups != 1:
            return None, f"{kind.__name__} with groups={module.groups}"
        return _conv, ""
    if kind is nn.LayerNorm:
        return _layer_norm, ""
    return None, f"module type {kind.__name__} has no per-example rule"


def _self_sq(use: _Use) -> Tensor:
    """|c_i|² for one use of a parameter: (B,) float64."""
    if isinstance(use, _Summed):
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


def _materialize(use: _Use, start: int, stop: int) -> Tensor:
    """c_i for examples start..stop as (stop − start, numel)."""
    if isinstance(use, _Summed):
        return use.c[start:stop]
    u, v = use.u[start:stop], use.v[start:stop]
    b, _, n = v.shape
    if use.index:
        key = (torch.arange(b, device=u.device).unsqueeze(1) * use.m + u).flatten()
        return v.new_zeros(b * use.m, n).index_add_(0, key, v.reshape(-1, n)).reshape(b, -1)
    return torch.bmm(u.transpose(1, 2), v).reshape(b, -1)


def _shared_sq(uses: list[_Use], numel: int) -> Tensor:
    """|Σ_k c_i^(k)|² for a parameter with several uses: (B,) float64, in chunks of examples."""
    batch = uses[0].c.shape[0] if isinstance(uses[0], _Summed) else uses[0].v.shape[0]
    step = max(1, _CHUNK // numel)
    out = []
    for i in range(0, batch, step):
        stop = min(batch, i + step)
        total = _materialize(uses[0], i, stop).clone()
        for use in uses[1:]:
            total += _materialize(use, i, stop)
        out.append(total.pow(2).sum(1).double())
    return torch.cat(out)


def _batch_size(use: _Use) -> int:
    return use.c.shape[0] if isinstance(use, _Summed) else use.v.shape[0]


class _Probe:
    """A fixed random direction R of one parameter, to check Σ_i c_i against the gradient.

    ⟨Σ_i c_i, R⟩ from the hooks must equal ⟨grad, R⟩ from autograd up to rounding; it
    does not when the parameter also gets gradient outside the hooked layers (a
    functional use such as ``h @ emb.weight.T``). With R = u ⊗ v over the parameter
    viewed as (m, n) the check costs two matrix-vector products per use, and a
    discrepancy D ≠ 0 goes unnoticed only if uᵀDv = 0, which has probability zero.
    """

    def __init__(self, use: _Use, numel: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.outer = isinstance(use, _Outer)
        m = use.m if isinstance(use, _Outer) else numel
        self.u = torch.randn(m, generator=gen, dtype=torch.float64)
        self.v = torch.randn(numel // m, generator=gen, dtype=torch.float64)
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _vectors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """u and v on ``like``'s device and in its dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = (self.u.to(like), self.v.to(like))
        return self._cast[key]

    def on_use(self, use: _Use) -> tuple[Tensor, Tensor, int] | None:
        """(⟨Σ_i c_i, R⟩, Σ of the absolute values of its terms, number of terms), or None
        for a use of another layout than the first (not checked)."""
        if isinstance(use, _Summed):
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
        g = grad.to_dense() if grad.is_sparse else grad
        g = g if g.dtype in (torch.float32, torch.float64) else g.float()
        u, v = self._vectors(g)
        if not self.outer:
            return (g.flatten() @ u).double()
        return (u @ g.reshape(len(u), -1) @ v).double()


@dataclass
class _Step:
    """What the hooks collected since the last :meth:`PerExampleNorms.sq_norms`."""

    root_calls: int = 0
    roots_reached: set[int] = field(default_factory=set)
    uses: dict[str, int] = field(default_factory=dict)  # forward calls per parameter name
    pending: dict[str, list[_Use]] = field(default_factory=dict)  # uses of shared parameters
    sq: dict[str, Tensor] = field(default_factory=dict)  # (B,) float64 per parameter
    grad_norms: dict[str, list[Tensor]] = field(default_factory=dict)  # |Σ_i c_i| per pass, from the parameter's hook
    passes: dict[str, int] = field(default_factory=dict)  # backward passes that reached each parameter
    probe_hooks: dict[str, list[Tensor]] = field(default_factory=dict)  # [⟨Σ c_i, R⟩, tolerance]
    probe_grad: dict[str, Tensor] = field(default_factory=dict)  # ⟨grad, R⟩
    batch: int | None = None
    begun: bool = False
    problems: list[Exception] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)


class PerExampleNorms:
    """Per-example squared gradient norms of a model, from hooks, during the user's own backward pass.

    Set ``enabled = True`` before the forward pass of a step to be measured; after its
    ``loss.backward()``, :meth:`sq_norms` gives |c_i|² for each example, where c_i is
    example i's contribution to ``p.grad`` (Σ_i c_i = p.grad), summed over the covered
    parameters. While ``enabled`` is False the hooks return at once and keep nothing.
    The hooks never change the outputs or ``p.grad``.

    Supported: ``nn.Linear`` (inputs (B, ..., d_in)), ``nn.Embedding``, ``nn.Conv1d``
    and ``nn.Conv2d`` (groups=1, any padding mode), ``nn.LayerNorm``; a parameter
    shared by several of them (tied weights), or a module called several times in one
    forward, has its contributions summed per example before the norm. Other trainable
    parameters are listed by :meth:`uncovered` and left out of the norms (and of
    :attr:`batch_grad_sq`, so that both describe the same parameters).

    Args:
        model: the model; hooks go on it and its submodules.
        batch_dim: the batch dimension of the inputs and outputs of the hooked layers
            (convolutions always take it first).
        grad_hooks: False: after the check's steps, no hook on the parameters' gradients (a few
            microseconds each per step); :attr:`batch_grad_sq` is then None and two backward
            passes between calls of :meth:`sq_norms` go undetected. For a caller that reads
            |p.grad|² itself, knowing p.grad was empty before the one backward pass.
        check_steps: on this many measured steps, Σ_i c_i is checked against the
            gradient autograd delivers, along a random direction (a few matrix-vector
            products per layer). A parameter that fails (it also gets gradient outside
            the hooked layers, e.g. ``h @ emb.weight.T``) is logged, moved to
            :meth:`uncovered` and left out of the norms and :attr:`batch_grad_sq` from
            then on. Such a use is a property of the model's code, so a few steps find
            it; 0 turns the check off. It resolves discrepancies above the rounding of
            the layer's dtype: sharp in float32, blunt under bf16/fp16 autocast.

    Raises:
        ConfigError: the model holds BatchNorm in train mode, which couples the examples
            of a batch (per-example gradients are undefined there).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> norms = PerExampleNorms(model)
        >>> norms.enabled = True
        >>> model(torch.randn(8, 3)).pow(2).mean().backward()
        >>> norms.sq_norms().shape
        torch.Size([8])
    """

    def __init__(self, model: nn.Module, *, batch_dim: int = 0, check_steps: int = 4, grad_hooks: bool = True) -> None:
        if check_steps < 0:
            raise ConfigError(f"must be >= 0, got {check_steps}", source="PerExampleNorms", field="check_steps")
        self.enabled = False
        self.grad_hooks = grad_hooks
        self.batch_dim = batch_dim
        self.check_steps = check_steps
        self._checked_steps = 0
        self.batch_grad_sq: float | None = None
        """|Σ_i c_i|² over the covered parameters in the step :meth:`sq_norms` last returned,
        from the gradients the backward pass delivered (|p.grad|² when p.grad was zero before)."""
        names: dict[int, str] = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        reasons: dict[str, str] = {}
        self._handles: list[RemovableHandle] = []
        self._plan: list[Callable[[], RemovableHandle]] = []  # how to register each hook (see attach)
        hooked: list[tuple[nn.Module, _Rule, dict[str, str]]] = []
        for mod_name, module in model.named_modules():
            if isinstance(module, _BATCHNORM) and (module.training or not module.track_running_stats):
                raise ConfigError(
                    f"{mod_name or type(module).__name__} ({type(module).__name__}) uses batch statistics, which "
                    "couple the examples of a batch: per-example gradients are undefined; put it in eval mode "
                    "or measure with micro-batches",
                    source="PerExampleNorms",
                    field="model",
                )
        for mod_name, module in model.named_modules():
            if isinstance(module, _BATCHNORM):  # in eval mode now; train mode later is caught in the step
                self._plan.append(partial(module.register_forward_pre_hook, partial(self._on_batchnorm, mod_name)))
            own = {pn: names[id(p)] for pn, p in module.named_parameters(recurse=False) if id(p) in names}
            if not own:
                continue
            rule, reason = _rule(module)
            if rule is None:
                for full in own.values():
                    reasons.setdefault(full, reason)
            else:
                hooked.append((module, rule, own))
        self._uncovered = reasons
        self._plan.append(partial(model.register_forward_pre_hook, self._on_root_forward))
        for module, rule, own in hooked:
            covered = {pn: full for pn, full in own.items() if full not in reasons}
            if covered:
                hook = partial(self._on_forward, rule, covered)
                self._plan.append(partial(module.register_forward_hook, hook, with_kwargs=True))
        self.attach()
        self._step = _Step()
        self._probes: dict[str, _Probe] = {}

    # ---- public -----------------------------------------------------------------------

    def covered(self) -> list[str]:
        """Names of the trainable parameters whose contributions the norms hold."""
        return [n for n in self._params if n not in self._uncovered]

    def uncovered(self) -> list[str]:
        """Names of the trainable parameters left out of the norms: held by a layer without a
        per-example rule (the types are matched exactly, so a subclass of ``nn.Linear`` is
        another type), or found by the check to get gradient outside the hooked layers."""
        return [n for n in self._params if n in self._uncovered]

    def uncovered_reasons(self) -> dict[str, str]:
        """Why each uncovered parameter is left out."""
        return {n: self._uncovered[n] for n in self.uncovered()}

    def sq_norms(self) -> Tensor:
        """|c_i|² summed over the covered parameters, shape (B,), float64, in the units of ``p.grad``.

        Valid after one backward pass of a step whose forward ran with ``enabled`` True;
        the collected state is then reset for the next step (also when this raises).
        Sets :attr:`batch_grad_sq` for the same step.

        Raises:
            EstimationError: nothing was measured (not enabled, or no backward pass
                since the last call); the model ran two forward passes that both
                reached the loss, or two backward passes ran (the examples of the two
                cannot be matched: call this after each backward); layers saw
                different batch sizes.
            ConfigError: a BatchNorm layer used batch statistics during the step.
        """
        step, self._step = self._step, _Step()
        for handle in step.handles:
            handle.remove()
        self.batch_grad_sq = None
        if step.problems:
            raise step.problems[0]
        if not step.passes and not step.roots_reached:
            if not self.enabled and not step.uses:
                raise EstimationError(
                    "PerExampleNorms is not enabled: set enabled = True before the forward pass of the step to measure"
                )
            raise EstimationError("no backward pass reached the hooked layers since the last sq_norms()")
        most = max(step.passes.values(), default=1)
        if most > 1:
            raise EstimationError(
                f"{most} backward passes ran since the last sq_norms(); call sq_norms() after each backward "
                "(with gradient accumulation, measure one micro-batch per step)"
            )
        if len(step.roots_reached) > 1:
            raise EstimationError(
                f"the model ran {len(step.roots_reached)} forward passes that all reached the backward pass; "
                "per-example norms need one forward per backward (their examples cannot be matched)"
            )
        if step.probe_hooks:
            self._checked_steps += 1
        for name in self._outside(step):
            # Gradient reached it outside the hooked layers (a functional use, e.g. F.linear(h, emb.weight)).
            self._uncovered[name] = "receives gradient outside the hooked layers (a functional use)"
            logger.warning("per-example norms leave out %s: it %s", name, self._uncovered[name])
            step.sq.pop(name, None)
            step.grad_norms.pop(name, None)
            step.pending.pop(name, None)
        for name, uses in step.pending.items():  # shared parameters whose own hook did not run
            if uses:
                self._add(step, name, _shared_sq(uses, self._params[name].numel()))
        if not step.sq:
            raise EstimationError("no covered parameter received a gradient in the backward pass")
        total = torch.stack(list(step.sq.values())).sum(0)
        norms = [n.cpu() for ns in step.grad_norms.values() for n in ns]  # cpu: parameters may be on several devices
        self.batch_grad_sq = float(torch.stack(norms).double().pow(2).sum()) if step.grad_norms else None
        return total

    @staticmethod
    def _outside(step: _Step) -> list[str]:
        """Parameters whose gradient in this step does not equal the sum of the hooks' contributions."""
        names = [n for n in step.probe_grad if n in step.probe_hooks]
        bad = [n for n in step.passes if not step.uses.get(n)]
        if names:
            rows = torch.stack(
                [torch.stack([step.probe_grad[n].cpu(), *(t.cpu() for t in step.probe_hooks[n])]) for n in names]
            ).tolist()  # one device sync for all parameters
            bad += [n for n, (grad, hooks, tol) in zip(names, rows, strict=True) if not abs(grad - hooks) <= tol]
        return bad

    def reset(self) -> None:
        """Drop what the hooks collected in the current step."""
        for handle in self._step.handles:
            handle.remove()
        self._step = _Step()

    def remove(self) -> None:
        """Remove every hook; the model is as it was before."""
        self.detach()
        self._plan = []
        self.enabled = False

    def detach(self) -> None:
        """Take the hooks off the model until :meth:`attach`, keeping what was learnt about it
        (coverage, the check's state).

        Even disabled, a hook costs each call of its module a few microseconds, which on a
        small model is a few percent of a training step; a trainer that measures every k-th
        step attaches before the forward of a measured step and detaches after its
        :meth:`sq_norms`. Drops what the hooks collected in the current step.
        """
        self.reset()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def attach(self) -> None:
        """Put the hooks back on the model after :meth:`detach` (no-op when attached, or after
        :meth:`remove`)."""
        if not self._handles:
            self._handles = [register() for register in self._plan]

    # ---- hooks --------------------------------------------------------------------------

    def _begin(self, step: _Step) -> None:
        """First hooked forward of a step: a hook on each covered parameter sees its whole gradient."""
        if step.begun:
            return
        step.begun = True
        if not self.grad_hooks and self._checked_steps >= self.check_steps:
            return
        for name in self.covered():
            step.handles.append(self._params[name].register_hook(partial(self._on_param_grad, step, name)))

    def _on_root_forward(self, module: nn.Module, args: Any) -> None:
        if self.enabled and torch.is_grad_enabled():
            self._begin(self._step)
            self._step.root_calls += 1

    def _on_batchnorm(self, name: str, module: nn.Module, args: Any) -> None:
        assert isinstance(module, _BATCHNORM)
        if self.enabled and torch.is_grad_enabled() and (module.training or not module.track_running_stats):
            self._step.problems.append(
                ConfigError(
                    f"{name} ({type(module).__name__}) used batch statistics in a measured step; they couple the "
                    "examples of a batch, so per-example gradients are undefined: put it in eval mode",
                    source="PerExampleNorms",
                    field="model",
                )
            )

    def _on_forward(
        self, rule: _Rule, covered: dict[str, str], module: nn.Module, args: Any, kwargs: Any, output: Any
    ) -> None:
        if not (self.enabled and torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        step = self._step
        self._begin(step)
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor):
            step.problems.append(EstimationError(f"{type(module).__name__} was called without a tensor input"))
            return
        for full in covered.values():
            step.uses[full] = step.uses.get(full, 0) + 1
        saved = [x.detach()]  # freed as soon as the norm is taken
        output.register_hook(partial(self._on_output_grad, step, rule, covered, module, saved, step.root_calls))

    def _on_output_grad(
        self,
        step: _Step,
        rule: _Rule,
        covered: dict[str, str],
        module: nn.Module,
        saved: list[Tensor],
        root: int,
        grad: Tensor,
    ) -> None:
        if not saved or step is not self._step:
            return  # a second backward through a retained graph, or a step already read
        x = saved.pop()
        step.roots_reached.add(root)
        if (
            rule is _linear
            and x.dim() == 2
            and self.batch_dim == 0
            and self._checked_steps >= self.check_steps
            and self._add_linear_rows(step, covered, x, grad.detach())
        ):
            return
        eps = max(torch.finfo(t.dtype).eps for t in (x, grad) if t.is_floating_point())
        try:
            uses = rule(module, x, grad.detach(), self.batch_dim)
        except (RuntimeError, ValueError, EstimationError) as err:  # an input layout the rule does not know
            step.problems.append(EstimationError(f"per-example norms of {type(module).__name__} failed: {err}"))
            return
        for pn, use in uses.items():
            full = covered.get(pn)
            if full is None or full in self._uncovered:
                continue
            b = _batch_size(use)
            if step.batch is None:
                step.batch = b
            elif b != step.batch:
                step.problems.append(
                    EstimationError(
                        f"{full} saw a batch of {b} where other layers saw {step.batch}: a parameter shared "
                        "across the batch (a positional embedding, say) has no per-example gradient. Give its "
                        "input the batch dimension, e.g. pos(torch.arange(T, device=x.device).expand(B, T)) "
                        "rather than pos(torch.arange(T)) (the same values, broadcast the same way), or tune "
                        "without the noise scale (mode='baseline')"
                    )
                )
                return
            if self._checked_steps < self.check_steps:
                self._probe_use(step, full, use, eps)
            if step.uses.get(full, 0) > 1:
                step.pending.setdefault(full, []).append(use)
            else:
                self._add(step, full, _self_sq(use))

    def _add_linear_rows(self, step: _Step, covered: dict[str, str], x: Tensor, grad: Tensor) -> bool:
        """The norms of a Linear layer on (B, d_in) rows, in a few kernels: |c_i|² = |g_i|²·|a_i|² for the
        weight and |g_i|² for the bias (what :func:`_linear` and :func:`_self_sq` give with T = 1, without
        their general layout). False, and nothing added, where the general path is needed (a parameter
        shared or used twice, another batch size)."""
        names = [full for full in covered.values() if full not in self._uncovered]
        if any(step.uses.get(full, 0) != 1 for full in names) or x.shape[0] != grad.shape[0]:
            return False
        if step.batch is None:
            step.batch = x.shape[0]
        elif x.shape[0] != step.batch:
            return False
        a, g = _compute(x, grad)
        g_sq = g.square().sum(1)
        for pn, full in covered.items():
            if full in self._uncovered:
                continue
            self._add(step, full, (g_sq * a.square().sum(1) if pn == "weight" else g_sq).double())
        return True

    def _on_param_grad(self, step: _Step, name: str, grad: Tensor) -> None:
        if step is not self._step:
            return
        step.passes[name] = step.passes.get(name, 0) + 1
        uses = step.pending.pop(name, None)
        if uses:
            self._add(step, name, _shared_sq(uses, grad.numel()))
        g = grad.detach()
        # one kernel here; squared and summed in float64 with the others' in sq_norms
        norm = torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g)
        step.grad_norms.setdefault(name, []).append(norm)
        probe = self._probes.get(name)
        if probe is not None and name in step.probe_hooks:
            step.probe_grad[name] = probe.on_grad(g)

    def _probe_use(self, step: _Step, name: str, use: _Use, eps: float) -> None:
        probe = self._probes.get(name)
        if probe is None:
            probe = self._probes[name] = _Probe(use, self._params[name].numel(), seed=len(self._probes))
        found = probe.on_use(use)
        if found is None:
            return
        value, abs_sum, terms = found
        # Rounding: each side errs by about eps·√terms times the sum of absolute values.
        tolerance = 32.0 * eps * math.sqrt(terms) * abs_sum
        if name in step.probe_hooks:
            step.probe_hooks[name][0] += value
            step.probe_hooks[name][1] += tolerance
        else:
            step.probe_hooks[name] = [value, tolerance]

    @staticmethod
    def _add(step: _Step, name: str, sq: Tensor) -> None:
        step.sq[name] = step.sq[name] + sq if name in step.sq else sq


def per_example_estimate(
    sq_norms: Tensor, batch_grad_sq: float, population: int | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unbiased ``(grad_sq, trace_sigma)`` of one step from :meth:`PerExampleNorms.sq_norms`.

    With g_i := B·c_i and G_B := Σ_i c_i (``batch_grad_sq`` = |G_B|², e.g.
    :attr:`PerExampleNorms.batch_grad_sq`), this is the two-batch estimator at
    b_small = 1 (:func:`bstune.noise.two_batch_estimate`), the finite-population
    correction included when batches are drawn without replacement from ``population``
    examples. For a mean-reduced loss the results are |G|² and tr(Σ) of the per-example
    gradients; for a sum-reduced loss both are B² times larger, and their ratio
    B_simple is the same.

    Example:
        >>> import torch
        >>> c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]) / 4  # c_i, mean loss
        >>> g, t = per_example_estimate(c.pow(2).sum(1), float(c.sum(0).pow(2).sum()), None)
        >>> round(float(g), 4), round(float(t), 4)
        (1.0, 1.0)
    """
    batch = sq_norms.shape[0]
    mean_per_example_sq = float(sq_norms.double().mean()) * batch * batch  # mean_i |g_i|²
    return two_batch_estimate(mean_per_example_sq, 1, batch_grad_sq, batch, population)
