"""The private Optuna API bstune uses, checked against the installed Optuna and the pin."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from packaging.requirements import Requirement

import bstune
from bstune.study._optuna_compat import rdb_of, storage_of, swap_state, trial_id_of
from bstune.study._storage import open_storage
from tests.study.test_function_study import SPACE
from tests.training.test_context import task

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


def test_ctrl_c_inside_optunas_bookkeeping_interrupts_the_study_and_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt while Optuna tells the storage a trial's state: Optuna 5.1's ``finally`` then raises
    ``UnboundLocalError`` in its place. The study must end interrupted, as at any other moment, and resume."""
    told = optuna.study._optimize._tell_with_warning
    calls = 0

    def tell_then_interrupt(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second trial's telling
            raise KeyboardInterrupt
        return told(**kwargs)

    bare = optuna.create_study()
    monkeypatch.setattr(optuna.study._optimize, "_tell_with_warning", tell_then_interrupt)
    with pytest.raises(BaseException) as raw:  # what Optuna alone makes of it (a KeyboardInterrupt, once fixed)
        bare.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert isinstance(raw.value, (UnboundLocalError, KeyboardInterrupt)) or raw.type is KeyboardInterrupt

    calls = 0
    storage = f"sqlite:///{tmp_path}/s.db"
    args: dict[str, Any] = dict(
        n_trials=3, budget_samples=2048, mode="baseline", progress=False, rescore_top=0, storage=storage
    )
    with pytest.raises(KeyboardInterrupt):
        bstune.Study(task(), SPACE, study_name="ctrl-c", **args).run()
    # the trial whose telling was cut off is stored as its objective ended, not left running
    cut = optuna.load_study(study_name="ctrl-c", storage=storage).get_trials(deepcopy=False)[1]
    assert cut.state in (TrialState.COMPLETE, TrialState.PRUNED) and cut.value is not None
    assert cut.user_attrs["status"] in ("completed", "pruned") and cut.value == pytest.approx(
        cut.user_attrs["best_value"]
    )
    monkeypatch.setattr(optuna.study._optimize, "_tell_with_warning", told)
    result = bstune.Study(task(), SPACE, study_name="ctrl-c", **args).run()  # the same study again: resumed
    finished = [t for t in result.trials if str(t.status) in ("completed", "pruned")]
    assert len(finished) >= 3  # the trial whose telling was cut off kept its outcome; the study ran on to 3
    assert len({(t.batch_size, t.lr) for t in result.trials}) == len(result.trials)  # no draw of the first run again
