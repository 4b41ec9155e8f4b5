"""The curvature-aware noise scale B_noise = tr(HΣ)/(GᵀHG), where it is cheap.

McCandlish et al. 2018, eq. 2.8: with H the Hessian of the training loss, G its
gradient and Σ the per-example gradient covariance, SGD's best step at batch size B
improves the loss by ΔL_max/(1 + B_noise/B). B_simple = tr(Σ)/|G|² is the same with H
taken ∝ I; the two differ when the curvature is far from isotropic (noise along
flat directions counts for little in B_noise, signal along sharp ones for much).

On a random subsample of n training examples (per-example gradients g_i, by
``torch.func``) and an independent one of m examples for the Hessian (split into J
groups, H_r the Hessian of group r's mean loss), every quantity is an inner product
M_ij = g_iᵀ H g_j, from n Hessian-vector products per group (``grad`` of ⟨``grad``, v⟩,
vmapped over the g_i). With them, two U-statistics over pairs i ≠ j,

    tr(HΣ)  ≈ mean_{i≠j} ½ (g_i − g_j)ᵀ H (g_i − g_j)     (the n/(n−1) of the sample covariance)
    GᵀHG    ≈ mean_{i≠j} g_iᵀ H g_j                       (ḡᵀHḡ less its bias tr(HΣ)/n)

are unbiased (H_r is independent of the g_i, and linear in its examples), with the
finite-population correction of sampling without replacement from the D training
examples (Σ normalised by D, as :func:`bstune.noise.exact_noise_scale` has it).

The interval is Fieller's (as for B_simple, :mod:`bstune.noise._estimate`) from the
variances of the two means: the gradient sample's from the U-statistics' jackknife
pseudo-values (per-example quantities whose mean is the estimate), the Hessian
sample's from the spread of the J groups' estimates, summed, with Welch–Satterthwaite
degrees of freedom. When GᵀHG is not resolved above zero (negative curvature along G,
or too few examples) B_noise is ``inf`` and the interval open above, as B_simple's;
B_noise is never negative (a tr(HΣ) estimated at or below zero gives 0).

Cheap means: at most :data:`CURVATURE_MAX_PARAMS` trainable parameters (n·P floats of
per-example gradients and as many of HVPs are held at once), and no BatchNorm (it
couples the examples of a batch; its eval-mode statistics are not what training
sees). :func:`curvature_skip_reason` says why a model is not measured.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

from bstune.data import fetch_batch, move_to_device, sample_indices
from bstune.errors import ConfigError, EstimationError
from bstune.noise._estimate import _t_quantile, fieller_interval
from bstune.noise._gradients import per_example_gradients, trainable_parameters
from bstune.noise._measure import _VMAP_FLOATS, _chunk_size, _prepared, resolve_device
from bstune.task import Task, has_batchnorm

__all__ = [
    "CURVATURE_MAX_PARAMS",
    "CurvatureNoiseEstimate",
    "curvature_skip_reason",
    "measure_curvature_noise_scale",
]

logger = logging.getLogger(__name__)

CURVATURE_MAX_PARAMS = 100_000
"""Most trainable parameters a model may have for :func:`measure_curvature_noise_scale` to run by
default: it holds n per-example gradients and n Hessian-vector products of P floats each (256 x
100k floats is 100 MB in fp32), and its n HVPs per Hessian group cost about n backward passes of that
group; above this it is no longer a cheap side measurement of the probe."""

HESSIAN_GROUPS = 8
"""Groups the Hessian sample is split into: their spread is the Hessian sample's share of the interval."""


@dataclass(frozen=True)
class CurvatureNoiseEstimate:
    """B_noise = tr(HΣ)/(GᵀHG) with its interval, and B_simple from the same examples beside it.

    Attributes:
        b_noise: tr(HΣ)/(GᵀHG); ``inf`` when the GᵀHG estimate is not above zero, 0 when tr(HΣ)'s is not.
        ci: Fieller interval at ``confidence``; ``(lower, inf)`` when GᵀHG is not resolved above zero
            (then ``b_noise``, if finite, is a point estimate with no upper bound: say so, as for B_simple).
        resolved: whether GᵀHG is resolved above zero (the interval is bounded above).
        trace_h_sigma, g_h_g: the two estimates, and their t-intervals (``*_ci``).
        b_simple, b_simple_ci: tr(Σ)/|G|² from the same per-example gradients (H replaced by
            the identity), so that the two differ only by the curvature.
        n_examples: examples whose per-example gradients were taken.
        n_hessian_examples: examples of the (independent) Hessian sample.
        hessian_groups: groups it was split into.
        population: training-set size (finite-population correction).
        confidence: level of the intervals.
        mode: ``"eval"`` or ``"train"``, the model's mode while measured.
    """

    b_noise: float
    ci: tuple[float, float]
    resolved: bool
    trace_h_sigma: float
    g_h_g: float
    trace_h_sigma_ci: tuple[float, float]
    g_h_g_ci: tuple[float, float]
    b_simple: float
    b_simple_ci: tuple[float, float]
    n_examples: int
    n_hessian_examples: int
    hessian_groups: int
    population: int
    confidence: float
    mode: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite values become ``None``)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
            elif isinstance(value, tuple):
                out[key] = [v if math.isfinite(v) else None for v in value]
        return out

    def __str__(self) -> str:
        lo, hi = self.ci
        return (
            f"B_noise = {self.b_noise:.4g}  ({self.confidence:.0%} CI {lo:.4g} .. {hi:.4g}; B_simple of the same "
            f"{self.n_examples} examples {self.b_simple:.4g}; Hessian from {self.n_hessian_examples} examples)"
        )


def curvature_skip_reason(model: nn.Module, max_params: int = CURVATURE_MAX_PARAMS) -> str | None:
    """Why :func:`measure_curvature_noise_scale` would not measure ``model`` (``None``: it would).

    Example:
        >>> curvature_skip_reason(torch.nn.Linear(3, 1)) is None
        True
        >>> curvature_skip_reason(torch.nn.Linear(1000, 1000))
        'the model has 1,001,000 trainable parameters, more than the 100,000 a cheap Hessian measurement allows'
    """
    if has_batchnorm(model):
        return "the model has BatchNorm, which couples the examples of a batch (per-example gradients undefined)"
    n_params = sum(p.numel() for p in trainable_parameters(model).values())
    if n_params > max_params:
        return (
            f"the model has {n_params:,} trainable parameters, more than the {max_params:,} "
            "a cheap Hessian measurement allows"
        )
    return None


def measure_curvature_noise_scale(
    task: Task,
    model: nn.Module | None = None,
    *,
    n_examples: int = 256,
    n_hessian_examples: int | None = None,
    hessian_groups: int = HESSIAN_GROUPS,
    confidence: float = 0.9,
    seed: int = 0,
    device: str | torch.device | None = None,
    mode: Literal["train", "eval"] = "eval",
    max_params: int = CURVATURE_MAX_PARAMS,
    max_seconds: float | None = None,
) -> CurvatureNoiseEstimate:
    """Estimate B_noise = tr(HΣ)/(GᵀHG) at the model's parameters (see the module doc).

    Args:
        task: the problem; its training set is sampled (``n_examples`` for the gradients,
            independently ``n_hessian_examples`` for the Hessian).
        model: parameters to measure at; default a fresh model from the task (seeded).
        n_examples: per-example gradients (at least 4, at most the training set).
        n_hessian_examples: examples of the Hessian sample; default ``n_examples``.
        hessian_groups: groups the Hessian sample is split into (at least 2).
        confidence: level of the interval.
        seed: the subsamples' (and dropout's, in train mode) seed.
        device: default where the model is.
        mode: ``"eval"`` (default: a deterministic Hessian) or ``"train"``.
        max_params: the cheapness limit (default :data:`CURVATURE_MAX_PARAMS`).
        max_seconds: a time limit: the HVPs of a few vectors are timed first, and when all of
            them would take longer, nothing more is computed (an ``EstimationError``). The
            parameter count does not see a model's cost per example (a sequence model's
            per-example work grows with its length).

    Raises:
        ConfigError: a bad argument, or a model this is not cheap for (the reason of
            :func:`curvature_skip_reason`).
        EstimationError: ``torch.func`` could not differentiate the model twice, the
            gradients are not finite, or it would take longer than ``max_seconds``.

    Example:
        >>> import torch, bstune
        >>> x = torch.randn(512, 3) * torch.tensor([3.0, 1.0, 0.3]); y = x.sum(1, keepdim=True)
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(3, 1), train_data=(x, y + torch.randn(512, 1)),
        ...                    val_data=(x, y), loss=torch.nn.MSELoss())
        >>> est = measure_curvature_noise_scale(task, n_examples=128)
        >>> est.resolved and est.ci[0] <= est.b_noise <= est.ci[1]
        True
    """
    src = "measure_curvature_noise_scale"
    population = task.n_train
    m = n_hessian_examples if n_hessian_examples is not None else n_examples
    if not 4 <= n_examples <= population:
        raise ConfigError(
            f"must be between 4 and the training-set size {population}, got {n_examples}",
            source=src,
            field="n_examples",
        )
    if hessian_groups < 2:
        raise ConfigError(f"must be >= 2, got {hessian_groups}", source=src, field="hessian_groups")
    if not hessian_groups <= m <= population:
        raise ConfigError(
            f"must be between hessian_groups ({hessian_groups}) and the training-set size {population}, got {m}",
            source=src,
            field="n_hessian_examples",
        )
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"must be in (0, 1), got {confidence}", source=src, field="confidence")
    if model is None:
        model = task.make_model(seed=seed)
    reason = curvature_skip_reason(model, max_params)
    if reason is not None:
        raise ConfigError(reason, source=src, field="model")
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    idx = sample_indices(population, n_examples, generator)
    h_idx = sample_indices(population, m, generator)  # drawn independently of idx: E[H_r | g] = H
    with _prepared(model, dev, mode) as work, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            grams, identity = _grams(work, task, idx, h_idx, hessian_groups, dev, max_seconds)
        except (RuntimeError, NotImplementedError) as exc:  # an op without a double backward, a model vmap cannot run
            raise EstimationError(f"Hessian-vector products failed: {type(exc).__name__}: {exc}") from exc
    return _summarize(grams, identity, population, confidence, n_examples, m, mode)


def _grams(
    model: nn.Module,
    task: Task,
    idx: torch.Tensor,
    h_idx: torch.Tensor,
    groups: int,
    dev: torch.device,
    max_seconds: float | None = None,
) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    """M^r_ij = g_iᵀ H_r g_j for each Hessian group r, and g_iᵀ g_j (float64, n × n)."""
    started = time.perf_counter()
    inputs, targets = move_to_device(fetch_batch(task.train_dataset, idx), dev)
    per_ex = per_example_gradients(model, task.loss, inputs, targets, chunk_size=_chunk_size(model))
    names = list(per_ex)
    flat = torch.cat([per_ex[k].flatten(1) for k in names], dim=1)  # (n, P)
    if not bool(torch.isfinite(flat).all()):
        raise EstimationError("non-finite per-example gradients (overflowing loss?)")
    g64 = flat.double()
    t0 = time.perf_counter()
    identity = (g64 @ g64.T).cpu().numpy()
    gram_seconds = time.perf_counter() - t0  # each Hessian group's gram costs as much (n × P by P × n, float64)
    params = {k: p.detach() for k, p in trainable_parameters(model).items()}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def batch_loss(p: dict[str, torch.Tensor], x: Any, y: Any) -> torch.Tensor:
        return task.loss(functional_call(model, (p, frozen, buffers), (x,)), y)

    n_params, n = flat.shape[1], flat.shape[0]
    grams = []
    for r, part in enumerate(torch.tensor_split(h_idx, groups)):
        x, y = move_to_device(fetch_batch(task.train_dataset, part), dev)

        def hvp(v: dict[str, torch.Tensor], x: Any = x, y: Any = y) -> dict[str, torch.Tensor]:
            # reverse over reverse, H v = ∇⟨∇L, v⟩: forward-mode (jvp of grad) trips over ZeroTensors
            # in some of torch's backward formulas (e.g. MSELoss after a Linear)
            def directional(p: dict[str, torch.Tensor]) -> torch.Tensor:
                g = grad(batch_loss)(p, x, y)
                return sum((g[k] * v[k]).sum() for k in names)  # type: ignore[return-value,no-any-return]

            return grad(directional)(params)  # type: ignore[no-any-return]

        # vmapped over the n vectors, each one HVP of this group's batch: n·|group| activations at once
        chunk = max(1, _VMAP_FLOATS // max(n_params * max(len(part), 1), 1))
        if r == 0 and max_seconds is not None:
            _check_time(
                hvp, per_ex, min(n, _TIMED_VECTORS), n, groups, chunk, started - groups * gram_seconds, max_seconds, dev
            )
        hv = vmap(hvp, randomness="same", chunk_size=chunk)(per_ex)
        h_flat = torch.cat([hv[k].flatten(1) for k in names], dim=1).double()
        gram = (g64 @ h_flat.T).cpu().numpy()
        grams.append(0.5 * (gram + gram.T))  # H is symmetric; average out the rounding
    return grams, identity


_TIMED_VECTORS = 8  # HVPs per timed call where a time limit is given (k, then 4k, after a warm-up call of k)


def _check_time(
    hvp: Any,
    per_ex: dict[str, torch.Tensor],
    k: int,
    n: int,
    groups: int,
    chunk: int,
    started: float,
    max_seconds: float,
    dev: torch.device,
) -> None:
    """Time vmapped HVPs of ``k`` and up to ``4k`` vectors and raise an ``EstimationError`` when ``n`` of them in
    chunks of ``chunk``, for each of ``groups`` Hessian groups, would pass ``max_seconds`` (counted from
    ``started``, which the caller moves back by the time its grams will take).

    A vmapped call costs a fixed part (its first call also traces the function) and a part per vector; on a
    small model the fixed part is nearly all of it, so scaling one timed call by n·groups/k projected 21 s
    for what took 1 s, and skipped the measurement by the machine's load. The warm calls of k and 4k vectors
    give both parts.
    """

    def timed(m: int) -> float:
        t0 = time.perf_counter()
        vmap(hvp, randomness="same")({name: g[:m] for name, g in per_ex.items()})
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    timed(k)  # warm-up: tracing and first-call costs
    one = timed(k)
    many = min(n, chunk, 4 * k)
    more = timed(many) if many > k else one
    per_vector = max(0.0, (more - one) / (many - k)) if many > k else one / k
    fixed = max(0.0, one - k * per_vector)
    calls = groups * -(-n // max(chunk, 1))
    projected = (time.perf_counter() - started) + calls * fixed + n * groups * per_vector
    if projected > max_seconds:
        raise EstimationError(
            f"its Hessian-vector products would take about {projected:.0f}s, more than the {max_seconds:.0f}s allowed"
        )


def _u_stats(gram: NDArray[np.float64], population: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Jackknife pseudo-values of the two U-statistics (numerator, denominator) from M_ij = g_iᵀ A g_j.

    Kernels over pairs i ≠ j: ½(M_ii + M_jj) − M_ij (mean: n/(n−1)·tr(AS) of the sample) and M_ij.
    Their means are the estimates, and their spread/√n the estimates' standard errors.
    """
    n = gram.shape[0]
    diag = np.diag(gram)
    off_rows = gram.sum(1) - diag  # Σ_{j≠i} M_ij
    psi_t = (0.5 * ((n - 1) * diag + (diag.sum() - diag)) - off_rows) / (n - 1)
    psi_d = off_rows / (n - 1)
    # pseudo-value of an order-2 U-statistic: n·U − (n−1)·U_{−i} = (2(n−1)ψ_i − n·U)/(n−2)
    p_t = (2 * (n - 1) * psi_t - n * psi_t.mean()) / (n - 2)
    p_d = (2 * (n - 1) * psi_d - n * psi_d.mean()) / (n - 2)
    # sampled without replacement from D: the kernels' population means are D/(D−1)·tr(AΣ) and
    # GᵀAG − tr(AΣ)/(D−1), with Σ normalised by D
    d = float(population)
    trace = p_t * (d - 1) / d
    return trace, p_d + p_t / d


def _interval(
    trace: float,
    signal: float,
    var_g: NDArray[np.float64],
    var_h: NDArray[np.float64] | None,
    n: int,
    groups: int,
    confidence: float,
) -> tuple[float, tuple[float, float]]:
    """Ratio and Fieller interval from the 2x2 covariances of the two means (gradient and Hessian parts)."""
    cov = var_g + (var_h if var_h is not None else 0.0)
    ratio = trace / signal if signal > 0 else math.inf
    df = float(n - 1)
    if var_h is not None and signal > 0:  # Welch–Satterthwaite on the ratio's linearised variance
        vg = float(var_g[0, 0] - 2 * ratio * var_g[0, 1] + ratio * ratio * var_g[1, 1])
        vh = float(var_h[0, 0] - 2 * ratio * var_h[0, 1] + ratio * ratio * var_h[1, 1])
        if vg > 0 or vh > 0:
            df = (vg + vh) ** 2 / (max(vg, 0.0) ** 2 / (n - 1) + max(vh, 0.0) ** 2 / (groups - 1))
    tq = _t_quantile(confidence, max(1, round(df)))
    lo, hi = fieller_interval(trace, signal, float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1]), tq)
    if ratio < 0:
        ratio = 0.0  # tr(HΣ) estimated at or below zero: no noise worth a larger batch
    return ratio, (max(lo, 0.0), hi)


def _t_ci(mean: float, var: float, df: int, confidence: float) -> tuple[float, float]:
    half = _t_quantile(confidence, max(1, df)) * math.sqrt(max(var, 0.0))
    return (mean - half, mean + half)


def _summarize(
    grams: list[NDArray[np.float64]],
    identity: NDArray[np.float64],
    population: int,
    confidence: float,
    n: int,
    m: int,
    mode: str,
) -> CurvatureNoiseEstimate:
    groups = len(grams)
    # gradient sample: pseudo-values with the whole Hessian sample (the mean of the groups' H_r)
    p_t, p_d = _u_stats(np.mean(grams, axis=0), population)
    trace, signal = float(p_t.mean()), float(p_d.mean())
    var_g = np.cov(np.vstack([p_t, p_d]), ddof=1) / n
    # Hessian sample: the groups' estimates with the same gradients
    per_group = np.array([[float(a.mean()) for a in _u_stats(g, population)] for g in grams])  # (J, 2)
    var_h = np.cov(per_group.T, ddof=1) / groups
    b_noise, ci = _interval(trace, signal, var_g, var_h, n, groups, confidence)
    s_t, s_d = _u_stats(identity, population)
    b_simple, b_simple_ci = _interval(
        float(s_t.mean()), float(s_d.mean()), np.cov(np.vstack([s_t, s_d]), ddof=1) / n, None, n, groups, confidence
    )
    if not (math.isfinite(trace) and math.isfinite(signal)):
        raise EstimationError("non-finite Hessian-vector products (overflowing curvature?)")
    resolved = math.isfinite(ci[1])
    if not resolved:
        logger.info(
            "curvature noise scale: GᵀHG = %.3g is not resolved above zero with %d examples "
            "(negative curvature along G, or too noisy); B_noise unbounded above",
            signal,
            n,
        )
    return CurvatureNoiseEstimate(
        b_noise=b_noise,
        ci=ci,
        resolved=resolved,
        trace_h_sigma=trace,
        g_h_g=signal,
        trace_h_sigma_ci=_t_ci(trace, float(var_g[0, 0] + var_h[0, 0]), n - 1, confidence),
        g_h_g_ci=_t_ci(signal, float(var_g[1, 1] + var_h[1, 1]), n - 1, confidence),
        b_simple=b_simple,
        b_simple_ci=b_simple_ci,
        n_examples=n,
        n_hessian_examples=m,
        hessian_groups=groups,
        population=population,
        confidence=confidence,
        mode=mode,
    )
