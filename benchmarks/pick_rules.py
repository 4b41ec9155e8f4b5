"""The final pick without re-scoring, read off stored studies: the best trial, or a smoothed one.

A study without re-scoring recommends its completed trial with the best value at its own seed,
and one seed moves a config's value by 9-35% near the best on the digits problems (§2). A
Gaussian process fitted to every completed trial (log B, log η → log value, a Matérn 5/2 kernel
plus a fitted white-noise term, scikit-learn) pools neighbouring trials: its posterior mean at
a trial is that trial's value shrunk toward what the trials around it measured. Recommending the
completed trial with the lowest posterior mean is the usual choice in noisy Bayesian
optimisation. A second variant fixes the noise instead of fitting it, at what a study cannot
know but the grid does: the seed-to-seed standard deviation of log value, the median over the
grid's 10 best cells. This script sets the three side by side on the efficiency runs of
``results/suite_full.json``, each pick judged on the held-out judge seeds (the same
:class:`~benchmarks.efficiency.Evaluator` as §2, cached). ``python -m benchmarks.pick_rules``
writes ``results/pick_rules.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

from benchmarks._provenance import run_facts
from benchmarks.rescore_rules import stored_studies

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks.pick_rules")
PROBLEMS = "linreg,digits_mlp,digits_cnn,char_lm,char_lm_adamw"


def _completed(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        t
        for t in run["trials"]
        if t["status"] == "completed" and t["value"] is not None and math.isfinite(t["value"]) and t["value"] > 0
    ]


def best_trial(run: dict[str, Any]) -> dict[str, Any]:
    """What bstune recommends without re-scoring: the best value at the trial's own seed."""
    return min(_completed(run), key=lambda t: t["value"])


def smoothed_trial(run: dict[str, Any], noise_sd: float | None = None) -> dict[str, Any]:
    """The completed trial with the lowest posterior mean of a GP fitted to every completed trial: its noise
    fitted, or ``noise_sd`` (of log value) where given."""
    import numpy as np
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    done = _completed(run)
    if len(done) < 4:
        return best_trial(run)
    x = np.array([[math.log2(t["batch_size"]), math.log10(t["lr"])] for t in done])
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-9)
    y = np.log([t["value"] for t in done])
    y = y - y.mean()
    signal = ConstantKernel(max(float(y.var()), 1e-6), (1e-6, 1e3)) * Matern([1.0, 1.0], (0.1, 10.0), nu=2.5)
    if noise_sd is None:
        gp = GaussianProcessRegressor(signal + WhiteKernel(0.1 * max(float(y.var()), 1e-6), (1e-8, 1.0)))
    else:
        gp = GaussianProcessRegressor(signal, alpha=noise_sd**2)
    gp.set_params(n_restarts_optimizer=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at a bound
        gp.fit(x, y)
    return done[int(np.argmin(gp.predict(x)))]


def seed_noise(sweep: dict[str, Any], cells: int = 10) -> float:
    """The seed-to-seed standard deviation of log value near the grid's best: the median over its ``cells`` best."""
    spread = []
    for cell in sweep["cells"]:
        values = [r.get("value") for r in cell["runs"].values()]
        values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        if len(values) >= 3:
            spread.append((statistics.fmean(values), statistics.stdev(math.log(v) for v in values)))
    return statistics.median(sd for _, sd in sorted(spread)[:cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=PROBLEMS)
    parser.add_argument("--methods", default="prior,baseline")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    stored, judge = stored_studies(args.out)
    results: dict[str, Any] = {}
    lines = []
    for p in [p for p in args.problems.split(",") if p]:
        evaluator = judge(p)
        sd = seed_noise({"cells": [{"runs": runs} for runs in evaluator.grid.values()]})  # the sweep's cells
        for m in [m for m in args.methods.split(",") if m]:
            rows = []
            for run in sorted((r for r in stored[p]["runs"] if r["method"] == m), key=lambda r: r["seed"]):
                picks = {"best": best_trial(run), "fitted": smoothed_trial(run), "grid": smoothed_trial(run, sd)}
                judged = {k: float(evaluator.judge(t["batch_size"], t["lr"])["ratio"]) for k, t in picks.items()}
                rows.append(
                    {"seed": run["seed"], "ratios": judged, "trials": {k: t["number"] for k, t in picks.items()}}
                )
            results[f"{p} {m}"] = {"noise_sd": sd, "runs": rows}
            cells = []
            for rule in ("best", "fitted", "grid"):
                ratios = [r["ratios"][rule] for r in rows]
                cells.append(f"{statistics.median(ratios):.3f} [{statistics.fmean(ratios):.3f}]")
                if rule != "best":
                    base = [r["ratios"]["best"] for r in rows]
                    same = sum(r["trials"][rule] == r["trials"]["best"] for r in rows)
                    better = sum(a < b for a, b in zip(ratios, base, strict=True))
                    worse = sum(a > b for a, b in zip(ratios, base, strict=True))
                    cells.append(f"{same} / {better} / {worse}")
            lines.append(f"| {p}, {m} | {len(rows)} | {sd:.4f} | " + " | ".join(cells) + " |")
            log.info("%s", lines[-1])
    facts = run_facts("benchmarks/pick_rules.py", sys.argv[1:] if argv is None else argv)
    (args.out / "pick_rules.json").write_text(json.dumps({"run": facts, "results": results}, indent=1) + "\n")
    md = [
        "# The final pick without re-scoring: the best trial, or the GP-smoothed one",
        "",
        f"{facts['date']}, `{facts['command']}`, {facts['machine']['cpu_model']}, git {facts['git_commit']}.",
        "Final pick / grid best, judged on held-out seeds; see `benchmarks/pick_rules.py`.",
        "",
        "Ratios: median [mean] over seeds. Against the best trial: seeds where the rule picks the same trial /",
        "better / worse.",
        "",
        "| problem, method | seeds | grid's seed noise (sd of log value) | best trial | GP, noise fitted | against "
        "best | GP, the grid's noise | against best |",
        "|---|---:|---:|---:|---:|---|---:|---|",
        *lines,
    ]
    (args.out / "pick_rules.md").write_text("\n".join(md) + "\n")
    log.info("wrote %s", args.out / "pick_rules.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
