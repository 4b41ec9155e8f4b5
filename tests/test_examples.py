"""The example scripts build valid tasks that train, and the digits and own-loop scripts run end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.data import Subset

import bstune
from tests.cli.cli_runner import ForkedCli
from tests.reliability.conftest import python_env

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bstune_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    # These models are too small to gain from intra-op threads, which only contend with
    # other processes on a small machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_task() -> bstune.Task:
    return load_example("digits_mlp").make_task()


@pytest.fixture(scope="module")
def char_task() -> bstune.Task:
    task = load_example("char_lm").make_task()
    # Evaluating all 727 validation sequences dominates a run of a few steps: keep 64.
    return bstune.Task(
        model=task.model,
        train_data=task.train_data,
        val_data=Subset(task.val_data, range(64)),
        loss=task.loss,
        metrics=task.metrics,
        optimizer=task.optimizer,
        name=task.name,
        validate=False,
    )


def check_run(run: bstune.TrainResult, samples: int) -> None:
    assert run.status is bstune.RunStatus.COMPLETED, run.message
    assert run.samples >= samples
    assert run.history
    for rec in run.history:
        assert math.isfinite(rec.train_loss) and math.isfinite(rec.val_loss) and math.isfinite(rec.batch_loss)


def test_digits_task_shape(digits_task: bstune.Task) -> None:
    assert (digits_task.n_train, digits_task.n_val) == (1437, 360)
    x, _ = digits_task.train_dataset[0]
    assert x.shape == (64,) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert digits_task.optimizer_spec.family == "sgd"


def test_digits_trains(digits_task: bstune.Task) -> None:
    config = bstune.TrainConfig(batch_size=32, lr=0.05, max_samples=320, track_noise=True, device="cpu")
    run = bstune.train(digits_task, config)
    check_run(run, 320)
    assert "val_accuracy" in run.final.metrics
    assert run.noise_trajectory


def test_digits_cnn_trains() -> None:
    task = load_example("digits_cnn").make_task()
    assert (task.n_train, task.n_val) == (1437, 360)
    x, _ = task.train_dataset[0]
    assert x.shape == (1, 8, 8) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    config = bstune.TrainConfig(batch_size=32, lr=0.05, max_samples=320, track_noise=True, device="cpu")
    run = bstune.train(task, config)
    check_run(run, 320)
    assert run.noise_trajectory
    # no BatchNorm: per-example gradients, hence the per_example estimator, are defined in train mode
    est = bstune.measure_noise_scale(task, model=run.model, batch_size=8, n_batches=2, device="cpu")
    assert est.method == "per_example" and math.isfinite(est.trace_sigma)


def test_char_lm_trains(char_task: bstune.Task) -> None:
    assert char_task.n_train > 5000
    x, y = char_task.train_dataset[0]
    assert x.shape == y.shape == (64,)
    assert (x[1:] == y[:-1]).all()  # targets are the inputs shifted by one character
    config = bstune.TrainConfig(
        batch_size=16, lr=3e-3, max_samples=128, eval_train_examples=64, eval_every_samples=64, device="cpu"
    )
    run = bstune.train(char_task, config)
    check_run(run, 128)
    assert run.final.metrics["val_accuracy"] >= 0.0


def test_char_lm_per_example_gradients(char_task: bstune.Task) -> None:
    # The example claims vmap handles every op of its model; per-example gradients must work.
    est = bstune.measure_noise_scale(char_task, batch_size=4, n_batches=2, device="cpu")
    assert est.method == "per_example" and est.n_batches == 2
    assert math.isfinite(est.trace_sigma) and est.trace_sigma > 0


@pytest.mark.slow
def test_digits_script_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_mlp.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "noise_scale.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["exact"]["b_simple"] > 0
    for method in ("per_example", "micro_batch"):
        assert summary["estimates"][method]["method"] == method
        assert summary["estimates"][method]["b_simple"] > 0


@pytest.mark.slow
def test_char_lm_script_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "char_lm.py"),
            "--out",
            str(tmp_path),
            "--max-samples",
            "320",
            "--measure-batches",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "noise_scale.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["estimate"]["n_batches"] == 4


def test_own_loop_is_tuned_by_bstune_run_end_to_end(tmp_path: Path, forked_cli: ForkedCli) -> None:
    """``bstune run examples/own_loop.py`` in the baseline mode (the user's loop: DataLoader workers, a model
    returning its loss), 4 trials of 9,000 samples, the best one re-scored; the prior mode runs through the
    script itself below."""
    proc = forked_cli.completed(
        ["run", str(EXAMPLES / "own_loop.py"), "--space", str(ROOT / "search_spaces" / "mlp_classifier.yaml"),
         "--trials", "4", "--budget-samples", "9000", "--rescore-top", "1", "--out", str(tmp_path), "--no-progress",
         "--mode", "baseline"],
        ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["study"]["mode"] == "baseline" and report["study"]["n_trials"] == 4
    assert len(report["trials"]) == 4 and {t["status"] for t in report["trials"]} <= {"completed", "pruned"}
    recommended = report["recommended"]
    assert recommended["batch_size"] >= 8 and recommended["lr"] > 0 and "model.hidden" in recommended
    assert math.isfinite(recommended["objective"]["val_loss"]) and recommended["why"]
    section = (tmp_path / "report.md").read_text().split("## Recommendation", 1)[1].split("\n## ", 1)[0]
    assert f"**Train with batch size {recommended['batch_size']} and learning rate" in section


PRIOR_NEEDS = "the probe through a user's loop needs bstune.noise.PerExampleNorms (ctx.noise_tracker)"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(bstune.noise, "PerExampleNorms"), reason=PRIOR_NEEDS)
def test_own_loop_script_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "own_loop.py"), "--out", str(tmp_path), "--trials", "3",
         "--budget-samples", "9000"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["study"]["mode"] == "prior" and len(report["trials"]) == 3
    assert report["recommended"]["batch_size"] >= 8
    # the probe measured the noise scale through the loop's own backward pass (ctx.noise_tracker)
    noise = report["noise_scale"]
    assert "error" not in noise, noise
    low, high = noise["b_simple_ci"]
    assert 0 < low <= noise["b_simple"] and (high is None or noise["b_simple"] <= high)
    assert noise["lr_ceiling"] > 0 and noise["trajectory"]
    section = (tmp_path / "report.md").read_text().split("## Gradient noise scale", 1)[1].split("\n## ", 1)[0]
    assert "B_simple = " in section and "90% CI" in section
