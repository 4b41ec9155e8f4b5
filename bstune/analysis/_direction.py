"""Whether a study's objective moved as its declared direction says training should move it.

A task's metric declares its direction (``bstune.Metric``), and a contradicting study
``direction`` is refused. A training function reports plain numbers, so its direction is
the one the study is given, and a wrong one (``--direction minimize`` for an R²) goes
unnoticed: the study ranks the worst trials first and recommends one. What it does leave is
a sign in the trials' curves: by the declared direction, the objective is best at the first
evaluation and worse at the end, in trial after trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bstune.analysis._trials import Direction, TrialLike, field_of, finite
from bstune.metrics import infer_direction

__all__ = ["direction_doubt"]

MIN_TRIALS = 3  # completed trials with 3 or more evaluations before any doubt is raised


def direction_doubt(trials: Iterable[TrialLike], objective: str, direction: Direction | str) -> str | None:
    """Why ``direction`` looks wrong for ``objective``, or None.

    Only for an objective whose name does not settle its direction (``val_score``, ``score``;
    not ``val_loss``, whose best at the first evaluation is a run that overfits). Counts the completed trials (with 3 or more evaluations of the objective) whose first
    evaluation was their best by ``direction`` and whose last was worse than it. Where those
    are at least two thirds of them, and at least 3, the direction is likely the wrong way
    round, or every trial made the objective worse as it trained; either way the study's
    ranking is not to be trusted.

    Example:
        >>> rising = [{"status": "completed", "history": [{"val_score": v} for v in (0.2, 0.6, 0.9)]}] * 3
        >>> direction_doubt(rising, "val_score", "minimize")[:65]
        'val_score was best at the first evaluation and worse at the end, '
        >>> direction_doubt(rising, "val_score", "maximize") is None
        True
    """
    # a loss, an accuracy: the name settles it, overfitting does not (whole words: lossless_ratio says nothing)
    if infer_direction(objective, whole_words=True) is not None:
        return None
    direction = Direction(direction)
    curves = []
    for trial in trials:
        if str(field_of(trial, "status")) != "completed":
            continue
        values = [float(v) for row in field_of(trial, "history") or [] if finite(v := row.get(objective))]
        if len(values) >= 3:
            curves.append(values)
    n = len(curves)
    worse = sum(1 for v in curves if direction.best(v) == v[0] and direction.better(v[0], v[-1]))
    if n < MIN_TRIALS or worse < max(MIN_TRIALS, math.ceil(2 * n / 3)):
        return None
    other = Direction.MAXIMIZE if direction is Direction.MINIMIZE else Direction.MINIMIZE
    return (
        f"{objective} was best at the first evaluation and worse at the end, by direction={direction.value}, in "
        f"{worse} of {n} completed trials: if {'higher' if direction is Direction.MINIMIZE else 'lower'} is better, "
        f"the study's direction is the wrong way round (direction='{other.value}', the CLI's --direction "
        f"{other.value}), and it recommends the worst trials; otherwise training made it worse in most trials"
    )
