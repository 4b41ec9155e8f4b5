"""What optuna-dashboard shows of a study: B and eta next to the prior's coordinates, the objective's name."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

import bstune
from bstune.study import ProbeSettings
from tests.study.study_runner import SPACE

QUICK_PROBE = ProbeSettings(
    lr_steps=12, train_samples=1600, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64)
)


def test_the_dashboard_sees_batch_size_lr_and_the_objective_by_name(blob_task: bstune.Task, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = bstune.Study(
        blob_task,
        SPACE,
        n_trials=3,
        budget_samples=2000,
        n_evals=2,
        storage=storage,
        probe=QUICK_PROBE,
        progress=False,
        rescore_top=0,
        objective="val_accuracy",
        direction="maximize",
    )
    result = study.run()
    prior = result.prior
    assert prior is not None
    stored = optuna.load_study(study_name=study.study_name, storage=storage)  # as the dashboard opens it
    assert stored.metric_names == ["val_accuracy"]
    text = stored.user_attrs["description"]
    for words in ("batch_coord", "lr_coord", "user attributes batch_size and lr", "maximize the best val_accuracy"):
        assert words in text
    assert len(stored.trials) == 3
    for trial in stored.trials:
        assert set(trial.params) == {"batch_coord", "lr_coord"}  # TPE still searches the fixed-range coordinates
        batch = prior.batch_at(trial.params["batch_coord"])
        assert trial.user_attrs["batch_size"] == batch == trial.user_attrs["config"]["batch_size"]
        assert trial.user_attrs["lr"] == pytest.approx(prior.lr_at(batch, trial.params["lr_coord"]))
        assert trial.user_attrs["lr"] == trial.user_attrs["config"]["lr"]
