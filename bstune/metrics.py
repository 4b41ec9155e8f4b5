"""Which way is better: the :class:`Direction` of a metric, and the :class:`Metric` a Task declares.

Every number a study records (``train_loss``, ``val_loss``, ``train_<metric>``,
``val_<metric>``) is either minimized (losses, errors) or maximized (accuracies).
Everything that ranks trials, picks a best value, chooses a target or asks whether a
target was reached reads that from the metric's :class:`Direction`, never from a
guess at the run, so a report on accuracy and a report on loss follow the same code.

A Task declares a metric's direction with ``bstune.Metric(fn, direction=...)``. A
plain callable is accepted only where its name leaves no doubt (:func:`infer_direction`);
the loss is always minimized.

This module is the low layer: it imports neither Optuna nor the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from bstune.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["MAXIMIZE_WORDS", "MINIMIZE_WORDS", "Direction", "Metric", "MetricFn", "infer_direction"]

MetricFn = Callable[[Any, Any], "torch.Tensor | float"]
"""``metric(outputs, targets) -> number``: the metric of those outputs (see :class:`Metric` ``over``)."""

Over = Literal["dataset", "batch"]


class Direction(str, Enum):
    """Whether lower (``"minimize"``) or higher (``"maximize"``) values of a metric are better.

    A ``str`` enum: a member equals, and is stored in JSON as, its plain string.

    Example:
        >>> acc = Direction("maximize")
        >>> acc.best([0.7, 0.9, 0.8]), acc.reached(0.9, target=0.85), acc.better(0.8, 0.7)
        (0.9, True, True)
        >>> Direction.MINIMIZE.reached(0.9, target=0.85), Direction.MINIMIZE.sign
        (False, 1.0)
    """

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: Direction | str, *, source: str, field: str = "direction") -> Direction:
        """``value`` as a Direction; a :class:`~bstune.errors.ConfigError` naming ``source`` and ``field`` if it is neither."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"must be 'minimize' or 'maximize', got {value!r}", source=source, field=field) from None

    @property
    def sign(self) -> float:
        """``+1`` (minimize) or ``-1`` (maximize): ``sign * value`` is smaller the better the value."""
        return 1.0 if self is Direction.MINIMIZE else -1.0

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return self.sign * a < self.sign * b

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values`` (the smallest when minimizing, the largest when maximizing)."""
        return min(values, key=lambda v: self.sign * v)

    def reached(self, value: float, target: float) -> bool:
        """Whether ``value`` is at ``target`` or beyond it on the good side."""
        return self.sign * value <= self.sign * target

    def far_worse(self, value: float, than: float, by: float = 0.5) -> bool:
        """Whether ``value`` is worse than ``than`` by more than the fraction ``by`` of ``|than|``: a run's last
        evaluation far from its best (the rate that found the best went on past it).

        Example:
            >>> Direction("minimize").far_worse(0.33, than=0.038), Direction("maximize").far_worse(0.90, than=0.95)
            (True, False)
        """
        return self.sign * (value - than) > by * abs(than)


# The names whose direction needs no declaration (documented in the README). A name is
# read as maximized when one of its words (split at anything not a letter or digit) is
# in MAXIMIZE_WORDS; as minimized when it contains one of MINIMIZE_WORDS anywhere; a
# name that matches both or neither must be declared with Metric(fn, direction=...).
# A direction the user gives is refused only against whole words (infer_direction's
# whole_words): "loss" inside lossless_ratio is a guess, and gives way.
MAXIMIZE_WORDS = frozenset({"accuracy", "acc", "f1", "auc", "precision", "recall", "top1", "top5", "r2"})
MINIMIZE_WORDS = ("loss", "error", "mse", "mae", "rmse", "nll", "perplexity")
# short names matched as whole words only (a substring "ppl" or "cer" could sit inside another word)
MINIMIZE_TOKENS = frozenset({"ppl", "bpc", "bpb", "bpd", "wer", "cer", "err"})
# words that make a measure of something else (its drop, its spread, one minus it): with them the name's
# direction is not its measure's (accuracy_drop is minimized, loss_drop maximized), so it must be declared
QUALIFIER_WORDS = frozenset(
    {
        "drop", "gap", "std", "stddev", "var", "variance", "delta", "diff", "minus", "regret", "decrease", "gain",
        "increase", "reduction", "improvement", "change",
    }
)  # fmt: skip
_SPLIT = r"((train|val|valid|validation|test|eval|dev)[^a-z0-9]?)?"  # a split's prefix: val_, test/
# a negated or inverted measure (neg_mse, scikit-learn's neg_mean_squared_error, inv_ppl): its direction is its
# measure's turned round, so it must be declared; only as a prefix (f1_neg, recall_negative: the negative class's)
# and not a negative log-likelihood (a loss)
_NEGATED = re.compile(
    _SPLIT + r"(neg|negative|negated|inv|inverse)(?![a-z0-9])(?![^a-z0-9]*(log[^a-z0-9]*likelihood|ll)(?![a-z0-9]))"
)
# one minus a maximized measure (1-acc, 1 - val_f1, val_1-acc): an error, so it must be declared; "1-nn_acc" (a
# 1-nearest-neighbour accuracy), "1-shot_acc" and "top-1-acc" are not one
_ONE_MINUS = re.compile(
    r"(?<![a-z0-9])(?<!top-)(?<!top_)1\s*-\s*" + _SPLIT + "(" + "|".join(sorted(MAXIMIZE_WORDS)) + r")(?![a-z0-9])"
)


def infer_direction(name: str, *, whole_words: bool = False) -> Direction | None:
    """The direction a metric's name leaves no doubt about, else ``None``.

    With ``whole_words``, a minimized word counts only as a whole word (``val_loss``, not
    ``lossless_ratio`` or ``terror_count``): the reading strict enough to refuse a direction
    the user gives against it. The loose reading only fills in a direction nobody gave.

    Example:
        >>> infer_direction("val_accuracy"), infer_direction("train_loss"), infer_direction("top1_error")
        (<Direction.MAXIMIZE: 'maximize'>, <Direction.MINIMIZE: 'minimize'>, None)
        >>> infer_direction("score") is None
        True
        >>> infer_direction("val_ppl"), infer_direction("test_wer")  # perplexity, word error rate
        (<Direction.MINIMIZE: 'minimize'>, <Direction.MINIMIZE: 'minimize'>)
        >>> [infer_direction(n) for n in ("top1_err", "accuracy_drop", "1-val_acc", "neg_mse")]  # measures of a measure
        [None, None, None, None]
        >>> infer_direction("lossless_ratio"), infer_direction("lossless_ratio", whole_words=True)
        (<Direction.MINIMIZE: 'minimize'>, None)
    """
    lowered = name.lower()
    words = re.split(r"[^a-z0-9]+", lowered)
    if any(word in QUALIFIER_WORDS for word in words) or _ONE_MINUS.search(lowered) or _NEGATED.match(lowered):
        return None
    up = any(word in MAXIMIZE_WORDS for word in words)
    loose = not whole_words and any(word in lowered for word in MINIMIZE_WORDS)
    down = loose or any(word in MINIMIZE_TOKENS or word in MINIMIZE_WORDS for word in words)
    if up == down:  # both (e.g. top1_error) or neither (e.g. score): ambiguous
        return None
    return Direction.MAXIMIZE if up else Direction.MINIMIZE


@dataclass(frozen=True, init=False)
class Metric:
    """A metric of a :class:`bstune.Task` and the direction in which it is better.

    Called like its function: ``metric(outputs, targets)``.

    Args:
        fn: ``fn(outputs, targets) -> number``.
        direction: ``"maximize"`` (accuracy, F1, R², ...) or ``"minimize"`` (error rates, RMSE, ...).
        over: how an evaluation set's value is computed. ``"dataset"`` (the default): ``fn`` is
            called once, on the outputs and targets of every evaluation batch concatenated
            (along dimension 0; kept on the CPU in float32 meanwhile), so any metric is exact:
            R², F1, AUC, precision, RMSE, perplexity. ``"batch"``: ``fn`` is called on each
            evaluation batch and the set's value is the mean weighted by batch size, exact only
            for a mean over examples (accuracy, MSE) but keeping no outputs: for models whose
            outputs over a whole evaluation set would not fit in memory.

    Example:
        >>> m = Metric(lambda out, y: 0.5, direction="maximize")
        >>> m.direction, m.over, m(None, None)
        (<Direction.MAXIMIZE: 'maximize'>, 'dataset', 0.5)
    """

    fn: MetricFn
    direction: Direction
    over: Over = "dataset"  # a Metric pickled before it had one reads as the default

    def __init__(self, fn: MetricFn, direction: Direction | str, *, over: Over = "dataset") -> None:
        if not callable(fn):
            raise ConfigError(
                f"must be callable as fn(outputs, targets), got {type(fn).__name__}", source="Metric", field="fn"
            )
        if over not in ("dataset", "batch"):
            raise ConfigError(f"must be 'dataset' or 'batch', got {over!r}", source="Metric", field="over")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "direction", Direction.coerce(direction, source="Metric"))
        object.__setattr__(self, "over", over)

    def __call__(self, outputs: Any, targets: Any) -> torch.Tensor | float:
        return self.fn(outputs, targets)
