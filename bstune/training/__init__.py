"""Training runs: configuration, the sample-counting trainer and its results."""

from bstune.training._config import SCHEDULES, TrainConfig
from bstune.training._loop import Callback, train
from bstune.training._result import Decision, EvalRecord, RunStatus, TrainResult
from bstune.training._schedule import lr_at

__all__ = [
    "SCHEDULES",
    "Callback",
    "Decision",
    "EvalRecord",
    "RunStatus",
    "TrainConfig",
    "TrainResult",
    "lr_at",
    "train",
]
