"""A task's metrics over one evaluation set, fed batch by batch.

An evaluation runs the model over a set in batches of ``eval_batch_size``. A metric
declared ``over="batch"`` (a mean over examples: accuracy, MSE) is the size-weighted
mean of its per-batch values and keeps nothing. A metric ``over="dataset"`` (the
default: R², F1, AUC, RMSE, ...) is called once on every batch's outputs and targets
concatenated, which are kept on the CPU in float32 until then: averaging such a metric
over batches is wrong, badly so where the set is ordered (R² of each chunk of a set sorted
by its target is far below the set's).

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

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bstune.errors import ConfigError
from bstune.metrics import Metric

__all__ = ["MetricSet"]


class MetricSet:
    """Accumulates ``metrics`` over one evaluation set's batches; :meth:`values` gives the set's values."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        self.metrics = dict(metrics)
        self.sums = {key: 0.0 for key, m in self.metrics.items() if m.over == "batch"}
        self.whole = [key for key, m in self.metrics.items() if m.over == "dataset"]
        self.outputs: list[Any] = []
        self.targets: list[Any] = []

    def add(self, outputs: Any, targets: Any, n: int) -> None:
        """One evaluation batch of ``n`` examples: its model outputs and targets."""
        for key in self.sums:
            self.sums[key] += float(self.metrics[key](outputs, targets)) * n
        if self.whole:
            self.outputs.append(_kept(outputs))
            self.targets.append(_kept(targets))

    def partial(self) -> tuple[dict[str, float], Any, Any]:
        """What this rank holds: the weighted sums, and its outputs and targets concatenated (``None`` if none)."""
        if not self.whole or not self.outputs:
            return dict(self.sums), None, None
        return dict(self.sums), self._cat(self.outputs, "outputs"), self._cat(self.targets, "targets")

    def values(self, n: int) -> dict[str, float]:
        """The set's value of every metric; ``n`` is the number of examples evaluated."""
        return self.combine([self.partial()], n)

    def combine(self, parts: Sequence[tuple[dict[str, float], Any, Any]], n: int) -> dict[str, float]:
        """The set's values from each rank's :meth:`partial` (one part without data parallelism)."""
        out: dict[str, float] = {}
        if self.whole:
            held = [(o, t) for _, o, t in parts if o is not None]
            outputs = self._cat([o for o, _ in held], "outputs")
            targets = self._cat([t for _, t in held], "targets")
        for key, metric in self.metrics.items():
            if metric.over == "batch":
                out[key] = sum(part[0][key] for part in parts) / n
            else:
                out[key] = float(metric(outputs, targets))
        return out

    def _cat(self, pieces: list[Any], what: str) -> Any:
        try:
            return _concat(pieces)
        except (RuntimeError, TypeError, ValueError) as exc:
            names = ", ".join(repr(k) for k in self.whole)
            raise ConfigError(
                f"metric(s) {names} are computed over the whole evaluation set (over='dataset', the default), "
                f"which concatenates the evaluation batches' {what} along dimension 0, and they do not concatenate "
                f"({type(exc).__name__}: {exc}); declare a metric that is a mean over examples with "
                "bstune.Metric(fn, direction=..., over='batch')",
                source="Task",
                field="metrics",
            ) from None


def _kept(value: Any) -> Any:
    """A batch's outputs or targets as kept until the set is complete: on the CPU, floats in float32."""
    if isinstance(value, torch.Tensor):
        kept = value.detach().cpu()
        return kept.float() if kept.is_floating_point() else kept
    if isinstance(value, Mapping):
        return {k: _kept(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_kept(v) for v in value)
    return value


def _concat(pieces: list[Any]) -> Any:
    """Batches joined along dimension 0: tensors, or tuples, lists and dicts of them."""
    first = pieces[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(pieces, dim=0)
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in pieces]) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(_concat([p[i] for p in pieces]) for i in range(len(first)))
    raise TypeError(f"cannot concatenate {type(first).__name__}")
