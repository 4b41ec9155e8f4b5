"""Tuning studies: the probe, the noise-scale prior, and the search on a backend (Optuna or Ray)."""

from bstune.records import ProbeResult
from bstune.study._backend import FunctionJob, Resumed, StudySpec, TaskJob, TrialBackend, TrialJob
from bstune.study._critical import measure_study_critical_batch
from bstune.study._liveness import count_finished, describe_states, stored_progress
from bstune.study._optuna_backend import OptunaBackend, TrialFailure
from bstune.study._prior import Prior
from bstune.study._probe import probe_space, run_probe
from bstune.study._probe_function import probe_function, probe_params
from bstune.study._probe_plan import ProbeSettings
from bstune.study._pruners import PRUNERS, make_pruner
from bstune.study._range_test import lr_range_test
from bstune.study._ray import RayBackend, RaySettings, import_ray, unreachable, use_auth_token
from bstune.study._records import StudyResult, TrialRecord, TrialStatus
from bstune.study._samplers import make_sampler
from bstune.study._settings import StudySettings
from bstune.study._storage import open_storage, storage_file
from bstune.study._study import Study, StudyFailedError
from bstune.study._summary import format_summary
from bstune.study._trial import build_model
from bstune.study._trial_plan import split_params
from bstune.study._trial_taking import lock_files
from bstune.study._workers import WorkerCrashError, worker_devices

__all__ = [
    "PRUNERS",
    "FunctionJob",
    "OptunaBackend",
    "Prior",
    "ProbeResult",
    "ProbeSettings",
    "RayBackend",
    "RaySettings",
    "Resumed",
    "Study",
    "StudyFailedError",
    "StudyResult",
    "StudySettings",
    "StudySpec",
    "TaskJob",
    "TrialBackend",
    "TrialFailure",
    "TrialJob",
    "TrialRecord",
    "TrialStatus",
    "WorkerCrashError",
    "build_model",
    "count_finished",
    "describe_states",
    "format_summary",
    "import_ray",
    "lock_files",
    "lr_range_test",
    "make_pruner",
    "make_sampler",
    "measure_study_critical_batch",
    "open_storage",
    "probe_function",
    "probe_params",
    "probe_space",
    "run_probe",
    "split_params",
    "storage_file",
    "stored_progress",
    "unreachable",
    "use_auth_token",
    "worker_devices",
]
