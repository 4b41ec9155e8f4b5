"""The benchmark suite's quick configuration runs end to end and writes what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path: Path) -> None:
    proc = _run_suite(tmp_path, "--measures", "sweep,efficiency,noise,bcrit,overhead")  # ray: its own test
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "suite_quick.json").read_text())
    assert set(data) >= {"sweep", "efficiency", "noise", "bcrit", "overhead"}
    sweep = data["sweep"]["linreg"]["analysis"]
    assert sweep["best"]["value"] > 0 and sweep["cells_ok"] > 0
    eff = data["efficiency"]["linreg"]
    for run in eff["runs"]:
        # samples to the target count the probe and every trial up to the one that reached it
        assert run["samples_total"] == run["samples_probe"] + sum(t["samples"] for t in run["trials"])
        hit = run["samples_to"]["0.02"]
        assert hit is None or run["samples_probe"] < hit <= run["samples_total"]
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
def test_quick_suite_ray_asha(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
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
