"""The private Optuna API bstune uses, checked against the installed Optuna and the pin."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState
from packaging.requirements import Requirement

from bstune.study._optuna_compat import rdb_of, storage_of, swap_state, trial_id_of
from bstune.study._storage import open_storage

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_optuna_is_inside_the_pinned_range_and_the_range_is_closed() -> None:
    (line,) = re.findall(r'^\s*"(optuna[<>=!~ ].*?)"', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    optuna_req = Requirement(line)
    assert optuna.__version__ in optuna_req.specifier
    assert any(s.operator == "<" for s in optuna_req.specifier), "a private API needs an upper bound"


def test_a_state_swap_on_sqlite_is_won_once(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1.0})
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    rdb = rdb_of(storage_of(study))
    assert rdb is not None
    tid = trial_id_of(waiting)
    assert swap_state(rdb, tid, TrialState.WAITING, TrialState.RUNNING, datetime_start="now")
    assert not swap_state(rdb, tid, TrialState.WAITING, TrialState.RUNNING, datetime_start="now")
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    assert trial_id_of(running) == tid and running.datetime_start is not None


def test_storages_without_sql_have_no_rdb(tmp_path: Path) -> None:
    assert rdb_of(storage_of(optuna.create_study())) is None
    journal = open_storage(f"journal:{tmp_path}/s.log")
    assert rdb_of(storage_of(optuna.create_study(storage=journal))) is None
