"""Per-example squared gradient norms from module hooks, during the user's own backward pass.

Goodfellow 2015, "Efficient Per-Example Gradient Computations" (the trick Opacus and
BackPACK use). A forward hook keeps each covered layer's input a (detached), a hook on
its output receives g = ∂loss/∂y while the user's ``loss.backward()`` runs, and the
layer's rule (:mod:`bstune.noise._layer_rules`: linear, embedding, convolution,
LayerNorm) turns them into example i's contribution c_i to each parameter's gradient and
|c_i|². A parameter used by several modules (tied weights) or by one module called
several times gets c_i = Σ_k c_i^(k) summed over its uses *before* the norm; a parameter
that also gets gradient outside the hooked layers is found by checking Σ_i c_i against
its gradient, and left uncovered.

Units: sq_norms are in the units of ``p.grad``. c_i is example i's contribution to
the batch gradient, Σ_i c_i = p.grad. With AMP loss scaling by s they carry a factor
s²; B_simple = tr(Σ)/|G|² does not depend on a common factor, but whoever mixes them
with unscaled quantities divides by s².

From norms to the noise scale: write g_i := B·c_i and G_B := Σ_i c_i = p.grad. For a
mean-reduced loss g_i is exactly example i's gradient and G_B the batch-mean gradient;
for a sum-reduced loss both are B times too large, a common factor that B_simple
ignores. The per-example (b_small = 1) two-batch estimator then gives unbiased |G|²
and tr(Σ) from mean_i |g_i|² = B²·mean(sq_norms) and |G_B|² (see
:func:`~bstune.noise.per_example_estimate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bstune.errors import ConfigError, EstimationError
from bstune.noise._layer_rules import (
    DirectionCheck,
    Rule,
    Use,
    batch_of,
    in_compute_dtype,
    linear_uses,
    rule_for,
    self_sq,
    shared_sq,
)

__all__ = ["PerExampleNorms"]

logger = logging.getLogger(__name__)

_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


@dataclass
class _Step:
    """What the hooks collected since the last :meth:`PerExampleNorms.sq_norms`."""

    root_calls: int = 0
    roots_reached: set[int] = field(default_factory=set)
    uses: dict[str, int] = field(default_factory=dict)  # forward calls per parameter name
    pending: dict[str, list[Use]] = field(default_factory=dict)  # uses of shared parameters
    sq: dict[str, Tensor] = field(default_factory=dict)  # (B,) float64 per parameter
    grad_norms: dict[str, list[Tensor]] = field(default_factory=dict)  # |Σ_i c_i| per pass, from the parameter's hook
    grads: dict[str, Tensor] = field(default_factory=dict)  # Σ_i c_i as the pass delivered it (with keep_grads)
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
        self.keep_grads = False
        """True: :attr:`batch_grads` keeps the gradients themselves (a copy of the covered ones per step)."""
        self.batch_grads: dict[str, Tensor] | None = None
        """With :attr:`keep_grads`: Σ_i c_i of each covered parameter in the step :meth:`sq_norms` last
        returned, as the backward pass delivered it: what ``p.grad`` holds before the loop's own code
        (gradient clipping, earlier micro-batches' gradients, an AMP unscale) changes it."""
        names: dict[int, str] = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        reasons: dict[str, str] = {}
        self._handles: list[RemovableHandle] = []
        self._plan: list[Callable[[], RemovableHandle]] = []  # how to register each hook (see attach)
        hooked: list[tuple[nn.Module, Rule, dict[str, str]]] = []
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
            rule, reason = rule_for(module)
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
        self._probes: dict[str, DirectionCheck] = {}

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
        self.batch_grads = None
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
                "(with gradient accumulation, after each micro-batch's backward)"
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
            step.grads.pop(name, None)
            step.pending.pop(name, None)
        for name, uses in step.pending.items():  # shared parameters whose own hook did not run
            if uses:
                self._add(step, name, shared_sq(uses, self._params[name].numel()))
        if not step.sq:
            raise EstimationError("no covered parameter received a gradient in the backward pass")
        total = torch.stack(list(step.sq.values())).sum(0)
        norms = [n.cpu() for ns in step.grad_norms.values() for n in ns]  # cpu: parameters may be on several devices
        self.batch_grad_sq = float(torch.stack(norms).double().pow(2).sum()) if step.grad_norms else None
        if self.keep_grads and step.grads:
            self.batch_grads = {n: g for n, g in step.grads.items() if n not in self._uncovered}
        return total

    def backward_passes(self) -> int:
        """Backward passes that reached the covered parameters since the last :meth:`sq_norms`."""
        return max(self._step.passes.values(), default=0)

    @staticmethod
    def _outside(step: _Step) -> list[str]:
        """Parameters whose gradient in this step does not equal the sum of the hooks' contributions."""
        names = [n for n in step.probe_grad if n in step.probe_hooks]
        bad = [n for n in step.passes if not step.uses.get(n)]
        if names:
            rows = torch.stack(
                [torch.stack([step.probe_grad[n].cpu(), *(t.cpu() for t in step.probe_hooks[n])]) for n in names]
            ).tolist()  # one device sync for all parameters
            # a non-finite gradient (a NaN loss: the run diverges) says nothing of where gradient reached the parameter
            bad += [
                n
                for n, (grad, hooks, tol) in zip(names, rows, strict=True)
                if math.isfinite(grad + hooks + tol) and not abs(grad - hooks) <= tol
            ]
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
        self, rule: Rule, covered: dict[str, str], module: nn.Module, args: Any, kwargs: Any, output: Any
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
        rule: Rule,
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
            rule is linear_uses
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
            b = batch_of(use)
            if step.batch is None:
                step.batch = b
            elif b != step.batch:
                step.problems.append(
                    EstimationError(
                        f"{full} saw a batch of {b} where other layers saw {step.batch}: a parameter shared "
                        "across the batch (a positional embedding, say) has no per-example gradient. Give its "
                        "input the batch dimension, e.g. pos(torch.arange(T, device=x.device).expand(B, T)) "
                        "rather than pos(torch.arange(T)) (the same values, broadcast the same way), or tune "
                        "without the noise scale (mode='baseline'; bstune run --mode baseline)"
                    )
                )
                return
            if self._checked_steps < self.check_steps:
                self._probe_use(step, full, use, eps)
            if step.uses.get(full, 0) > 1:
                step.pending.setdefault(full, []).append(use)
            else:
                self._add(step, full, self_sq(use))

    def _add_linear_rows(self, step: _Step, covered: dict[str, str], x: Tensor, grad: Tensor) -> bool:
        """The norms of a Linear layer on (B, d_in) rows, in a few kernels: |c_i|² = |g_i|²·|a_i|² for the
        weight and |g_i|² for the bias (what :func:`linear_uses` and :func:`self_sq` give with T = 1, without
        their general layout). False, and nothing added, where the general path is needed (a parameter
        shared or used twice, another batch size)."""
        names = [full for full in covered.values() if full not in self._uncovered]
        if any(step.uses.get(full, 0) != 1 for full in names) or x.shape[0] != grad.shape[0]:
            return False
        if step.batch is None:
            step.batch = x.shape[0]
        elif x.shape[0] != step.batch:
            return False
        a, g = in_compute_dtype(x, grad)
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
            self._add(step, name, shared_sq(uses, grad.numel()))
        g = grad.detach()
        # one kernel here; squared and summed in float64 with the others' in sq_norms
        norm = torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g)
        step.grad_norms.setdefault(name, []).append(norm)
        if self.keep_grads:  # a copy: autograd may make this tensor p.grad, which the loop then changes in place;
            # a sparse one (an embedding's rows) stays sparse: dense, it would be the whole table per step
            step.grads[name] = g.coalesce().clone() if g.is_sparse else g.clone()
        probe = self._probes.get(name)
        if probe is not None and name in step.probe_hooks:
            step.probe_grad[name] = probe.on_grad(g)

    def _probe_use(self, step: _Step, name: str, use: Use, eps: float) -> None:
        probe = self._probes.get(name)
        if probe is None:
            probe = self._probes[name] = DirectionCheck(use, self._params[name].numel(), seed=len(self._probes))
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
