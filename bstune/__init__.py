"""bstune: batch-size and learning-rate tuning shaped by the gradient noise scale.

The flat public API::

    import bstune
    task = bstune.Task(model=..., train_data=..., val_data=..., loss=...,
                       metrics={"accuracy": bstune.Metric(accuracy, direction="maximize")})
    est = bstune.measure_noise_scale(task, batch_size=64)
    run = bstune.train(task, bstune.TrainConfig(batch_size=128, lr=0.4, max_samples=200_000))
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bstune.errors import (
    BatchLargerThanDataError,
    BstuneError,
    ConfigError,
    DependencyError,
    EstimationError,
    MissingSettingError,
    TaskError,
)
from bstune.metrics import Direction, Metric

__version__ = "0.1.0"

if TYPE_CHECKING:  # what _LAZY loads, for type checkers (tests/test_exports.py keeps the two in step)
    from bstune.jobs import fetch_report, status, submit
    from bstune.noise import (
        CurvatureNoiseEstimate,
        NoiseScaleEstimate,
        exact_noise_scale,
        measure_curvature_noise_scale,
        measure_noise_scale,
    )
    from bstune.optim import OptimizerSpec, temperature
    from bstune.space import SearchSpace
    from bstune.study import Prior, ProbeSettings, Study, StudyResult
    from bstune.task import Task
    from bstune.training import (
        Decision,
        EvalRecord,
        RunStatus,
        TrainConfig,
        TrainResult,
        TrialContext,
        TrialPruned,
        train,
    )

# Whatever pulls in PyTorch, SciPy or Optuna is imported on first use, not with the package: the
# command line answers --help (and Ctrl-C) at once, and `import bstune` costs what it uses.
_LAZY = {
    "CurvatureNoiseEstimate": "bstune.noise",
    "NoiseScaleEstimate": "bstune.noise",
    "exact_noise_scale": "bstune.noise",
    "measure_curvature_noise_scale": "bstune.noise",
    "measure_noise_scale": "bstune.noise",
    "OptimizerSpec": "bstune.optim",
    "temperature": "bstune.optim",
    "Task": "bstune.task",
    "Decision": "bstune.training",
    "EvalRecord": "bstune.training",
    "RunStatus": "bstune.training",
    "TrainConfig": "bstune.training",
    "TrainResult": "bstune.training",
    "TrialContext": "bstune.training",
    "TrialPruned": "bstune.training",
    "train": "bstune.training",
    "Study": "bstune.study",
    "StudyResult": "bstune.study",
    "ProbeSettings": "bstune.study",
    "Prior": "bstune.study",
    "SearchSpace": "bstune.space",
    "submit": "bstune.jobs",
    "status": "bstune.jobs",
    "fetch_report": "bstune.jobs",
}


# the subpackages and modules ``bstune.<name>`` reaches after a plain ``import bstune`` (``bstune.noise.X``), as
# when this file imported them all
_SUBMODULES = frozenset(
    {"analysis", "critical", "data", "integrations", "jobs", "noise", "optim", "records", "report", "space", "study",
     "task", "training"}
)  # fmt: skip


def __getattr__(name: str) -> object:
    """Load a name of ``_LAZY`` from its module, or a subpackage of ``_SUBMODULES``, on first use."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"bstune.{name}")
    raise AttributeError(f"module 'bstune' has no attribute {name!r}")


__all__ = [
    "BatchLargerThanDataError",
    "BstuneError",
    "ConfigError",
    "CurvatureNoiseEstimate",
    "Decision",
    "DependencyError",
    "Direction",
    "EstimationError",
    "EvalRecord",
    "Metric",
    "MissingSettingError",
    "NoiseScaleEstimate",
    "OptimizerSpec",
    "Prior",
    "ProbeSettings",
    "RunStatus",
    "SearchSpace",
    "Study",
    "StudyResult",
    "Task",
    "TaskError",
    "TrainConfig",
    "TrainResult",
    "TrialContext",
    "TrialPruned",
    "__version__",
    "exact_noise_scale",
    "fetch_report",
    "measure_curvature_noise_scale",
    "measure_noise_scale",
    "status",
    "submit",
    "temperature",
    "train",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
