"""Early-stopping rules, by name; they see a trial's sample-milestone index as its step."""

from __future__ import annotations

import copy

import optuna

from bstune.errors import ConfigError

__all__ = ["PRUNERS", "HyperbandPruner", "make_pruner"]

PRUNERS = ("hyperband", "median", "successive_halving", "none")


class HyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, with a trial that runs an interrupted trial's config again in that trial's bracket.

    Hyperband deals trials out to its brackets by a hash of their number; the retry after a
    Ctrl-C has a new number, so it landed in another bracket and could be pruned at a rung the
    interrupted trial would have passed: a resumed study then differed from one never
    interrupted (a newcomer's winning config was pruned on resume). The retry's ``retry_root``
    (:func:`~bstune.study._liveness.retry_attrs`) names the trial whose bracket it takes.
    """

    def _get_bracket_id(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        root = trial.user_attrs.get("retry_root")
        if isinstance(root, int) and root != trial.number:
            trial = copy.copy(trial)
            trial.number = root
        return int(super()._get_bracket_id(study, trial))


def make_pruner(pruner: str | optuna.pruners.BasePruner, n_evals: int) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=n_evals, reduction_factor=3)
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(
        f"unknown pruner {pruner!r}; expected one of {', '.join(PRUNERS)}", source="Study", field="pruner"
    )
