"""How far does one seed move the steps to a target? The floor under the S(B) fit's intervals.

    python -m benchmarks.step_noise   # a few seconds: it reads the cached sweeps, trains nothing

The S(B) fit (``bstune.analysis.fit_critical_batch``) has one run per batch size, each at one seed. Its
intervals come from the residuals' spread, which three or four points can put near zero by chance; they
are never narrower than a per-point spread of ``STEP_NOISE`` in ln S allows. This measures that spread on
the benchmark grids (``benchmarks/results/sweeps/``, every cell at 3 ground-truth seeds): for targets that
a quarter and half of the cells' seed-averaged final training losses reach, the sd of ln(steps to the
target) across a cell's seeds, over the cells whose every seed reaches it. A target met at a cell's first
evaluation gives no spread (the milestones bound it), so those rows lean low.

Writes ``benchmarks/results/step_noise.{json,md}`` (``--out``), with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks._provenance import ROOT, run_facts
from bstune.analysis import steps_to_target
from bstune.analysis._critical import STEP_NOISE
from bstune.metrics import Direction

SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "step_noise.md"
QUANTILES = (0.25, 0.5)  # the share of cells whose seed-averaged final training loss is at or below the target


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(cells: list[dict[str, Any]], target: float) -> list[float]:
    """The sd of ln(steps to ``target``) across each cell's seeds, for the cells whose every seed reaches it."""
    out = []
    for cell in cells:
        runs = list(cell["runs"].values())
        if len(runs) < 2 or any(r["status"] != "completed" or not r.get("history") for r in runs):
            continue
        steps = [
            steps_to_target(r["history"], int(cell["batch_size"]), target, "train_loss", direction=Direction.MINIMIZE)
            for r in runs
        ]
        if all(s.reached and s.steps > 0 for s in steps):
            out.append(statistics.stdev(math.log(s.steps) for s in steps))
    return out


def measure(path: Path) -> list[dict[str, Any]]:
    cells = json.loads(path.read_text())["cells"]
    finals = [
        statistics.mean(r["history"][-1]["train_loss"] for r in c["runs"].values())
        for c in cells
        if c["runs"] and all(r["status"] == "completed" and r.get("history") for r in c["runs"].values())
    ]
    rows = []
    for q in QUANTILES:
        target = _quantile(finals, q)
        sds = spread(cells, target)
        rows.append(
            {
                "problem": path.stem,
                "cells_reaching": q,
                "target": target,
                "cells": len(sds),
                "median_sd": statistics.median(sds) if sds else None,
                "p90_sd": _quantile(sds, 0.9) if sds else None,
                "seeds": len(cells[0]["runs"]) if cells else 0,
            }
        )
    return rows


def to_markdown(facts: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Seed-to-seed spread of ln(steps to a training-loss target), benchmark grids",
        "",
        f"{facts['date']}, `{facts['command']}`, git {facts['git_commit']}, {facts['machine']['cpu_model']}. "
        f"bstune's floor under the S(B) fit's intervals: STEP_NOISE = {STEP_NOISE}.",
        "",
        "| problem | target (cells reaching) | cells | median sd | 90th percentile sd | seeds a cell |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        med = "n/a" if r["median_sd"] is None else f"{r['median_sd']:.3f}"
        p90 = "n/a" if r["p90_sd"] is None else f"{r['p90_sd']:.3f}"
        lines.append(
            f"| {r['problem']} | {r['target']:.4g} ({r['cells_reaching']:.0%}) | {r['cells']} | {med} | {p90} | "
            f"{r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .md to write (a .json beside it)")
    args = parser.parse_args(argv)
    facts = run_facts("benchmarks/step_noise.py", sys.argv[1:] if argv is None else argv)
    rows = [row for path in sorted(SWEEPS.glob("*.json")) for row in measure(path)]
    args.out.write_text(to_markdown(facts, rows))
    args.out.with_suffix(".json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=1) + "\n")
    print(to_markdown(facts, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
