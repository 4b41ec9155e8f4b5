"""The study's default Optuna samplers: multivariate TPE, seeded, on one process or on parallel trial
workers, and seeded on after a resume."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import optuna

__all__ = ["make_sampler", "parallel_sampler", "resumed_samplers", "resumed_seed"]


def make_sampler(seed: int, n_trials: int, *, constant_liar: bool = False) -> optuna.samplers.BaseSampler:
    """Multivariate TPE (it models B and eta jointly), after a few random startup trials.

    ``constant_liar``: trials running beside the one drawn count as bad, so that parallel
    workers do not draw where others are training.

    Example:
        >>> make_sampler(0, 40)._n_startup_trials
        10
    """
    return optuna.samplers.TPESampler(
        seed=seed % 2**32,  # a worker's seed + index past NumPy's range wraps
        multivariate=True,
        n_startup_trials=min(10, max(3, n_trials // 4)),
        constant_liar=constant_liar,
    )


def parallel_sampler(seed: int, n_trials: int, index: int) -> optuna.samplers.BaseSampler:
    """The default sampler of worker ``index``: the study's multivariate TPE seeded ``seed + index``,
    with the constant liar, so that workers draw different configs and not beside running ones."""
    return make_sampler(seed + index, n_trials, constant_liar=True)


def resumed_seed(seed: int, stored: int) -> int:
    """The default samplers' seed for a study whose storage already holds ``stored`` trials.

    A sampler seeded as the first run was would replay that run's random draws, so the
    trials after a resume repeated the first configs (trial 2 trained trial 0's B and η
    again). Still deterministic: the same seed and the same storage draw the same trials.

    Example:
        >>> resumed_seed(3, 0), resumed_seed(3, 2) != 3
        (3, True)
    """
    return seed if stored == 0 else (seed + 7919 * stored) % 2**32


def resumed_samplers(
    seed: int, n_trials: int, stored: int
) -> tuple[optuna.samplers.BaseSampler, Callable[[int], optuna.samplers.BaseSampler]]:
    """The default sampler, and trial worker i's, for a study that already holds ``stored`` trials."""
    at = resumed_seed(seed, stored)
    return make_sampler(at, n_trials), partial(parallel_sampler, at, n_trials)
