"""The Ray backend running a user's training function on the real two-node cluster.

A function from an importable module (:mod:`tests.ray.trial_functions`), given to
``bstune.Study`` in a driver process, and the same loop as ``train(ctx)`` in a script run
by ``bstune run --backend ray`` (a script's module exists only in the driver: Ray must
ship the function by value), in baseline mode; and the prior mode, whose probe runs the
user's loop as a Ray task.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bstune.study import StudyResult
from tests.ray import trial_functions
from tests.ray.conftest import Cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import signal
import sys

import bstune
from bstune.study import RaySettings
from tests.ray.trial_functions import SPACE, train_blobs

address, storage, out = sys.argv[1:4]
study = bstune.Study(
    train_blobs, SPACE, backend="ray", ray=RaySettings(address=address, storage_path=storage),
    mode="baseline", n_trials=4, budget_samples=3000, pruner="none", rescore_top=1, rescore_seeds=1,
    progress=False,
)
before = signal.getsignal(signal.SIGINT)
study.run().save(out)
print("SIGINT handler kept:", signal.getsignal(signal.SIGINT) is before)
"""


def two_nodes(cluster: Cluster) -> list[str]:
    """Both nodes' ids; a worker node is started again if an earlier test killed it."""
    nodes = cluster.alive_nodes()
    if len(nodes) < 2:
        cluster.start_worker()
        nodes = cluster.wait_for_nodes(2)
    return nodes


def run(cluster: Cluster, *command: str) -> str:
    done = subprocess.run(
        [sys.executable, *command], env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def check_records(result: StudyResult, n_trials: int, budget: int) -> None:
    """Records as a task study's: a status, values at milestones, samples, the node that ran it."""
    assert len(result.trials) == n_trials and sorted(t.number for t in result.trials) == list(range(n_trials))
    for t in result.trials:
        assert t.status in {"completed", "pruned"}, (t.status, t.message, t.traceback)
        assert t.value is not None and t.history, t
        assert t.worker or t.from_probe, t  # a Tune trial's node; the probe's run (trial 0) ran in the probe's task
        assert t.history[-1]["samples"] <= t.samples
        if t.status == "completed":
            assert t.samples >= budget and t.history[-1]["milestone"] == budget
        else:
            assert t.samples < budget
    assert result.best_value is not None and result.best_config["batch_size"] >= 16


def test_a_training_function_runs_its_trials_on_both_nodes(ray_cluster: Cluster, tmp_path: Path) -> None:
    nodes = two_nodes(ray_cluster)
    output = run(ray_cluster, "-c", DRIVER, ray_cluster.gcs, str(tmp_path / "ray"), str(tmp_path / "out"))
    # Tune's handler left in place took the next Ctrl-C (during re-scoring) and the study ran on to exit 0
    assert "SIGINT handler kept: True" in output
    result = StudyResult.load(tmp_path / "out")
    check_records(result, 4, 3000)
    assert {t.status for t in result.trials} == {"completed"}  # pruner none: every trial trains its budget
    assert {t.worker for t in result.trials} == set(nodes)  # the function was shipped to both nodes and ran there
    assert result.rescored and result.rescored[0].trial == result.best_trial  # re-scoring ran as a Ray task


def write_script(folder: Path, seconds_per_sample: float = trial_functions.SECONDS_PER_SAMPLE) -> tuple[Path, Path]:
    """The loop as a user's script (a module only the driver has: Ray ships the function by value), pacing its
    steps through a module beside it (``my_pace.py``, importable only through the script's folder: shipped by
    value too), and its space."""
    script = folder / "my_loop.py"
    # (replacing the constant's repr did nothing: the module spells it 3e-3, and every script slept)
    text, n = re.subn(
        r"^SECONDS_PER_SAMPLE = .*$", "from my_pace import pace", Path(trial_functions.__file__).read_text(), flags=re.M
    )
    text, m = re.subn(r"time\.sleep\(SECONDS_PER_SAMPLE \* len\(xb\)\)", "pace(len(xb))", text)
    assert n == m == 1, "tests/ray/trial_functions.py no longer sets and sleeps SECONDS_PER_SAMPLE as it did"
    (folder / "my_pace.py").write_text(
        f"import time\n\nSECONDS_PER_SAMPLE = {seconds_per_sample!r}\n\n\n"
        "def pace(samples):\n    time.sleep(SECONDS_PER_SAMPLE * samples)\n"
    )
    script.write_text(text + "\n\ntrain = train_blobs\n")
    space = folder / "space.yaml"
    space.write_text("name: blobs\nbatch_size: {min: 16, max: 128}\nlr: {min: 0.001, max: 3.0}\n")
    return script, space


def test_a_script_defining_train_is_tuned_on_the_cluster_and_asha_stops_trials(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    two_nodes(ray_cluster)
    script, space = write_script(tmp_path)
    space.write_text(space.read_text() + "params:\n  model.widht: {type: int, low: 8, high: 64}\n")  # a typo
    out = tmp_path / "out"
    output = run(ray_cluster, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
                 "--address", ray_cluster.gcs, "--out", str(out), "--mode", "baseline", "--trials", "8",
                 "--budget-samples", "3000", "--pruner", "hyperband", "--rescore-top", "0")  # fmt: skip
    result = StudyResult.load(out)
    check_records(result, 8, 3000)
    # off a terminal, bstune run promises a line per finished trial instead of progress bars: on Ray too
    assert "a line per finished trial instead of progress bars" in output
    said = {int(n) for n in re.findall(r"^trial (\d+) (?:completed|pruned): B=\d+, lr=", output, flags=re.M)}
    assert said == {t.number for t in result.trials}, output[-4000:]
    # what bstune warned of in the trials' workers reaches the user, once (Ray keeps workers' logs to itself)
    unread = [
        line for line in output.splitlines() if "never read the space's searched parameter(s) 'model.widht'" in line
    ]
    assert len(unread) == 1 and unread[0].rstrip().endswith(")"), output[-4000:]
    assert "invalid value" not in output  # Ray's TensorBoard logger, handed the list of unread parameters
    pruned = [t for t in result.trials if t.status == "pruned"]
    assert pruned, [(t.number, t.value) for t in result.trials]  # ASHA stopped trials through ctx.report
    assert all(t.samples < 3000 and t.history for t in pruned)
    assert (out / "report.md").is_file()


def test_the_prior_mode_probes_the_users_loop_on_the_cluster(ray_cluster: Cluster, tmp_path: Path) -> None:
    two_nodes(ray_cluster)
    script, space = write_script(tmp_path, seconds_per_sample=0.0)  # the probe trains ~13,000 samples
    out = tmp_path / "out"
    run(ray_cluster, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
        "--address", ray_cluster.gcs, "--out", str(out), "--no-progress", "--trials", "3",
        "--budget-samples", "3000", "--pruner", "none", "--rescore-top", "0")  # fmt: skip
    result = StudyResult.load(out)
    assert result.mode == "prior" and result.probe is not None and result.prior is not None
    low, high = result.probe.b_simple_ci
    assert 0 < low <= result.probe.b_simple and (high is None or result.probe.b_simple <= high)
    assert result.probe.lr_ceiling is not None and result.probe.lr_ceiling > 0 and result.samples_probe > 0
    check_records(result, 3, 3000)
    # a trial of 3,000 samples is shorter than the probe's own run: its run is trial 0, Tune trained two
    first = result.trials[0]
    assert first.from_probe and result.probe.run is not None and first.samples == result.probe.run["samples"]
    assert not any(t.from_probe for t in result.trials[1:])
    assert result.samples_probe == result.probe.samples_used - first.samples
    noise = json.loads((out / "report.json").read_text())["noise_scale"]
    assert noise["b_simple"] == pytest.approx(result.probe.b_simple)


def test_a_loop_that_raises_ends_the_ray_study_after_its_first_failures(ray_cluster: Cluster, tmp_path: Path) -> None:
    """Not all of its trials: the searcher gives up after three failed trials and none completed."""
    two_nodes(ray_cluster)
    script, space = write_script(tmp_path, seconds_per_sample=0.0)
    script.write_text(script.read_text() + "\n\ndef train(ctx):\n    raise ValueError('a bug in the loop')\n")
    done = subprocess.run(
        [sys.executable, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
         "--address", ray_cluster.gcs, "--out", str(tmp_path / "out"), "--mode", "baseline", "--no-progress",
         "--trials", "12", "--budget-samples", "3000", "--rescore-top", "0"],
        env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-4000:]
    assert "stops drawing trials: its first 3 trials failed and none completed" in output, output[-4000:]
    ran = re.search(r"none of the (\d+) trials .*ValueError: a bug in the loop", output)
    assert ran is not None, output[-4000:]
    assert 3 <= int(ran.group(1)) < 12  # those running when the third failed finish too
    assert "Ctrl-C" not in output


def test_a_probe_that_refuses_the_settings_says_why_in_one_line_and_leaves_nothing_behind(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """The probe's ConfigError came back inside Ray's traceback (with colour codes), and the study's state
    file stayed: the corrected command was refused ('pass --resume'), and so was --resume (other settings)."""
    script, space = write_script(tmp_path, seconds_per_sample=0.0)
    space.write_text("name: blobs\nbatch_size: {min: 512, max: 1024}\nlr: {min: 0.001, max: 3.0}\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
               "--address", ray_cluster.gcs, "--out", str(out), "--no-progress", "--trials", "3",
               "--budget-samples", "12000"]  # fmt: skip
    done = subprocess.run(command, env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, (done.stdout + done.stderr)[-4000:]
    assert "bstune: error: " + str(space) + ": batch_size.min: batch_size.min (512) is larger than the training " \
        "set (400 examples)" in done.stderr  # fmt: skip
    assert "ray::" not in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
