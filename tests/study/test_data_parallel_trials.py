"""Data-parallel trials: ``Study(..., devices_per_trial=k)`` trains each trial on k processes (DDP).

On this machine the k processes are CPU ranks on gloo. A data-parallel trial trains what
one process would (to float rounding: the gradient is averaged across the ranks), so a
study's trial values must match the same study run one process per trial.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import bstune
from bstune.errors import ConfigError
from bstune.study._settings import StudySettings
from bstune.study._workers import worker_devices
from tests.conftest import small_mlp
from tests.study.study_runner import SPACE, make_task

SETTINGS: dict[str, Any] = {
    "n_trials": 2,
    "budget_samples": 400,
    "n_evals": 2,
    "mode": "baseline",
    "pruner": "none",
    "rescore_top": 0,
    "progress": False,
    "device": "cpu",
    "seed": 3,
}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"devices_per_trial": 0}, "devices_per_trial", "must be a positive integer, got 0"),
        ({"devices_per_trial": 1.5}, "devices_per_trial", "must be a positive integer"),
        ({"devices": ["cpu"], "devices_per_trial": 2}, "devices_per_trial", "do not split into trials of 2"),
    ],
)
def test_bad_devices_per_trial_names_its_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        StudySettings(**changes)
    assert err.value.field == field


def test_each_worker_gets_a_group_of_devices() -> None:
    assert worker_devices(StudySettings(device="cpu", devices_per_trial=2)) == [("cpu", "cpu")]
    assert worker_devices(StudySettings(device="cpu", devices_per_trial=2, parallel_trials=2)) == [("cpu", "cpu")] * 2
    with pytest.raises(ConfigError, match="cannot run on cuda:1 alone") as err:
        worker_devices(StudySettings(device="cuda:1", devices_per_trial=2))
    assert err.value.field == "devices_per_trial"


def test_a_training_function_is_refused_data_parallel_trials() -> None:
    def train(ctx: bstune.TrialContext) -> None:
        pass

    space = {"name": "fn", "batch_size": {"min": 4, "max": 64}, "lr": {"min": 1e-3, "max": 1.0}}
    with pytest.raises(ConfigError, match="one process per trial") as err:
        bstune.Study(train, space, devices_per_trial=2, **SETTINGS)
    assert err.value.field == "devices_per_trial"


def test_a_trial_plan_keeps_its_devices_through_the_store() -> None:
    study = bstune.Study(make_task(), SPACE, devices_per_trial=2, **SETTINGS)
    planner = study._planner()
    plan = planner.plan({"batch_size": 33, "lr": 0.1})
    assert (plan.data_parallel, plan.devices, plan.config.device) == (2, ("cpu", "cpu"), "cpu")
    back = type(plan).from_dict(plan.to_dict())
    assert back == plan
    assert plan.on_devices(("cpu", "cpu")).devices == ("cpu", "cpu")


class WhereBuilt:
    """small_mlp, noting in ``folder`` the process that built it and the world size it saw."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self) -> torch.nn.Module:
        dist = torch.distributed
        size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        (self.folder / f"{os.getpid()}-{len(list(self.folder.iterdir()))}").write_text(str(size))
        return small_mlp()


@pytest.mark.slow
def test_a_data_parallel_study_gives_the_values_of_one_process_per_trial(tmp_path: Path) -> None:
    one = bstune.Study(make_task(), SPACE, **SETTINGS).run()
    task = dataclasses.replace(make_task(), model=WhereBuilt(tmp_path))
    two = bstune.Study(task, SPACE, devices_per_trial=2, **SETTINGS).run()
    built = [p.read_text() for p in tmp_path.iterdir()]
    assert built.count("2") == 4, built  # 2 trials, each on 2 ranks of a process group of 2
    assert len({p.name.split("-")[0] for p in tmp_path.iterdir() if p.read_text() == "2"}) == 4
    assert [t.config["batch_size"] for t in two.trials] == [t.config["batch_size"] for t in one.trials]
    for a, b in zip(one.trials, two.trials, strict=True):
        assert a.status == b.status == "completed", (b.status, b.message, b.traceback)
        assert b.value == pytest.approx(a.value, rel=1e-4)
        assert [r["val_loss"] for r in b.history] == pytest.approx([r["val_loss"] for r in a.history], rel=1e-4)


@pytest.mark.slow
def test_two_workers_each_run_data_parallel_trials(tmp_path: Any) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = bstune.Study(make_task(), SPACE, storage=storage, devices_per_trial=2, parallel_trials=2, **SETTINGS).run()
    assert len(result.trials) == 2
    for t in result.trials:
        assert t.status == "completed", (t.status, t.message, t.traceback)
        assert t.worker in {"worker 0 (cpu,cpu)", "worker 1 (cpu,cpu)"}
