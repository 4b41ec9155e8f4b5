"""Tuning studies: the probe, the noise-scale prior, and the Optuna-backed search."""

from bstune.study._prior import Prior
from bstune.study._probe import ProbeResult, ProbeSettings, lr_range_test, run_probe
from bstune.study._pruners import PRUNERS, make_pruner
from bstune.study._ray import RaySettings, import_ray
from bstune.study._records import StudyResult, TrialRecord
from bstune.study._storage import open_storage
from bstune.study._study import Study, StudyFailedError, TrialFailure
from bstune.study._summary import format_summary

__all__ = [
    "PRUNERS",
    "Prior",
    "ProbeResult",
    "ProbeSettings",
    "RaySettings",
    "Study",
    "StudyFailedError",
    "StudyResult",
    "TrialFailure",
    "TrialRecord",
    "format_summary",
    "import_ray",
    "lr_range_test",
    "make_pruner",
    "open_storage",
    "run_probe",
]
