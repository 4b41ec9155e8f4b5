"""Studies on the embedded default: prior and baseline modes, pruning at equal compute, failures, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import bstune
from bstune.errors import ConfigError
from bstune.study import ProbeSettings, StudyFailedError
from tests.study.study_runner import SPACE, make_study, make_task

ROOT = Path(__file__).resolve().parents[2]
QUICK_PROBE = ProbeSettings(
    lr_steps=12, train_samples=1600, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64)
)


def _study(task: bstune.Task, **kw: Any) -> bstune.Study:
    args: dict[str, Any] = dict(n_trials=6, budget_samples=4000, seed=0, progress=False, probe=QUICK_PROBE, n_evals=4)
    return bstune.Study(task, kw.pop("space", SPACE), **(args | kw))


def test_prior_mode_searches_the_band_and_records_derived_values(blob_task: bstune.Task) -> None:
    result = _study(blob_task).run()
    prior, probe = result.prior, result.probe
    assert prior is not None and probe is not None
    assert probe.samples_used > 0 and probe.throughput
    for t in result.trials:
        assert prior.batch_low <= t.batch_size <= prior.batch_high  # type: ignore[operator]
        assert set(t.params) >= {"batch_coord", "lr_coord"}
        rule = prior.lr_rule(t.batch_size)  # type: ignore[arg-type]
        assert rule / 3.0001 <= t.lr <= rule * 3.0001  # type: ignore[operator]
        assert t.temperature == pytest.approx(t.lr / t.batch_size)  # type: ignore[operator]
    assert result.samples_total == probe.samples_used + sum(t.samples for t in result.trials)
    assert result.best_config["batch_size"] in {t.batch_size for t in result.trials}
    assert result.to_dict()["best_config"] == result.best_config


def test_pruners_compare_trials_at_equal_sample_milestones(blob_task: bstune.Task) -> None:
    result = _study(blob_task, mode="baseline", n_trials=8, pruner="median")
    res = result.run()
    study = res.optuna_study
    assert study is not None
    every = 4000 // 4
    for frozen, record in zip(study.get_trials(), res.trials, strict=True):
        steps = sorted(frozen.intermediate_values)
        assert set(steps) <= {1, 2, 3, 4}
        for entry in record.history:  # the step Optuna saw is the sample milestone, whatever the batch size
            assert entry["milestone"] % every == 0
            assert 0 <= entry["samples"] - entry["milestone"] < record.batch_size  # type: ignore[operator]
        assert [round(h["milestone"] / every) for h in record.history] == steps
    assert any(t.status == "pruned" for t in res.trials) or len({t.batch_size for t in res.trials}) > 1


def test_diverged_trials_are_recorded_and_the_study_goes_on(blob_task: bstune.Task, tmp_path: Path) -> None:
    space = SPACE | {"lr": {"min": 1e2, "max": 1e5}}
    study = _study(
        blob_task, space=space, mode="baseline", n_trials=4, pruner="none", storage=f"sqlite:///{tmp_path}/s.db"
    )
    with pytest.raises(StudyFailedError, match=r"none of the 4 trials .*diverged"):
        study.run()
    storage_trials = study_trials(study)
    assert all(t.state == TrialState.FAIL for t in storage_trials)
    assert {t.user_attrs["status"] for t in storage_trials} == {"diverged"}
    assert all(t.user_attrs["batch_size"] and t.user_attrs["lr"] >= 1e2 for t in storage_trials)


def study_trials(study: bstune.Study) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study.study_name, storage=study.storage).get_trials() if study.storage else []


def test_user_code_errors_keep_the_traceback(blob_task: bstune.Task, tmp_path: Path) -> None:
    calls = {"n": 0}

    def sometimes_broken(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if 200 < calls["n"] < 400:
            raise RuntimeError("flaky user loss")
        return torch.nn.functional.cross_entropy(out, y)

    task = bstune.Task(
        model=blob_task.model,
        train_data=blob_task.train_data,
        val_data=blob_task.val_data,
        loss=sometimes_broken,
        name="flaky",
    )
    study = _study(task, mode="baseline", n_trials=4, pruner="none", storage=f"sqlite:///{tmp_path}/s.db")
    result = study.run()
    failed = [t for t in study_trials(study) if t.user_attrs.get("status") == "failed"]
    assert failed, "the flaky loss should have broken at least one trial"
    assert "flaky user loss" in failed[0].user_attrs["traceback"]
    assert "Traceback" in failed[0].user_attrs["traceback"]
    assert any(t.status == "completed" for t in result.trials)


def test_journal_storage_and_settings_must_match_to_resume(blob_task: bstune.Task, tmp_path: Path) -> None:
    journal = str(tmp_path / "study.log")
    first = _study(blob_task, mode="baseline", n_trials=2, storage=journal).run()
    again = _study(blob_task, mode="baseline", n_trials=3, storage=journal).run()
    assert [t.number for t in again.trials] == [0, 1, 2]
    assert [t.value for t in again.trials[:2]] == [t.value for t in first.trials]  # kept, not re-run
    with pytest.raises(ConfigError, match=r"different settings.*budget_samples"):
        _study(blob_task, mode="baseline", n_trials=3, storage=journal, budget_samples=8000).run()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"budget_samples": -5}, "budget_samples"),
        ({"mode": "grid"}, "mode"),
        ({"pruner": "asha"}, "pruner"),
        ({"objective": "val_f1"}, "objective"),
        ({"direction": "up"}, "direction"),
    ],
)
def test_bad_study_arguments_name_the_field(blob_task: bstune.Task, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _study(blob_task, **kwargs)
    assert info.value.field == field


def test_unopenable_storage_is_a_clear_error(blob_task: bstune.Task) -> None:
    with pytest.raises(ConfigError, match="storage: 'not a url'"):
        _study(blob_task, storage="not a url")
    with pytest.raises(ConfigError, match="storage: cannot open"):
        _study(blob_task, storage="postgresql://nobody@127.0.0.1:1/none")


@pytest.mark.slow
def test_resume_after_sigkill_keeps_every_finished_trial(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/study.db"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/study/study_runner.py"), storage, "8"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    finished: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="bstune-blobs", storage=storage)
        except KeyError:
            continue
        finished = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
        if len(finished) >= 3:
            break
    assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {
        t.number: t.value
        for t in optuna.load_study(study_name="bstune-blobs", storage=storage).get_trials()
        if t.state == TrialState.COMPLETE
    }
    assert len(before) >= 3

    result = make_study(storage, 8).run()
    after = {t.number: t.value for t in result.trials if t.status == "completed"}
    assert all(after[n] == v for n, v in before.items())  # finished trials kept as they were
    states = [t.status for t in result.trials]
    assert sum(s in ("completed", "pruned", "diverged", "oom", "failed") for s in states) >= 8
    stored = optuna.load_study(study_name="bstune-blobs", storage=storage).get_trials()
    retried = [t for t in stored if "retry_of" in t.user_attrs]
    interrupted = [t for t in stored if t.state == TrialState.FAIL and "status" not in t.user_attrs]
    assert len(retried) == len(interrupted)  # the trial killed mid-run was run again, once
    assert all(t.state == TrialState.COMPLETE for t in retried)
    assert make_task().n_train == 400
