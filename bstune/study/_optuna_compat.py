"""The one place bstune reaches into Optuna's private API.

Two things Optuna's public API does not offer are needed for safe sharing of one
storage between processes:

- an atomic change of a trial's state on an SQL database (``UPDATE ... WHERE state = X``):
  Optuna's own ``set_trial_state_values`` reads, then writes, which SQLite does not make
  atomic, so two processes could both take the same queued trial or both fail the same
  abandoned one;
- the RDB storage behind Optuna's cache wrapper, and a trial's storage id.

Everything here is pinned by ``optuna>=4.0,<5.2`` in ``pyproject.toml`` (tested on 5.1);
``tests/study/test_optuna_compat.py`` checks the pin against the installed Optuna and
each private name this module uses, so an Optuna release that moves them fails there
first, not deep inside a study.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState

__all__ = ["rdb_of", "storage_of", "swap_state", "trial_id_of"]


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna wraps it in a private ``_CachedStorage``), else ``None``."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study writes to (a private attribute of ``optuna.Study``)."""
    storage: BaseStorage = study._storage
    return storage


def trial_id_of(trial: Trial | FrozenTrial) -> int:
    """A trial's id in its storage (unique across studies, unlike ``trial.number``)."""
    return int(trial._trial_id)


def swap_state(rdb: RDBStorage, trial_id: int, old: TrialState, new: TrialState, **stamp: Any) -> bool:
    """Set trial ``trial_id`` from state ``old`` to ``new`` in one SQL statement; True if this call did it.

    ``stamp`` names extra columns of Optuna's trial table to set in the same statement
    (``datetime_start``, ``datetime_complete``); ``now`` for a value means the current time.
    Exactly one of several processes racing on the same trial gets True.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    values = {k: datetime.datetime.now() if v == "now" else v for k, v in stamp.items()}
    statement = (
        sqlalchemy.update(models.TrialModel)
        .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == old)
        .values(state=new, **values)
    )
    with rdb.engine.begin() as connection:
        return bool(connection.execute(statement).rowcount == 1)
