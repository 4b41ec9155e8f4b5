"""A study's direct measurement of B_crit: the recommended config, branched (``critical_batch="measure"``).

The study has chosen a config; :func:`bstune.critical.measure_critical_batch` takes it as
the reference: the best trial's full training configuration and model arguments, on the
study's device, with the batch sizes the study could reach as the ladder's range and the
space's LR rule exponent for Adam-family optimizers. A kept measurement (a resumed study,
or ``bstune crit`` run twice) is reused when it was made from the same config.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from bstune.critical import BranchSettings, CriticalBatchMeasurement, measure_critical_batch
from bstune.errors import ConfigError
from bstune.records import TrialRecord
from bstune.task import Task
from bstune.training import TrainConfig

__all__ = ["measure_study_critical_batch", "reference_config"]

logger = logging.getLogger(__name__)


def reference_config(trials: Sequence[TrialRecord], best_trial: int | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The best trial's training configuration and model arguments, as it trained.

    Raises:
        ConfigError: no best trial, or its record holds no configuration (an older result).
    """
    best = next((t for t in trials if t.number == best_trial), None)
    if best is None or not best.config:
        raise ConfigError(
            f"the study recorded no configuration for its best trial ({best_trial}): nothing to measure from",
            source="critical_batch",
        )
    data = dict(best.config)
    model_kwargs = dict(data.pop("model_kwargs", {}) or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in data.items() if k in known}, source="critical_batch"), model_kwargs


def measure_study_critical_batch(
    task: Task,
    trials: Sequence[TrialRecord],
    best_trial: int | None,
    *,
    batch_min: int,
    batch_max: int,
    device: str,
    adam_alpha: float,
    kept: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure B_crit from the study's best trial (or return ``kept`` when it was measured from the same config).

    Returns :meth:`CriticalBatchMeasurement.to_dict`, with ``"trial"`` (the reference trial's number).
    """
    config, model_kwargs = reference_config(trials, best_trial)
    config = dataclasses.replace(config, device=device)
    if kept is not None and kept.get("trial") == best_trial:
        logger.info("the critical batch size was measured from trial %s before: kept", best_trial)
        return kept
    logger.info(
        "measuring the critical batch size directly from trial %s (batch %d, lr %.3g)",
        best_trial,
        config.batch_size,
        config.lr,
    )
    measured: CriticalBatchMeasurement = measure_critical_batch(
        task,
        config,
        BranchSettings(adam_alpha=adam_alpha),
        batch_min=batch_min,
        batch_max=batch_max,
        model_kwargs=model_kwargs,
        progress=progress,
    )
    return measured.to_dict() | {"trial": best_trial}
