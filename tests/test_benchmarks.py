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
    proc = _run_suite(tmp_path)
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
    assert any(r.get("pending") for r in data["overhead"]["rows"])  # the Ray row says it is pending
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
