"""A sampler that draws a decaying share of trials from the prior and asks another for the rest.

Optuna asks a sampler for each parameter of a trial. :class:`PriorSampler` answers the
prior's two coordinates (``batch_coord``, ``lr_coord``) itself on the trials
:meth:`Prior.from_prior` picks, with :meth:`Prior.draw`, and hands everything else
(every coordinate of the other trials, the space's other parameters always) to the
sampler it wraps. The wrapped sampler sees every finished trial, drawn either way, as
an observation: TPE starts where the prior points and moves on when trials elsewhere
do better. The choice and the draw depend only on the study's seed and the trial's
number, so worker processes and a Ray driver agree on them without talking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from bstune.study._prior import Prior

__all__ = ["PRIOR_COORDS", "PriorSampler"]

PRIOR_COORDS = ("batch_coord", "lr_coord")


class PriorSampler(BaseSampler):
    """``inner`` with the prior's draws mixed in (see the module doc).

    Example:
        >>> import optuna
        >>> prior = Prior(b_noise=256.0, b_ref=512, lr_ref=0.1, alpha=1.0, batch_low=16, batch_high=256,
        ...               lr_width=3.0, lr_min=1e-4, lr_max=10.0, momentum_ref=0.0, search_low=2,
        ...               search_high=2048, lr_search_width=30.0, weight=2.0)
        >>> study = optuna.create_study(sampler=PriorSampler(optuna.samplers.RandomSampler(seed=0), prior, seed=0))
        >>> study.optimize(lambda t: t.suggest_float("batch_coord", 0, 1) + t.suggest_float("lr_coord", -3.4, 3.4), 2)
        >>> all(prior.band_coords[0] <= t.params["batch_coord"] <= prior.band_coords[1] for t in study.trials)
        True
    """

    def __init__(self, inner: BaseSampler, prior: Prior, seed: int) -> None:
        self.inner, self.prior, self.seed = inner, prior, seed

    def _draw(self, trial: FrozenTrial) -> dict[str, float] | None:
        if not self.prior.from_prior(trial.number, self.seed):
            return None
        return self.prior.draw(trial.number, self.seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        draw = self._draw(trial)
        if draw is None:
            return self.inner.sample_relative(study, trial, search_space)
        rest = {k: v for k, v in search_space.items() if k not in draw}
        mine = {k: draw[k] for k in search_space if k in draw}
        return (self.inner.sample_relative(study, trial, rest) if rest else {}) | mine

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        draw = self._draw(trial)
        if draw is not None and param_name in draw and _holds(param_distribution, draw[param_name]):
            return draw[param_name]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def _holds(distribution: BaseDistribution, value: float) -> bool:
    """Whether ``value`` is a value of ``distribution`` (a trial function that names its own coordinates
    some other way gets the wrapped sampler's)."""
    return isinstance(distribution, FloatDistribution) and distribution.low <= value <= distribution.high
