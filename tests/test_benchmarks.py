"""The benchmark suite's quick configuration runs end to end and writes what it promises."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run_suite(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--suite", "quick", "--out", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The end-to-end run's results folder: its sweep (the ground truth) and the judge's cached evaluations
    serve the later quick runs of this module, which copy them (:func:`_ground_truth_from`)."""
    return tmp_path_factory.mktemp("quick")


def _ground_truth_from(done: Path, out: Path) -> None:
    """Copy an earlier run's sweep and judge cache into ``out``, where the harness reads them instead of
    measuring them again (it measures what is missing: a test run alone still passes)."""
    for cache in ("sweeps", "cache"):
        if (done / cache).is_dir():
            shutil.copytree(done / cache, out / cache)


@pytest.mark.slow
def test_quick_suite_end_to_end(quick_out: Path) -> None:
    tmp_path = quick_out  # the folder the later quick runs take the ground truth from
    proc = _run_suite(tmp_path, "--measures", "sweep,efficiency,noise,bcrit,overhead")  # ray: its own test
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "suite_quick.json").read_text())
    assert set(data) >= {"sweep", "efficiency", "noise", "bcrit", "overhead"}
    sweep = data["sweep"]["linreg"]["analysis"]
    assert sweep["best"]["value"] > 0 and sweep["cells_ok"] > 0
    eff = data["efficiency"]["linreg"]
    for run in eff["runs"]:
        # samples to the target count the probe and every trial up to the one that reached it, in the order
        # they were spent: where the probe's run is trial 0, only its first range test came before it
        assert run["samples_total"] == run["samples_probe"] + sum(t["samples"] for t in run["trials"])
        hit = run["samples_to"]["0.02"]
        before = run.get("probe_before_first_trial")
        first = run["trials"][0]["samples"] if before is not None else 0
        assert hit is None or (before if before is not None else run["samples_probe"]) + first <= hit
        assert hit is None or hit <= run["samples_total"]
        assert (before is not None) == (run["method"] == "prior")  # the prior's probe run is its trial 0
    assert {r["method"] for r in eff["runs"]} == {"prior", "baseline", "random"}
    noise = data["noise"]["linreg"]["pooled"]
    assert 0 <= noise["per_example"]["coverage"] <= 1
    assert not any(r.get("pending") for r in data["overhead"]["rows"])
    md = (tmp_path / "RESULTS_quick.md").read_text()
    for heading in ("Ground truth", "Tuning efficiency", "Noise-scale accuracy", "B_crit prediction", "Overhead"):
        assert heading in md
    assert (tmp_path / "steps_vs_batch.png").stat().st_size > 0
    assert (tmp_path / "samples_to_target_linreg.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.ray
def test_quick_suite_ray_asha(quick_out: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    _ground_truth_from(quick_out, tmp_path)
    proc = _run_suite(tmp_path, "--measures", "efficiency", "--methods", "ray_asha", "--trials", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "suite_quick.json").read_text())["efficiency"]["linreg"]["runs"]
    assert [r["method"] for r in runs] == ["ray_asha"]
    assert len(runs[0]["trials"]) == 3 and runs[0]["samples_total"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_quick_suite_ray_backend_on_one_and_two_nodes(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    proc = _run_suite(tmp_path, "--measures", "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ray,) = json.loads((tmp_path / "suite_quick.json").read_text())["ray"]["cases"]
    rows = {r["config"]: r for r in ray["rows"]}
    assert set(rows) == {"embedded", "ray, 1 node", "ray, 2 nodes"}
    assert rows["ray, 1 node"]["nodes_used"] == [1] and rows["ray, 2 nodes"]["nodes_used"][0] in (1, 2)
    assert ray["startup_s"]["second node"] > 0 and ray["speedup_2_vs_1_node"] > 0
    for row in rows.values():
        assert row["wall_s_median"] > 0 and row["trials_per_min"] == pytest.approx(60 * 2 / row["wall_s_median"])
    embedded, one = rows["embedded"]["wall_s_median"], rows["ray, 1 node"]["wall_s_median"]
    assert ray["overhead_s_per_trial"] == pytest.approx((one - embedded) / 2)
    md = (tmp_path / "RESULTS_quick.md").read_text()
    assert "## 6. Ray backend" in md and "pending" not in md


def test_the_overhead_hand_loop_does_bstunes_work_and_the_table_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import bstune
    from benchmarks import overhead

    task = overhead.mlp40_task()
    cfg = bstune.TrainConfig(batch_size=32, lr=0.05, max_samples=640, eval_every_samples=200, device="cpu", seed=1)
    overhead.check(task, cfg)  # same init, data order, update: the same parameters bit for bit
    monkeypatch.setattr(overhead, "hand_loop", lambda t, c: overhead.task_of("linreg").make_model(seed=0))
    with pytest.raises(AssertionError, match="differs"):
        overhead.check(overhead.task_of("linreg"), bstune.TrainConfig.from_dict(cfg.to_dict() | {"lr": 0.01}))
    monkeypatch.undo()
    monkeypatch.setattr(overhead, "RESULTS", tmp_path)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    rows = overhead.measure([("mlp40", 32, 0.05, 640)], repeats=1)
    assert rows[0]["train_cpu_ratio"] > 0 and rows[0]["tracked_cpu_ratio"] > 0
    md = overhead.write(rows, "test", 0.0, None)
    assert "| mlp40 | 32 | 640 |" in md and (tmp_path / "overhead.json").exists()


def _run_gpu_check(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow  # 20-60 s on 2 shared cores: two gloo ranks are spawned
def test_gpu_check_dry_run_on_the_cpu_writes_every_row(tmp_path: Path) -> None:
    from benchmarks.gpu_check import ROW_NAMES

    out = tmp_path / "gpu_check.md"
    proc = _run_gpu_check(out, "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = out.read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in md.splitlines() if line.startswith("| ")}
    assert set(ROW_NAMES) <= set(rows), rows
    assert "FAIL" not in rows.values(), md
    for name in ("oom train", "oom study", "trial per gpu", "amp fp16"):  # CUDA only: skipped, and why
        assert rows[name] == "SKIP", md
    assert "the CPU does not raise torch.OutOfMemoryError" in md and "needs 2 or more GPUs" in md
    for name in ("environment", "amp bf16", "ddp train", "throughput fp32", "throughput amp"):
        assert rows[name] == "PASS", md
    assert "dry run on the CPU" in md and "UTC" in md and "torch " in md  # machine and date


def test_gpu_check_fails_a_row_without_stopping_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpu_check

    def broken(opt: gpu_check.Options) -> list[gpu_check.Row]:
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu_check.CHECKS, "amp", broken)
    out = tmp_path / "gpu_check.md"
    code = gpu_check.main(["--device", "cpu", "--quick", "--only", "environment,amp,oom", "--out", str(out)])
    md = out.read_text()
    assert code == 1
    assert "| amp | FAIL | raised RuntimeError at test_benchmarks.py" in md and "boom" in md
    assert "| environment | PASS |" in md and "| oom study | SKIP |" in md


class _OOMAbove(torch.nn.Module):
    """Raises torch.OutOfMemoryError for a batch above ``cap``, as a GPU would; the CPU never does."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.linear = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.cap:
            raise torch.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.cap}")
        return self.linear(x)  # type: ignore[no-any-return]


def test_gpu_check_oom_study_sees_the_ceiling_learned(tmp_path: Path) -> None:
    """The OOM study check's logic, with an OOM simulated on the CPU above B = 2048."""
    import functools

    import bstune
    from benchmarks import gpu_check

    x = torch.randn(8192, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    task = bstune.Task(
        model=functools.partial(_OOMAbove, 2048), train_data=(x, y), val_data=(x[:512], y[:512]),
        loss=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip
    row = gpu_check._oom_study(gpu_check.Options("cpu", True, tmp_path), task, 8192)
    assert row.result == "PASS", row
    assert "trial 0 oom at B=8192, ceiling 4096" in row.figure


def test_rescore_rules_pick_by_their_own_seeds_and_the_oracle_by_the_judge() -> None:
    from benchmarks.rescore_rules import compare, markdown

    # trial 3 won on its own (lucky) seed; its fresh seeds say it is worse than trial 5
    cands = [
        {"trial": 3, "seeds": [7, 8], "values": [0.50, 1.00, 1.00]},
        {"trial": 5, "seeds": [7, 8], "values": [0.80, 0.78, 0.80]},
        {"trial": 9, "seeds": [7, 8], "values": [0.90, 0.70, None]},  # failed at a seed: never picked
    ]
    judge = {3: 1.10, 5: 1.02, 9: 0.99}
    res = compare([{"seed": 0, "rescore_candidates": cands}], lambda run, c: judge[c["trial"]])
    (row,) = res["runs"]
    assert row["ratios"] == {
        "mean of all seeds": 1.02,  # (0.5+1+1)/3 = 0.833 > 0.793
        "fresh seeds only": 1.02,
        "own seed only": 1.10,
        "oracle": 0.99,
    }
    assert res["summary"]["own seed only"] == {"median": 1.10, "mean": 1.10, "n": 1}
    facts = {"date": "d", "command": "c", "machine": {"cpu_model": "m"}, "git_commit": "g"}
    assert "| p m, 1 seeds | 1.020 (mean 1.020)" in markdown({"p m": res}, facts)


def test_the_final_pick_verdict_says_how_often_each_side_won_and_whether_that_is_resolved() -> None:
    from benchmarks.report import _graceful_checks, sign_test

    assert sign_test(5, 0) == pytest.approx(1 / 16) and sign_test(3, 6) == pytest.approx(260 / 512)
    assert sign_test(0, 0) == 1.0 and sign_test(4, 4) == 1.0

    def run(method: str, seed: int, final: float) -> dict[str, object]:
        return {"method": method, "seed": seed, "samples_to": {"0.02": 1000 * (seed + 1)}, "final_ratio": final}

    prior, base = [1.01, 1.02, 1.05, 1.00], [1.03, 1.04, 1.00, 1.01]
    runs = [run("prior", i, v) for i, v in enumerate(prior)] + [run("baseline", i, v) for i, v in enumerate(base)]
    (line,) = _graceful_checks({"runs": runs, "seeds": [0, 1, 2, 3]})
    assert "final pick / grid best at the median no worse: **met** (1.015 vs 1.020;" in line
    assert "better on 3 of 4 seeds, worse on 1, sign test p = 0.62)" in line


def test_provenance_names_the_commit_a_run_started_with_not_the_one_checked_out_when_it_saves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import benchmarks.run as run

    checked_out = {"rev-parse": "aaaaaaa", "status": ""}
    monkeypatch.setattr(run, "git", lambda *args: checked_out[args[0]])
    monkeypatch.setattr(run, "_CODE", {})
    assert run.code_at_start() == {"git_commit": "aaaaaaa", "git_dirty": False}  # main() reads it first
    checked_out.update({"rev-parse": "bbbbbbb", "status": " M bstune/x.py"})  # a commit made during the run
    machine = run.provenance("python -m benchmarks.run", 0.0)["machine"]
    assert (machine["git_commit"], machine["git_dirty"]) == ("aaaaaaa", False)


def test_a_gp_smoothed_pick_weighs_a_lucky_trial_against_its_neighbours() -> None:
    pytest.importorskip("sklearn")
    from benchmarks.pick_rules import best_trial, seed_noise, smoothed_trial

    # a bowl in (log2 B, log10 lr) with its floor at B=16, lr=0.01; trial 0 sits high on its side but drew a
    # lucky seed (0.9 of the floor), its close neighbours measured the bowl there (1.5)
    def value(b: int, lr: float) -> float:
        return 1.0 + 0.05 * ((math.log2(b) - 4) ** 2 + (math.log10(lr) + 2) ** 2 * 4)

    trials = [{"number": 0, "status": "completed", "batch_size": 256, "lr": 0.1, "value": 0.9}]
    n = 1
    for b in (4, 8, 16, 32, 64, 128, 256):
        for lr in (0.001, 0.003, 0.01, 0.03, 0.1):
            if (b, lr) != (256, 0.1):
                trials.append({"number": n, "status": "completed", "batch_size": b, "lr": lr, "value": value(b, lr)})
                n += 1
    trials.append({"number": n, "status": "pruned", "batch_size": 16, "lr": 0.01, "value": 0.1})  # never picked
    run = {"trials": trials}
    assert best_trial(run)["number"] == 0
    smoothed = smoothed_trial(run, noise_sd=0.2)  # the noise fixed: a lucky 0.9 among 1.5s is mostly noise
    assert (smoothed["batch_size"], smoothed["lr"]) == (16, 0.01)
    three = {"runs": {str(s): {"value": v} for s, v in enumerate((1.0, 1.0, math.e))}}
    two = {"runs": {"1": {"value": 0.5}, "2": {"value": 5.0}, "3": {"value": None}}}  # too few seeds: left out
    assert seed_noise({"cells": [three, two]}) == pytest.approx(statistics.stdev([0.0, 0.0, 1.0]))
