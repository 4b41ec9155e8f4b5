"""Tuning studies: the probe, the noise-scale prior, and the Optuna-backed search."""

from bstune.study._prior import Prior
from bstune.study._probe import ProbeResult, ProbeSettings, lr_range_test, run_probe
from bstune.study._records import StudyResult, TrialRecord
from bstune.study._storage import open_storage
from bstune.study._study import PRUNERS, Study, StudyFailedError, TrialFailure

__all__ = [
    "PRUNERS",
    "Prior",
    "ProbeResult",
    "ProbeSettings",
    "Study",
    "StudyFailedError",
    "StudyResult",
    "TrialFailure",
    "TrialRecord",
    "lr_range_test",
    "open_storage",
    "run_probe",
]
