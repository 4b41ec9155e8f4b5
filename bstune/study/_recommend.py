"""What a study recommends: the trial it picks, and the configuration it hands over.

The pick is the best completed trial by its own (single-seed) value, unless re-scoring
ran: then it is the re-scored trial with the best mean over seeds (see
:mod:`bstune.study._rescore`), since one seed's luck is what a single value rewards.
A study none of whose trials completed has nothing to recommend and says why.
"""

from __future__ import annotations

from typing import Any

from bstune.errors import BstuneError
from bstune.metrics import Direction
from bstune.optim import OptimizerSpec
from bstune.study._records import Rescored, TrialRecord, TrialStatus
from bstune.study._rescore import choose

__all__ = ["StudyFailedError", "handed_over", "handed_over_to_function", "recommend"]


class StudyFailedError(BstuneError):
    """Every trial of a study failed: there is no configuration to recommend.

    ``traceback`` is the first failed trial's, when its code raised.
    """

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


def recommend(
    trials: list[TrialRecord],
    rescored: list[Rescored],
    direction: Direction | str,
    study_name: str,
) -> tuple[TrialRecord, float]:
    """The recommended trial and the value it is recommended on (its mean over seeds, if re-scored).

    Example:
        >>> t = [TrialRecord(number=i, status="completed", batch_size=8, lr=0.1, temperature=0.0125, value=v,
        ...                  samples=100, params={}, config={}) for i, v in enumerate([0.3, 0.2])]
        >>> best, value = recommend(t, [], "minimize", "demo")
        >>> best.number, value
        (1, 0.2)
    """
    complete = [t for t in trials if t.status == TrialStatus.COMPLETED and t.value is not None]
    if not complete:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        first = next((t for t in trials if t.message and t.status != TrialStatus.PRUNED), None)
        raise StudyFailedError(
            f"none of the {len(trials)} trials of study {study_name!r} completed "
            f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
            + (f"; the first: trial {first.number}: {first.message}" if first else "")
            + "; each trial's message and traceback are kept in the storage",
            traceback=first.traceback if first else None,
        )
    sign = Direction(direction).sign
    best = min(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    chosen = choose(rescored, direction)
    if chosen is not None:  # the best mean over seeds, not the best single seed
        return next(t for t in complete if t.number == chosen.trial), float(chosen.mean)  # type: ignore[arg-type]
    return best, float(best.value)  # type: ignore[arg-type]


def handed_over(best: TrialRecord, task_optimizer: OptimizerSpec, space_optimizer: OptimizerSpec) -> dict[str, Any]:
    """The recommended trial's configuration as a user trains with it: every setting, none left implicit.

    Settings only: nothing derived from them (the effective temperature η/(B(1−m)) is
    the trial's :attr:`TrialRecord.temperature`), so the whole mapping can be copied
    into a training config.
    """
    config = dict(best.config)
    return {
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "momentum": config["momentum"] if config["momentum"] is not None else task_optimizer.momentum,
        "weight_decay": config["weight_decay"] if config["weight_decay"] is not None else task_optimizer.weight_decay,
        "warmup_samples": config["warmup_samples"],
        "schedule": config["schedule"],
        "optimizer": space_optimizer.family,
        **({"betas": list(space_optimizer.betas)} if space_optimizer.family != "sgd" else {}),
        **{f"model.{k}": v for k, v in config["model_kwargs"].items()},
    }


def handed_over_to_function(best: TrialRecord, space_optimizer: OptimizerSpec | None = None) -> dict[str, Any]:
    """The recommended trial's configuration for a training function: what its ``ctx.config`` held
    (the space's optimizer settings, fixed or searched: ``momentum`` for SGD, ``betas`` for the Adam
    family, ``weight_decay``; the space's parameters by name, the prior's coordinates left out; batch
    size and learning rate).

    Example:
        >>> t = TrialRecord(number=0, status="completed", batch_size=64, lr=0.2, temperature=0.03, value=0.1,
        ...                 samples=100, params={"batch_coord": 0.4, "lr_coord": 0.1, "model.width": 32}, config={})
        >>> handed_over_to_function(t, OptimizerSpec(family="sgd", momentum=0.9))
        {'momentum': 0.9, 'weight_decay': 0.0, 'model.width': 32, 'batch_size': 64, 'lr': 0.2}
    """
    params = {k: v for k, v in best.params.items() if k not in ("batch_coord", "lr_coord", "batch_size", "lr")}
    spec = space_optimizer or OptimizerSpec()
    # as TrialContext._optimizer_settings names them (a searched value is among the params, and wins)
    family = {"momentum": spec.momentum} if spec.family == "sgd" else {"betas": list(spec.betas)}
    return {**family, "weight_decay": spec.weight_decay, **params, "batch_size": best.batch_size, "lr": best.lr}
