"""The names bstune writes into the stores it keeps, in one place.

Their values are part of the stored format: a study written by an earlier bstune
resumes (and its result reads) only while they stay as they are, so change none of
them without a migration. Everything else a store holds is named after the field it
keeps: a trial's Optuna user attributes and the metrics a Ray trial reports are the
fields of :meth:`TrialPlan.attrs <bstune.study._trial_plan.TrialPlan.attrs>` and
:meth:`TrialOutcome.attrs <bstune.study._trial.TrialOutcome.attrs>` (those of the
trial's :class:`~bstune.records.TrialRecord`).

This module imports nothing: every layer may read it.
"""

from __future__ import annotations

__all__ = [
    "CRITICAL_ATTR",
    "CRITICAL_FILE",
    "DESCRIPTION_ATTR",
    "DIRECTIONS_ATTR",
    "FROM_PROBE_ATTR",
    "HEARTBEAT_KEY",
    "JOB_SCRIPT_KEY",
    "JOB_SPACE_KEY",
    "OUTCOME_FILE",
    "OWNER_KEY",
    "PLAN_KEY",
    "PROBE_ATTR",
    "RESCORED_ATTR",
    "RESCORED_FILE",
    "SCRIPT_MODULE_PREFIX",
    "SETTINGS_ATTR",
    "STATE_FILE",
    "TRIAL_NUMBER_KEY",
]

# -- an Optuna study's user attributes ---------------------------------------------------
SETTINGS_ATTR = "bstune_settings"  # the settings a resumed study must match (study/_resume.py)
PROBE_ATTR = "bstune_probe"  # what the probe measured: a resumed study does not probe again
FROM_PROBE_ATTR = "from_probe"  # a trial's user attribute: the probe's trial-long run, recorded as this trial
RESCORED_ATTR = "bstune_rescored"  # what re-scoring found: a resumed study does not re-score again
CRITICAL_ATTR = "bstune_critical"  # the directly measured critical batch size: a resumed study keeps it
DIRECTIONS_ATTR = "bstune_directions"  # whether each recorded quantity is minimized or maximized
DESCRIPTION_ATTR = "description"  # what the params mean (optuna-dashboard shows it under this name)

# -- an Optuna trial's system attributes: who runs it (study/_liveness.py) ----------------
OWNER_KEY = "bstune:owner"  # host, process id and start time of the process running the trial
HEARTBEAT_KEY = "bstune:heartbeat"  # wall-clock time, renewed while the trial runs

# -- a Ray trial's config, and the files in a Ray study's experiment folder ---------------
PLAN_KEY = "bstune_plan"  # the trial's TrialPlan, as a dict
TRIAL_NUMBER_KEY = "bstune_trial_number"  # the trial's number in the study
STATE_FILE = "bstune_study.json"  # the study's settings and probe: what a resumed Ray study reads
RESCORED_FILE = "bstune_rescored.json"  # what re-scoring found
CRITICAL_FILE = "bstune_critical.json"  # the directly measured critical batch size
OUTCOME_FILE = "outcome.json"  # in a finished trial's checkpoint: its outcome, replayed on restore

# -- a submitted Ray job's metadata (bstune.jobs) -----------------------------------------
JOB_SCRIPT_KEY = "bstune_script"  # the script's file name
JOB_SPACE_KEY = "bstune_space"  # the search space's file name

# -- the module a user's script is loaded as (bstune._loading; Ray ships it by value) -----
SCRIPT_MODULE_PREFIX = "bstune_user_"
