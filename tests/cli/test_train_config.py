"""``bstune train`` reproduces a study's recommended config from the shell (``--config``, ``--param``),
through the real entry point, and prints the task's metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.cli_runner import ForkedCli

# a factory with a width, which says on stderr what it was called with
TASK = """
import sys

import torch

import bstune


def model(hidden=8):
    print(f"model: hidden={hidden}", file=sys.stderr)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))


def accuracy(out, y):
    return (out.argmax(1) == y).float().mean()


def make_task():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return bstune.Task(model=model, train_data=(x[:160], y[:160]), val_data=(x[160:], y[160:]),
                       loss=torch.nn.CrossEntropyLoss(), metrics={"accuracy": accuracy}, name="tiny")
"""
SPACE = """
name: t
optimizer: {family: sgd, momentum: 0.9}
batch_size: {min: 8, max: 64}
lr: {min: 1.0e-3, max: 1.0}
params:
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
  warmup_fraction: {type: float, low: 0.0, high: 0.1}
  schedule: {type: categorical, choices: [constant, cosine]}
  model.hidden: {type: int, low: 4, high: 64, log: true}
"""


def _bstune_in(cli: ForkedCli, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli.completed(list(args), folder)
    assert proc.returncode == 0, f"bstune {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _width(stderr: str) -> int:
    """The width of the last model the factory built."""
    return int([ln for ln in stderr.splitlines() if ln.startswith("model: hidden=")][-1].split("=")[1])


@pytest.mark.slow
def test_train_reproduces_the_recommended_trial_and_prints_its_metrics(tmp_path: Path, forked_cli: ForkedCli) -> None:
    (tmp_path / "tiny.py").write_text(TASK)
    (tmp_path / "space.yaml").write_text(SPACE)
    _bstune_in(forked_cli, tmp_path, "run", "tiny.py", "--space", "space.yaml", "--mode", "baseline", "--trials", "3",
               "--budget-samples", "800", "--rescore-top", "0", "--out", "study", "--no-progress")  # fmt: skip
    _bstune_in(forked_cli, tmp_path, "report", "study")
    result = json.loads((tmp_path / "study" / "result.json").read_text())
    best = result["best_config"]
    (trial,) = (t for t in result["trials"] if t["number"] == result["best_trial"])

    proc = _bstune_in(forked_cli, tmp_path, "train", "tiny.py", "--config", "study/result.json", "--out", "again")
    assert _width(proc.stderr) == best["model.hidden"] == trial["config"]["model_kwargs"]["hidden"]
    ran = json.loads((tmp_path / "again" / "train.json").read_text())
    config = ran["config"]
    for key in ("batch_size", "lr", "weight_decay", "warmup_samples", "schedule", "momentum"):
        assert config[key] == best[key], key
    assert config["max_samples"] == result["budget_samples"] and ran["model_kwargs"] == {"hidden": best["model.hidden"]}
    # the same run as the trial: same config, model, seed and data order, so the same final loss, evaluated at the
    # study's milestones (it evaluated every tenth of the budget, the study every ninth: no point compared)
    assert [h["milestone"] for h in ran["history"]] == [h["milestone"] for h in trial["history"]]
    assert ran["history"][-1]["val_loss"] == pytest.approx(trial["history"][-1]["val_loss"], rel=1e-6)
    header = proc.stdout.splitlines()[1].split()
    assert "train_accuracy" in header and "val_accuracy" in header
    (final,) = (ln for ln in proc.stdout.splitlines() if ln.startswith("final:"))
    assert "val_loss" in final and "train_accuracy" in final and "val_accuracy" in final

    # report.json's recommendation; --param and the explicit options override the file
    proc = _bstune_in(forked_cli, tmp_path, "train", "tiny.py", "--config", "study/report.json", "--param", "model.hidden=5",
                      "--param", "momentum=0.95", "--max-samples", "200", "--out", "other")  # fmt: skip
    assert _width(proc.stderr) == 5
    ran = json.loads((tmp_path / "other" / "train.json").read_text())
    assert ran["config"]["momentum"] == 0.95 and ran["config"]["max_samples"] == 200
    assert ran["config"]["batch_size"] == best["batch_size"] and ran["model_kwargs"] == {"hidden": 5}
    # the recommended warmup was a share of the study's 800-sample budget: at 200 samples, said
    assert best["warmup_samples"] > 0  # this seed's recommendation warms up (the space draws 0-10%)
    share = round(best["warmup_samples"] * 200 / 800)
    assert "at --max-samples 200 it is" in proc.stderr and f"give --warmup-samples {share} to keep" in proc.stderr


@pytest.mark.slow
def test_a_config_from_a_study_of_another_training_set_is_questioned(tmp_path: Path, forked_cli: ForkedCli) -> None:
    """The recommended config of another script's study trains as asked, with a warning naming both sizes
    (both files' forms: tests/test_train_command.py)."""
    (tmp_path / "tiny.py").write_text(TASK)
    study = {"n_train": 1_437, "budget_samples": 400}
    (tmp_path / "report.json").write_text(json.dumps({"recommended": {"batch_size": 16, "lr": 0.05}, "study": study}))
    proc = _bstune_in(forked_cli, tmp_path, "train", "tiny.py", "--config", "report.json", "--out", "run")
    assert "report.json comes from a study whose training set had 1,437 examples; this script's task has 160" in (
        proc.stderr
    )
    assert json.loads((tmp_path / "run" / "train.json").read_text())["config"]["batch_size"] == 16
