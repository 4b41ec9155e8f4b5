"""One bad trial must not end a study: divergence, out of memory, user code that raises.

Each study runs for real on a SQLite file; out of memory is simulated by a model that
raises ``torch.OutOfMemoryError`` (what CUDA raises) above a batch size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import bstune
from bstune.cli import main
from bstune.study import StudyFailedError
from tests.conftest import make_classification, small_mlp

SPACE: dict[str, Any] = {"name": "blobs", "batch_size": {"min": 8, "max": 128}, "lr": {"min": 1e-3, "max": 1.0}}
MEMORY_LIMIT = 40  # the simulated device holds batches of up to 40 examples


def blobs(model: Any = small_mlp, loss: Any = None, name: str = "blobs") -> bstune.Task:
    x, y = make_classification(n=520)
    return bstune.Task(
        model=model,
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=loss or torch.nn.CrossEntropyLoss(),
        name=name,
    )


def study(task: bstune.Task, storage: str, n_trials: int, space: dict[str, Any] = SPACE) -> bstune.Study:
    return bstune.Study(
        task,
        space,
        n_trials=n_trials,
        budget_samples=1600,
        seed=0,
        storage=storage,
        mode="baseline",
        pruner="none",
        n_evals=2,
        progress=False,
    )


def stored(s: bstune.Study) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=s.study_name, storage=s.backend.storage).get_trials()  # type: ignore[attr-defined]


class MemoryHungry(torch.nn.Module):
    """An MLP on a device that runs out of memory on training batches above MEMORY_LIMIT."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > MEMORY_LIMIT:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} examples")
        out: torch.Tensor = self.net(x)
        return out


@pytest.mark.slow
def test_diverged_trials_are_recorded_and_teach_the_sampler_nothing(tmp_path: Path) -> None:
    space = SPACE | {"lr": {"min": 1e-2, "max": 1e4}}  # the upper part of this range diverges
    s = study(blobs(), f"sqlite:///{tmp_path}/s.db", n_trials=8, space=space)
    result = s.run()
    trials = stored(s)
    diverged = [t for t in trials if t.user_attrs.get("status") == "diverged"]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert diverged and completed and len(trials) == 8  # the study went on past every divergence
    for t in diverged:
        assert t.state == TrialState.FAIL and t.values is None  # FAIL: TPE and the pruners read only COMPLETE/PRUNED
        assert t.user_attrs["config"]["lr"] == t.user_attrs["lr"] and t.user_attrs["batch_size"] >= 8
        assert 0 < t.user_attrs["samples"] < 1600 and t.user_attrs["message"]  # how far it got, and why it stopped
        assert all(math.isfinite(v) for v in t.intermediate_values.values())  # no inf/nan reached the pruner
    # the recommendation is a completed trial, and its value the mean over its re-scoring seeds
    chosen = next(r for r in result.rescored if r.trial == result.best_trial)
    assert result.best_trial in {t.number for t in completed} and chosen.complete
    assert result.best_value == chosen.mean and all(v is not None and math.isfinite(v) for v in chosen.values)
    assert result.best_config["lr"] == next(t.user_attrs["lr"] for t in completed if t.number == result.best_trial)


@pytest.mark.slow
def test_out_of_memory_lowers_the_batch_ceiling_for_the_rest_of_the_study_and_the_report_says_so(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    s = study(blobs(MemoryHungry), storage, n_trials=6)
    result = s.run()
    trials = stored(s)
    oom = [t for t in trials if t.user_attrs.get("status") == "oom"]
    assert oom, "the seeded sampler should try a batch size above the memory limit"
    first = oom[0]
    assert first.state == TrialState.FAIL and first.user_attrs["batch_size"] > MEMORY_LIMIT
    cap = 128
    for t in trials:  # one process: each trial sees the ceilings of the trials before it
        assert t.user_attrs["batch_size"] <= cap
        if t.user_attrs.get("status") == "oom":
            assert t.user_attrs["batch_ceiling"] == max(8, min(cap, t.user_attrs["batch_size"] // 2))
            cap = t.user_attrs["batch_ceiling"]
    assert any(t.state == TrialState.COMPLETE for t in trials)

    report = result.report()
    events = report.data["memory"]["events"]
    assert [(e["trial"], e["batch_size"], e["ceiling"]) for e in events] == [
        (t.number, t.user_attrs["batch_size"], t.user_attrs["batch_ceiling"]) for t in oom
    ]
    assert report.data["memory"]["batch_ceiling"] == cap
    md = report.to_markdown()
    assert (
        f"Trial {first.number} ran out of memory at batch size {first.user_attrs['batch_size']}: "
        f"batch sizes were capped at {first.user_attrs['batch_ceiling']} for the rest of the study" in md
    )
    assert '<section id="out-of-memory">' in report.to_html()

    resumed = study(blobs(MemoryHungry), storage, n_trials=9).run()  # a new process keeps the lowered ceiling
    assert all(t.batch_size <= cap for t in resumed.trials[len(trials) :])  # type: ignore[operator]
    assert len(resumed.trials) == 9


def test_a_trial_that_raises_keeps_its_traceback_and_the_study_goes_on(tmp_path: Path) -> None:
    calls = {"n": 0}

    def sometimes_broken(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if 60 < calls["n"] < 90:  # past the Task's checks, inside the first trials
            raise RuntimeError("flaky user loss")
        return torch.nn.functional.cross_entropy(out, y)

    s = study(blobs(loss=sometimes_broken, name="flaky"), f"sqlite:///{tmp_path}/s.db", n_trials=5)
    result = s.run()
    failed = [t for t in stored(s) if t.user_attrs.get("status") == "failed"]
    assert failed, "the flaky loss should have broken at least one trial"
    assert failed[0].state == TrialState.FAIL
    assert "Traceback" in failed[0].user_attrs["traceback"] and "flaky user loss" in failed[0].user_attrs["traceback"]
    assert "in sometimes_broken" in failed[0].user_attrs["traceback"]  # down to the user's frame
    assert failed[0].user_attrs["message"] == "RuntimeError: flaky user loss"
    assert any(t.status == "completed" for t in result.trials) and len(result.trials) == 5


BROKEN_SCRIPT = """
import torch
import bstune
from tests.conftest import make_classification, small_mlp


def loss(out, y):
    if out.requires_grad:  # training breaks; the Task's checks (no grad) pass
        raise ValueError("label smoothing must be in [0, 1)")
    return torch.nn.functional.cross_entropy(out, y)


def make_task():
    x, y = make_classification(n=200)
    return bstune.Task(model=small_mlp, train_data=(x, y), val_data=(x, y), loss=loss, name="broken")
"""


def test_a_study_where_every_trial_fails_ends_with_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(BROKEN_SCRIPT)
    space = tmp_path / "space.yaml"
    space.write_text("name: s\nbatch_size: {min: 8, max: 64}\n")
    argv = ["run", str(script), "--space", str(space), "--trials", "3", "--budget-samples", "800"]
    assert main([*argv, "--mode", "baseline", "--no-progress", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err  # one line
    assert err.startswith("bstune: StudyFailedError: none of the 3 trials of study 'bstune-broken' completed")
    assert "ValueError: label smoothing must be in [0, 1)" in err  # what went wrong, without opening the storage
    trials = optuna.load_study(study_name="bstune-broken", storage=f"sqlite:///{tmp_path}/out/study.db").trials
    assert all("label smoothing" in t.user_attrs["traceback"] for t in trials)  # the details are kept

    def fails_in_training(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.requires_grad:
            raise ZeroDivisionError("division by zero")
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(StudyFailedError, match=r"\(3 failed\); the first: trial 0: ZeroDivisionError"):
        study(blobs(loss=fails_in_training), None, n_trials=3).run()  # type: ignore[arg-type]
