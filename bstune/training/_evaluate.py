"""A task's metrics over one evaluation set, fed batch by batch.

An evaluation runs the model over a set in batches of ``eval_batch_size``. A metric
declared ``over="batch"`` (a mean over examples: accuracy, MSE) is the size-weighted
mean of its per-batch values and keeps nothing. A metric ``over="dataset"`` (the
default: R², F1, AUC, RMSE, ...) is called once on every batch's outputs and targets
joined, which are kept on the CPU in float32 until then: averaging such a metric over
batches is wrong, badly so where the set is ordered (R² of each chunk of a set sorted by
its target is far below the set's).

Batches are joined along their first dimension: tensors, and tuples (named ones too),
dicts (a HuggingFace ``ModelOutput`` too) and lists of them; a list of one item per
example (detection targets) is joined as a longer list. Where a batch cannot be joined (a
0-d tensor among the outputs, sequences padded to each batch's own length) or the kept
outputs pass :data:`KEEP_LIMIT_BYTES`, the set's metrics fall back to the batches' mean,
with one warning that says so.

Under data parallelism each rank feeds its own batches; :meth:`MetricSet.partial` is what
a rank holds and :meth:`MetricSet.combine` makes the set's values from every rank's.

Example:
    >>> import torch
    >>> from bstune.metrics import Metric
    >>> def r2(out, y):
    ...     return float(1 - ((out - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    >>> y = torch.arange(8.0)
    >>> out = y + torch.tensor([0.5, -0.5] * 4)
    >>> over_set = MetricSet({"r2": Metric(r2, "maximize")})
    >>> chunked = MetricSet({"r2": Metric(r2, "maximize", over="batch")})
    >>> for start in (0, 4):
    ...     over_set.add(out[start:start + 4], y[start:start + 4], 4)
    ...     chunked.add(out[start:start + 4], y[start:start + 4], 4)
    >>> round(over_set.values(8)["r2"], 4), round(chunked.values(8)["r2"], 4)  # the set's R², the chunks' mean
    (0.9524, 0.8)
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bstune.errors import UserCodeError
from bstune.metrics import Metric

__all__ = ["KEEP_LIMIT_BYTES", "MetricSet"]

logger = logging.getLogger(__name__)

KEEP_LIMIT_BYTES = 2 * 1024**3  # outputs and targets kept for whole-set metrics, at most, per evaluation
_warned: set[str] = set()  # the fallbacks this process has warned about


class _Examples(list):  # type: ignore[type-arg]
    """A list of one item per example (detection targets, say): joined as one longer list."""


class _CannotJoin(Exception):
    """A batch's outputs or targets that cannot be joined with the others along the examples."""


class MetricSet:
    """Accumulates ``metrics`` over one evaluation set's batches; :meth:`values` gives the set's values."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)
        self.sums = {key: 0.0 for key, m in self.metrics.items() if m.over == "batch"}
        self.whole = [key for key, m in self.metrics.items() if m.over == "dataset"]
        self.declared_whole = bool(self.whole)  # the same on every rank: whether ranks gather outputs
        self.kept: list[tuple[Any, Any, int]] = []  # (outputs, targets, n) of each batch so far
        self.kept_bytes = 0

    def add(self, outputs: Any, targets: Any, n: int) -> None:
        """One evaluation batch of ``n`` examples: its model outputs and targets."""
        for key in self.sums:
            self.sums[key] += _value(key, self.metrics[key], outputs, targets) * n
        if not self.whole:
            return
        try:
            kept = (_kept(outputs, n), _kept(targets, n), n)
            if self.kept and _shape(kept[:2]) != _shape(self.kept[0][:2]):  # joinable: the same structure
                raise _CannotJoin(f"a batch shaped {_shape(kept[:2])} after one shaped {_shape(self.kept[0][:2])}")
        except _CannotJoin as exc:
            self._per_batch(f"their batches cannot be joined ({exc})", (outputs, targets, n))
            return
        self.kept.append(kept)
        self.kept_bytes += _nbytes(kept[0]) + _nbytes(kept[1])
        if self.kept_bytes > KEEP_LIMIT_BYTES:
            self._per_batch(f"the evaluation set's outputs pass {KEEP_LIMIT_BYTES / 1024**3:g} GiB")

    def _per_batch(self, why: str, batch: tuple[Any, Any, int] | None = None) -> None:
        """From here on, the whole-set metrics are means of their batches' values (those kept so far too)."""
        names = ", ".join(repr(k) for k in self.whole)
        if names not in _warned:
            _warned.add(names)
            logger.warning(
                "metric(s) %s are computed over the whole evaluation set (over='dataset'), but %s: they are "
                "averaged over evaluation batches instead, exact only for means over examples (accuracy, MSE); "
                "declare such a metric bstune.Metric(fn, direction=..., over='batch') to say so",
                names,
                why,
            )
        for key in self.whole:
            self.sums[key] = 0.0
            for out, tgt, k in [*self.kept, *([batch] if batch is not None else [])]:
                self.sums[key] += _value(key, self.metrics[key], out, tgt) * k
        self.whole, self.kept, self.kept_bytes = [], [], 0

    def partial(self) -> tuple[dict[str, float], Any, Any]:
        """What this rank holds: the weighted sums, and its outputs and targets joined (``None`` if none)."""
        if not self.whole or not self.kept:
            return dict(self.sums), None, None
        return dict(self.sums), _concat([o for o, _, _ in self.kept]), _concat([t for _, t, _ in self.kept])

    def values(self, n: int) -> dict[str, float]:
        """The set's value of every metric; ``n`` is the number of examples evaluated."""
        return self.combine([self.partial()], n)

    def combine(self, parts: Sequence[tuple[dict[str, float], Any, Any]], n: int) -> dict[str, float]:
        """The set's values from each rank's :meth:`partial` (one part without data parallelism).

        A metric is the whole set's where every rank kept its outputs; where one fell back to
        batches (its outputs could not be joined, or passed the limit), the ranks' sums and
        each kept rank's value over its own share, weighted by its examples, make a mean.
        """
        held = [(o, t) for _, o, t in parts if o is not None]
        joined = (_concat([o for o, _ in held]), _concat([t for _, t in held])) if held else None
        out: dict[str, float] = {}
        for key, metric in self.metrics.items():
            summed = [part[0][key] for part in parts if key in part[0]]
            if metric.over == "dataset" and joined is not None and not summed:
                out[key] = _value(key, metric, *joined)
            elif metric.over == "dataset" and held:  # some ranks fell back: a mean over their shares
                kept = sum(_value(key, metric, o, t) * _length(t) for o, t in held)
                out[key] = (sum(summed) + kept) / n
            else:
                out[key] = sum(summed) / n
        return out


def _value(name: str, metric: Metric, outputs: Any, targets: Any) -> float:
    """``metric(outputs, targets)`` as a float; what it raises names the metric (a metric that breaks only on
    more examples than the Task's check gave it said only "The size of tensor a (455) must match ...")."""
    try:
        return float(metric(outputs, targets))
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        try:
            n = f" on {_length(targets)} evaluation examples"
        except Exception:  # targets of a shape _length does not know: the metric's name says enough
            n = ""
        raise UserCodeError(
            f"metric {name!r} raised{n}: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        ) from exc


def _length(value: Any) -> int:
    """The number of examples in joined targets."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, Mapping):
        return _length(next(iter(value.values())))
    if isinstance(value, _Examples):
        return len(value)
    return _length(value[0])


def _shape(value: Any) -> Any:
    """What must agree between batches for them to join: the structure, and each tensor's shape past the
    examples and its dtype (a per-example list joins whatever its items)."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape[1:]), value.dtype)
    if isinstance(value, _Examples):
        return "examples"
    if isinstance(value, Mapping):
        return (type(value).__name__, tuple((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_shape(v) for v in value))
    return type(value).__name__


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def _rebuild(like: Any, items: Any) -> Any:
    """A container of ``like``'s type holding ``items`` (positional for a tuple, by name for a mapping)."""
    if isinstance(like, Mapping):
        try:
            return type(like)(**items)  # a dict, or a ModelOutput (which keeps its attribute access)
        except TypeError:
            return dict(items)
    if hasattr(like, "_fields"):  # a namedtuple
        return type(like)(*items)
    return type(like)(items)


def _kept(value: Any, n: int) -> Any:
    """A batch's outputs or targets as kept until the set is complete: on the CPU, floats in float32."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != n:
            raise _CannotJoin(f"a tensor of shape {tuple(value.shape)} in a batch of {n}")
        kept = value.detach().cpu()
        return kept.float() if kept.is_floating_point() else kept
    if isinstance(value, Mapping):
        return _rebuild(value, {k: _kept(v, n) for k, v in value.items()})
    if isinstance(value, tuple):
        return _rebuild(value, [_kept(v, n) for v in value])
    if isinstance(value, list):
        if len(value) == n and not all(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n for v in value):
            return _Examples(_detached(v) for v in value)  # one item per example: joined as a longer list
        return [_kept(v, n) for v in value]
    raise _CannotJoin(f"{type(value).__name__} is not a tensor, nor a tuple, list or dict of them")


def _detached(value: Any) -> Any:
    """One example's item of a per-example list, on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return _rebuild(value, {k: _detached(v) for k, v in value.items()})
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(_detached(v) for v in value)
    return value


def _concat(pieces: list[Any]) -> Any:
    """Batches joined along the examples (see the module's docstring)."""
    first = pieces[0]
    try:
        if isinstance(first, torch.Tensor):
            return torch.cat(pieces, dim=0)
        if isinstance(first, _Examples):
            return _Examples(item for p in pieces for item in p)
        if isinstance(first, Mapping):
            return _rebuild(first, {k: _concat([p[k] for p in pieces]) for k in first})
        if isinstance(first, tuple):
            return _rebuild(first, [_concat([p[i] for p in pieces]) for i in range(len(first))])
        if isinstance(first, list):
            return [_concat([p[i] for p in pieces]) for i in range(len(first))]
    except (RuntimeError, KeyError, IndexError, TypeError) as exc:
        raise _CannotJoin(f"{type(exc).__name__}: {exc}") from None
    raise _CannotJoin(f"cannot join {type(first).__name__}")
