"""The Ray backend on a real two-node cluster: trials on both nodes, a worker node and the driver killed.

Every study here runs through the real CLI in a subprocess (``bstune run --backend ray
--address HOST:PORT``), as a user's driver would, so it can be SIGKILLed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bstune.study import StudyResult
from tests.ray.conftest import Cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A digits MLP whose model factory logs the trial's `tag` each time a trial starts training:
# the log says which trials trained, and how often.
TASK = """
import torch
from sklearn.datasets import load_digits
from torch import nn
import bstune

START_LOG = {log!r}


def make_task():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)

    def model(tag: int = 0) -> nn.Module:
        with open(START_LOG, "a") as f:
            f.write(f"{{tag}}\\n")
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    return bstune.Task(model=model, train_data=(x[:1400], y[:1400]), val_data=(x[1400:], y[1400:]),
                       loss=nn.CrossEntropyLoss(), optimizer=bstune.OptimizerSpec("sgd", momentum=0.9),
                       name="tagged_digits")
"""

SPACE = """
name: tagged
optimizer: {family: sgd, momentum: 0.9}
batch_size: {min: 16, max: 256}
lr: {min: 0.01, max: 1.0}
params:
  model.tag: {type: int, low: 0, high: 1000000000}
"""


def write_inputs(folder: Path) -> tuple[Path, Path, Path]:
    log = folder / "starts.log"
    script = folder / "tagged_digits.py"
    script.write_text(TASK.format(log=str(log)))
    space = folder / "tagged.yaml"
    space.write_text(SPACE)
    return script, space, log


def run_cli(cluster: Cluster, script: Path, space: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
               "--address", cluster.gcs, "--out", str(out), "--mode", "baseline", "--no-progress", *extra]  # fmt: skip
    return subprocess.Popen(
        command,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def finished(results: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    return {name: lines[-1] for name, lines in results.items() if lines and lines[-1].get("final")}


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(1)


def bstune_cli(cluster: Cluster, *args: str) -> str:
    """Run ``bstune ARGS`` in a fresh process (the cluster's token is in its environment); returns stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "bstune.cli", *args], env=cluster.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_submitted_job_runs_and_its_report_is_fetched(ray_cluster: Cluster, tmp_path: Path) -> None:
    script, space, _ = write_inputs(tmp_path)
    address = ["--address", ray_cluster.dashboard]
    job_id = bstune_cli(ray_cluster, "submit", str(script), "--space", str(space), *address, "--trials", "3",
                        "--budget-samples", "3000", "--mode", "baseline").splitlines()[-1]  # fmt: skip
    assert bstune_cli(ray_cluster, "status", job_id, *address) in {"PENDING", "RUNNING", "SUCCEEDED"}
    ended = {"SUCCEEDED", "FAILED", "STOPPED"}
    wait_until(lambda: bstune_cli(ray_cluster, "status", job_id, *address) in ended, 400, "the job to end")
    assert bstune_cli(ray_cluster, "status", job_id, *address) == "SUCCEEDED"
    bstune_cli(ray_cluster, "fetch", job_id, str(tmp_path / "fetched"), *address)
    result = StudyResult.load(tmp_path / "fetched")
    assert len(result.trials) == 3 and result.best_config["batch_size"] >= 16
    assert (tmp_path / "fetched" / "report.md").is_file() and (tmp_path / "fetched" / "report.html").is_file()
