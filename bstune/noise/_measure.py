"""Measuring B_simple at fixed parameters: the estimators and the exact reference."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from bstune.data import batch_len, fetch_batch, move_to_device, sample_indices, slice_batch
from bstune.errors import ConfigError
from bstune.noise._estimate import CIMethod, NoiseScaleEstimate, summarize
from bstune.noise._gradients import (
    Preconditioner,
    batch_gradient,
    per_example_gradients,
    sq_norm,
    trainable_parameters,
)
from bstune.noise._two_batch import two_batch_estimate
from bstune.task import Task, has_batchnorm

__all__ = ["exact_noise_scale", "measure_noise_scale", "resolve_device"]

logger = logging.getLogger(__name__)

Method = Literal["per_example", "micro_batch"]
_VMAP_FLOATS = 1 << 26  # per-example gradients held at once: 64M floats, 256 MiB in fp32
_VMAP_GROUP_EXAMPLES = 1024  # examples per vmap call when several measurement batches are drawn


_DEVICES_HINT = "use cpu, cuda, cuda:N or mps"


def resolve_device(device: str | torch.device | None, *, check_available: bool = True) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else the CPU; otherwise the torch device named.

    With ``check_available=False`` only the name is checked (for a device on another machine,
    e.g. a Ray worker's).

    Raises:
        ConfigError: ``device`` names no torch device (``"gpu"``), or this machine lacks it
            (``"cuda"`` without CUDA, ``"cuda:3"`` with two GPUs).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{device!r} is not a torch device; {_DEVICES_HINT}", source="device") from None
    if dev.type == "cpu" or not check_available:
        return dev
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):
        raise ConfigError(f"{str(dev)!r} is not a device bstune can train on; {_DEVICES_HINT}", source="device")
    if not is_available():
        raise ConfigError(f"{dev} is not available on this machine (torch sees no {dev.type} device)", source="device")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise ConfigError(
            f"{dev} is not available on this machine: it has {count()} {dev.type} device(s), "
            f"{dev.type}:0 to {dev.type}:{count() - 1}",
            source="device",
        )
    return dev


@contextmanager
def _prepared(model: nn.Module, device: torch.device, mode: str) -> Iterator[nn.Module]:
    """The model on ``device`` in ``mode``; the caller's model is left as it was."""
    if mode not in ("train", "eval"):
        raise ConfigError(f"must be 'train' or 'eval', got {mode!r}", source="measure_noise_scale", field="mode")
    current = next(model.parameters()).device
    work = model if current == device else copy.deepcopy(model).to(device)
    was_training = work.training
    work.train(mode == "train")
    try:
        yield work
    finally:
        model.train(was_training)


def _chunk_size(model: nn.Module) -> int:
    n_params = sum(p.numel() for p in trainable_parameters(model).values())
    return max(1, _VMAP_FLOATS // max(n_params, 1))


def _per_example_norms(
    model: nn.Module,
    task: Task,
    inputs: object,
    targets: object,
    n_batches: int,
    preconditioner: Preconditioner | None,
    chunk: int,
) -> list[tuple[float, float]]:
    """For each of ``n_batches`` equal batches laid end to end in ``inputs``:
    (mean over its examples of |g_i|², |mean of its g_i|²).

    One vmap call covers all the batches, which amortises torch.func's fixed cost.
    """
    grads = per_example_gradients(model, task.loss, inputs, targets, chunk_size=chunk)
    per_ex_sq = None
    batch_sq = None
    for name, g in grads.items():
        if preconditioner is not None:
            g = g / preconditioner[name]
        g = g.reshape(n_batches, -1, g[0].numel())  # (n_batches, B, numel), in the gradients' dtype
        sq = torch.linalg.vector_norm(g, dim=2).double().pow(2)  # (n_batches, B): |g_i|² over this tensor
        mean_sq = torch.linalg.vector_norm(g.mean(1), dim=1).double().pow(2)  # (n_batches,)
        per_ex_sq = sq if per_ex_sq is None else per_ex_sq + sq
        batch_sq = mean_sq if batch_sq is None else batch_sq + mean_sq
    assert per_ex_sq is not None and batch_sq is not None
    small, big = per_ex_sq.mean(1), batch_sq
    return list(zip(small.tolist(), big.tolist(), strict=True))


def _micro_batch_norms(
    model: nn.Module, task: Task, inputs: object, targets: object, micro: int, preconditioner: Preconditioner | None
) -> tuple[float, float]:
    """(mean over micro-batches of |g_j|², |mean of g_j|²) for one batch split into micro-batches."""
    k = batch_len(targets) // micro
    small = 0.0
    total: dict[str, torch.Tensor] = {}
    for j in range(k):
        g = batch_gradient(
            model,
            task.loss,
            slice_batch(inputs, j * micro, (j + 1) * micro),
            slice_batch(targets, j * micro, (j + 1) * micro),
        )
        small += float(sq_norm(g, preconditioner)) / k
        for name, t in g.items():
            total[name] = total[name] + t if name in total else t.clone()
    mean = {name: t / k for name, t in total.items()}
    return small, float(sq_norm(mean, preconditioner))


def measure_noise_scale(
    task: Task,
    model: nn.Module | None = None,
    *,
    batch_size: int = 64,
    method: Method = "per_example",
    micro_batch_size: int | None = None,
    n_batches: int | None = None,
    rel_precision: float = 0.1,
    max_samples: int | None = None,
    min_batches: int = 20,
    confidence: float = 0.9,
    ci_method: CIMethod = "fieller",
    seed: int = 0,
    device: str | torch.device | None = None,
    mode: Literal["train", "eval"] = "train",
    preconditioner: Preconditioner | None = None,
    warn_if_imprecise: bool = True,
) -> NoiseScaleEstimate:
    """Estimate the simple noise scale B_simple = tr(Σ)/|G|² at the model's parameters.

    Draws independent batches of ``batch_size`` training examples (each without
    replacement; the finite-population correction uses the training-set size) and
    forms unbiased per-batch estimates of |G|² and tr(Σ):

    * ``method="per_example"``: from per-example gradients (``torch.func``); the most
      information per batch. Not defined for BatchNorm in train mode.
    * ``method="micro_batch"``: from the gradients of ``micro_batch_size`` slices of
      each batch and their mean (McCandlish et al. 2018, App. A.1): what training
      with gradient accumulation or data parallelism gives for free.

    With ``n_batches`` the number of batches is fixed. Otherwise batches are drawn
    until the interval's half-width is within ``rel_precision`` of the estimate, or
    ``max_samples`` examples are used (default: 200 batches' worth).

    Note that B_simple depends on where training is (it grows as the loss falls) and
    is defined at fixed parameters: measure a model trained for a while at a sane
    learning rate, not only the initialization.

    Args:
        task: the problem; its training set is sampled.
        model: parameters to measure at; default a fresh model from the task (seeded).
        confidence: level of the reported interval (0.9 gives a 90% interval).
        ci_method: ``"fieller"`` (default) or ``"jackknife"`` interval for the ratio.
        device: ``"cpu"``, ``"cuda"``, ...; default: where the model is.
        mode: ``"train"`` (dropout on, as training sees it) or ``"eval"``.
        preconditioner: divide gradients by these tensors (see
            :func:`bstune.noise.adam_preconditioner`) for Adam's preconditioned variant.
        warn_if_imprecise: log a warning when the budget ran out before ``rel_precision``.

    Example:
        >>> import torch, bstune
        >>> x = torch.randn(512, 4); y = x @ torch.ones(4) + 0.5 * torch.randn(512)
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(4, 1), train_data=(x, y[:, None]),
        ...                    val_data=(x, y[:, None]), loss=torch.nn.MSELoss())
        >>> est = bstune.measure_noise_scale(task, batch_size=32, n_batches=16)
        >>> est.ci[0] < est.b_simple < est.ci[1]
        True
    """
    src = "measure_noise_scale"
    if method not in ("per_example", "micro_batch"):
        raise ConfigError(f"unknown method {method!r}; use 'per_example' or 'micro_batch'", source=src, field="method")
    population = task.n_train
    if not 2 <= batch_size <= population:
        raise ConfigError(
            f"must be between 2 and the training-set size {population}, got {batch_size}",
            source=src,
            field="batch_size",
        )
    if model is None:
        model = task.make_model(seed=seed)
    if method == "per_example":
        micro = 1
        if has_batchnorm(model) and mode == "train":
            raise ConfigError(
                "per-example gradients are not defined for BatchNorm in train mode (it couples the examples "
                "of a batch); use method='micro_batch' or mode='eval'",
                source=src,
                field="method",
            )
    else:
        micro = micro_batch_size if micro_batch_size is not None else max(1, batch_size // 4)
        if not 1 <= micro < batch_size or batch_size % micro:
            raise ConfigError(
                f"must divide batch_size ({batch_size}) and be smaller than it, got {micro}",
                source=src,
                field="micro_batch_size",
            )
    if n_batches is not None and n_batches < 2:
        raise ConfigError(f"must be >= 2 to give an interval, got {n_batches}", source=src, field="n_batches")
    if not rel_precision > 0:
        raise ConfigError(f"must be > 0, got {rel_precision}", source=src, field="rel_precision")
    if not 0.0 < confidence < 1.0:  # checked here too, before any gradient is computed
        raise ConfigError(f"must be in (0, 1), got {confidence}", source=src, field="confidence")
    if ci_method not in ("fieller", "jackknife"):
        raise ConfigError(
            f"unknown interval method {ci_method!r}; use 'fieller' or 'jackknife'", source=src, field="ci_method"
        )
    budget = max_samples if max_samples is not None else 200 * batch_size
    if n_batches is None and budget < 2 * batch_size:
        raise ConfigError(
            f"must allow at least two batches ({2 * batch_size} examples), got {budget}",
            source=src,
            field="max_samples",
        )
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    grad_sq: list[float] = []
    trace: list[float] = []
    # Per-example gradients of several batches go through one vmap call.
    group = 1
    if method == "per_example":
        n_params = sum(p.numel() for p in trainable_parameters(model).values())
        group = max(1, min(_VMAP_GROUP_EXAMPLES, _VMAP_FLOATS // max(n_params, 1)) // batch_size)
    max_batches = n_batches if n_batches is not None else max(2, budget // batch_size)
    # The stopping rule is checked on a geometric schedule, not after every batch,
    # so that optional stopping does not erode the interval's coverage.
    next_check = max(min_batches, 2)
    with _prepared(model, dev, mode) as work, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout masks
        chunk = _chunk_size(work)
        while len(grad_sq) < max_batches:
            k = min(group, max_batches - len(grad_sq))
            if n_batches is None:
                k = min(k, max(1, next_check - len(grad_sq)))
            idx = torch.cat([sample_indices(population, batch_size, generator) for _ in range(k)])
            inputs, targets = move_to_device(fetch_batch(task.train_dataset, idx), dev)
            if method == "per_example":
                pairs = _per_example_norms(work, task, inputs, targets, k, preconditioner, chunk)
            else:
                pairs = [_micro_batch_norms(work, task, inputs, targets, micro, preconditioner)]
            for small, big in pairs:
                g, t = two_batch_estimate(small, micro, big, batch_size, population)
                grad_sq.append(float(g))
                trace.append(float(t))
            if n_batches is None and len(grad_sq) >= next_check:
                est = summarize(
                    grad_sq,
                    trace,
                    batch_size=batch_size,
                    micro_batch_size=micro,
                    method=method,
                    confidence=confidence,
                    population=population,
                    ci_method=ci_method,
                )
                if est.rel_half_width <= rel_precision:
                    break
                next_check = max(len(grad_sq) + 1, int(len(grad_sq) * 1.25))
    est = summarize(
        grad_sq,
        trace,
        batch_size=batch_size,
        micro_batch_size=micro,
        method=method,
        confidence=confidence,
        population=population,
        preconditioned=preconditioner is not None,
        ci_method=ci_method,
    )
    if warn_if_imprecise and n_batches is None and est.rel_half_width > rel_precision:
        logger.warning(
            "noise scale: interval half-width %.0f%% after %d batches (%d examples) is wider than the "
            "requested %.0f%%; raise max_samples for a tighter estimate",
            100 * est.rel_half_width,
            est.n_batches,
            est.n_examples,
            100 * rel_precision,
        )
    return est


def exact_noise_scale(
    task: Task,
    model: nn.Module,
    *,
    device: str | torch.device | None = None,
    mode: Literal["train", "eval"] = "train",
    preconditioner: Preconditioner | None = None,
    chunk_examples: int = 256,
) -> NoiseScaleEstimate:
    """The exact B_simple over the whole training set, from every per-example gradient.

    G is the mean of the D per-example gradients and Σ their covariance (normalised
    by D). Costs one per-example backward pass over the data: meant for small
    problems, tests and benchmarks. With dropout in train mode the per-example
    gradients are themselves random; use ``mode="eval"`` for a deterministic value.

    Example:
        >>> import torch, bstune
        >>> from bstune.noise import exact_noise_scale
        >>> x = torch.randn(200, 3); y = x.sum(1, keepdim=True)
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(3, 1), train_data=(x, y),
        ...                    val_data=(x, y), loss=torch.nn.MSELoss())
        >>> exact_noise_scale(task, task.make_model(seed=0)).method
        'exact'
    """
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    population = task.n_train
    with _prepared(model, dev, mode) as work:
        if has_batchnorm(work) and mode == "train":
            raise ConfigError(
                "per-example gradients are not defined for BatchNorm in train mode; use mode='eval'",
                source="exact_noise_scale",
                field="mode",
            )
        chunk = _chunk_size(work)
        sum_grad: dict[str, torch.Tensor] = {}
        sum_sq = torch.zeros((), dtype=torch.float64, device=dev)
        for start in range(0, population, chunk_examples):
            idx = torch.arange(start, min(start + chunk_examples, population))
            inputs, targets = move_to_device(fetch_batch(task.train_dataset, idx), dev)
            grads = per_example_gradients(work, task.loss, inputs, targets, chunk_size=chunk)
            for name, g in grads.items():
                g = g.double()
                if preconditioner is not None:
                    g = g / preconditioner[name].double()
                sum_sq += g.pow(2).sum()
                s = g.sum(0)
                sum_grad[name] = sum_grad[name] + s if name in sum_grad else s
    grad_sq = float(sq_norm({n: s / population for n, s in sum_grad.items()}))
    trace_sigma = float(sum_sq) / population - grad_sq
    b_simple = trace_sigma / grad_sq if grad_sq > 0 else math.inf
    return NoiseScaleEstimate(
        b_simple=b_simple,
        ci=(b_simple, b_simple),
        trace_sigma=trace_sigma,
        grad_sq=grad_sq,
        trace_sigma_ci=(trace_sigma, trace_sigma),
        grad_sq_ci=(grad_sq, grad_sq),
        n_batches=1,
        n_examples=population,
        batch_size=population,
        micro_batch_size=1,
        method="exact",
        confidence=1.0,
        population=population,
        preconditioned=preconditioner is not None,
    )
