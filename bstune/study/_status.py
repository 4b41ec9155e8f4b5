"""The one place a training run's :class:`~bstune.training.RunStatus` becomes a trial's :class:`~bstune.records.TrialStatus`.

The training layer says how a run ended (it knows nothing of trials or pruners); a
study's records say how a trial ended. They share their names except one: a run a
callback stopped (``RunStatus.STOPPED``) is, in a study, a trial the pruner stopped
(``TrialStatus.PRUNED``).
"""

from __future__ import annotations

from bstune.records import TrialStatus
from bstune.training import RunStatus

__all__ = ["trial_status"]

_OF_RUN: dict[RunStatus, TrialStatus] = {
    RunStatus.COMPLETED: TrialStatus.COMPLETED,
    RunStatus.DIVERGED: TrialStatus.DIVERGED,
    RunStatus.STOPPED: TrialStatus.PRUNED,  # the study's pruner is the only callback that stops a trial's run
    RunStatus.OOM: TrialStatus.OOM,
}


def trial_status(run: RunStatus) -> TrialStatus:
    """The trial status of a run that ended with ``run``.

    Example:
        >>> trial_status(RunStatus.STOPPED), trial_status(RunStatus.OOM)
        (<TrialStatus.PRUNED: 'pruned'>, <TrialStatus.OOM: 'oom'>)
    """
    return _OF_RUN[run]
