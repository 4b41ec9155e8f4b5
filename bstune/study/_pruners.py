"""Early-stopping rules, by name; they see a trial's sample-milestone index as its step."""

from __future__ import annotations

import optuna

from bstune.errors import ConfigError

__all__ = ["PRUNERS", "make_pruner"]

PRUNERS = ("hyperband", "median", "successive_halving", "none")


def make_pruner(pruner: str | optuna.pruners.BasePruner, n_evals: int) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_evals, reduction_factor=3)
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(
        f"unknown pruner {pruner!r}; expected one of {', '.join(PRUNERS)}", source="Study", field="pruner"
    )
