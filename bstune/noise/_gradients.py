"""Gradients the noise-scale estimators need: per-example, per micro-batch, preconditioned.

Per-example gradients use ``torch.func`` (``vmap`` over ``grad`` of a
``functional_call``): one forward/backward for the whole batch, exact, with no
model-specific code. Micro-batch gradients use plain autograd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from bstune.errors import BstuneError
from bstune.task import LossFn

__all__ = [
    "Preconditioner",
    "adam_preconditioner",
    "batch_gradient",
    "per_example_gradients",
    "sq_norm",
    "sq_norm_of",
    "trainable_parameters",
]

Preconditioner = Mapping[str, torch.Tensor]
"""Per-parameter tensors to divide gradients by (elementwise) before taking norms."""


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def sq_norm_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ |t|² over a list of tensors, as a float64 0-dim tensor.

    Each tensor's norm is taken in its own dtype by one fused kernel (as
    ``clip_grad_norm_`` does); only the per-tensor norms are squared and summed in
    float64. Converting whole gradients to float64 first costs more than the backward
    pass of a small model.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(tensors)
    return torch.stack(norms).double().pow(2).sum()


def sq_norm(grads: Mapping[str, torch.Tensor], preconditioner: Preconditioner | None = None) -> torch.Tensor:
    """Σ over parameters of |g / p|², summed in float64 (a 0-dim tensor)."""
    names = list(grads)
    tensors = [grads[n] for n in names]
    if preconditioner is not None:
        tensors = list(torch._foreach_div(tensors, [preconditioner[n] for n in names]))
    return sq_norm_of(tensors)


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Any,
    targets: Any,
    *,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of the loss of each example, by parameter name: shapes ``(B, *param.shape)``.

    The model runs in whatever mode (train/eval) it is in; dropout draws
    independent masks per example.
    """
    params = trainable_parameters(model)
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    detached = {n: p.detach() for n, p in params.items()}

    def loss_one(p: dict[str, torch.Tensor], x: Any, y: Any) -> torch.Tensor:
        x1 = tree_map(lambda t: t.unsqueeze(0), x)
        y1 = tree_map(lambda t: t.unsqueeze(0), y)
        out = functional_call(model, (p, frozen, buffers), (x1,))
        return loss_fn(out, y1)

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different", chunk_size=chunk_size)
    return per_example(detached, inputs, targets)  # type: ignore[no-any-return]


def batch_gradient(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any) -> dict[str, torch.Tensor]:
    """Gradient of the batch-mean loss, by parameter name."""
    params = trainable_parameters(model)
    loss = loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {
        name: (g if g is not None else torch.zeros_like(p)) for (name, p), g in zip(params.items(), grads, strict=True)
    }


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    """√v̂ + ε for each parameter, from an Adam/AdamW optimizer's state.

    Dividing gradients by this before measuring makes the noise scale refer to the
    update direction Adam actually takes (a diagnostic, not ground truth).
    """
    by_id = {id(p): name for name, p in trainable_parameters(model).items()}
    out: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            name = by_id.get(id(p))
            if name is None:
                continue
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise BstuneError(
                    f"parameter {name!r} has no Adam second-moment state yet; take at least one "
                    "optimizer step before measuring a preconditioned noise scale"
                )
            step = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1.0 - beta2**step)
            out[name] = v_hat.sqrt().add_(eps)
    missing = set(by_id.values()) - set(out)
    if missing:
        raise BstuneError(f"the optimizer does not hold parameters {sorted(missing)[:3]} of the model")
    return out
