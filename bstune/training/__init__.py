"""Training runs: configuration, the sample-counting trainer and its results."""

from bstune.training._config import SCHEDULES, TrainConfig
from bstune.training._context import TrialContext, TrialFunction, TrialPruned
from bstune.training._launch import run_data_parallel, train_data_parallel
from bstune.training._loop import Callback, train
from bstune.training._read_config import SCHEDULE_SETTINGS
from bstune.training._result import Decision, EvalRecord, RunStatus, TrainResult, trained_before
from bstune.training._run_function import run_function
from bstune.training._schedule import lr_at
from bstune.training._trial_scheduler import LRRamp

__all__ = [
    "SCHEDULES",
    "SCHEDULE_SETTINGS",
    "Callback",
    "Decision",
    "EvalRecord",
    "LRRamp",
    "RunStatus",
    "TrainConfig",
    "TrainResult",
    "TrialContext",
    "TrialFunction",
    "TrialPruned",
    "lr_at",
    "run_data_parallel",
    "run_function",
    "train",
    "train_data_parallel",
    "trained_before",
]
