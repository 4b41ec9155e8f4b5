"""Reading trials as plain data: a :class:`~bstune.records.TrialRecord` or its ``to_dict()``.

The analysis never imports the study layer (and so Optuna), not even for a type: a
trial is anything with the record's fields (:class:`TrialFields`), as attributes or as
mapping keys. A history entry
is a flat dict (``milestone, samples, step, lr, train_loss, val_loss, gap`` and
``train_<metric>``/``val_<metric>``); non-finite values were stored as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias

from bstune._validate import finite
from bstune.metrics import Direction

__all__ = [
    "Direction",
    "History",
    "TrialFields",
    "TrialLike",
    "batch_size_of",
    "field_of",
    "finite",
    "metric_values",
]


class TrialFields(Protocol):
    """What the analysis reads of a trial (``bstune.records.TrialRecord`` has these and more)."""

    @property
    def number(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def lr(self) -> float | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def history(self) -> list[dict[str, Any]]: ...


TrialLike: TypeAlias = "TrialFields | Mapping[str, Any]"
History: TypeAlias = Sequence[Mapping[str, Any]]


def field_of(trial: TrialLike, name: str) -> Any:
    """``trial.name`` or ``trial[name]``; ``None`` when absent."""
    if isinstance(trial, Mapping):
        return trial.get(name)
    return getattr(trial, name, None)


def batch_size_of(trial: TrialLike) -> int | None:
    """The trial's batch size as a positive int (``64.0`` from JSON counts), else ``None``."""
    b = finite(field_of(trial, "batch_size"))
    return int(b) if b is not None and b > 0 and b.is_integer() else None


def metric_values(history: History, metric: str, batch_size: int) -> list[tuple[float, float]]:
    """``(samples, value)`` of every entry with a finite ``metric``, ordered by samples.

    ``samples`` falls back to ``step * batch_size`` for entries that lack it.
    """
    out: list[tuple[float, float]] = []
    for rec in history:
        value = finite(rec.get(metric))
        if value is None:
            continue
        samples = finite(rec.get("samples"))
        if samples is None:
            step = finite(rec.get("step"))
            if step is None:
                continue
            samples = step * batch_size
        out.append((samples, value))
    out.sort(key=lambda p: p[0])
    return out
