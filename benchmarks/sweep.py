"""Ground truth by exhaustive sweep: every (B, η) of a problem's grid at every ground-truth seed.

Each run is ``bstune.train`` for the problem's full trial budget (samples), evaluated twice
as often as a study trial so that S(B) is resolved finely; the study's objective (the
smallest validation loss over the study's own milestones, every other evaluation here)
is read off the same run. Runs are deterministic for a seed, so a study trial with the
same (B, η, seed) sees exactly the same numbers.

* **Seed-averaged surface.** A cell's value is the mean over the ground-truth seeds of
  that objective; a cell that diverges at any seed is not a candidate (a config that
  fails one run in three is not a good config). The grid best is the minimum of this
  surface. Averaging is the point: on the digits MLP a single seed moves a fixed
  config's value by 18-43 %, so a single-seed grid best is a needle placed by seed noise
  (the superseded ``study_vs_grid`` benchmark showed it).
* **S(B) and B_crit.** Training loss averaged over the seeds per cell; a target chosen
  with ``bstune.analysis.choose_target`` (the same rule the report uses); steps to it per
  batch size (the best η per B); ``fit_critical_batch`` (McCandlish eq. 2.11, fitted in
  log space). Batch sizes that never reach the target within the sample budget are
  lower bounds, left out of the fit.

Sweeps are cached per problem in ``results/sweeps/<problem>[_quick].json`` and reused while
their settings match; when only the grid or the seeds change, the runs already made are kept.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import bstune
from benchmarks.problems import PROBLEMS, Problem, task_of
from bstune.analysis import choose_target, fit_critical_batch, steps_by_batch
from bstune.errors import EstimationError

log = logging.getLogger("benchmarks.sweep")


def spec_of(problem: Problem, suite: str) -> dict[str, Any]:
    every = -(-problem.budget // problem.n_evals)
    if every != 2 * -(-problem.budget // (2 * problem.n_evals)):
        raise ValueError(f"{problem.name}: budget {problem.budget} does not put the study's milestones on the sweep's")
    return {
        "problem": problem.name,
        "batch_sizes": problem.sweep_batches[suite],
        "lrs": problem.sweep_lrs[suite],
        "seeds": problem.sweep_seeds[suite],
        "budget_samples": problem.budget,
        "n_evals": problem.n_evals,
        "eval_factor": 2,
        "train_kwargs": problem.train_kwargs,
    }


def objective(history: list[dict[str, Any]], every: int, budget: int) -> float | None:
    """The study's objective from a run's history: min finite val loss at the study's milestones."""
    vals = [
        r["val_loss"]
        for r in history
        if (r["milestone"] % every == 0 or r["milestone"] == budget) and math.isfinite(r["val_loss"])
    ]
    return min(vals) if vals else None


def run_cell(problem: Problem, batch: int, lr: float, seed: int, n_evals: int) -> dict[str, Any]:
    run = bstune.train(task_of(problem.name), problem.train_config(batch, lr, seed, n_evals=n_evals))
    history = [
        {"milestone": r.milestone, "samples": r.samples, "train_loss": r.train_loss, "val_loss": r.val_loss}
        for r in run.history
    ]
    every = -(-problem.budget // problem.n_evals)
    return {
        "status": run.status.value,
        "value": objective(history, every, problem.budget) if run.status.value == "completed" else None,
        "samples": run.samples,
        "wall_s": run.wall_time_s,
        "history": history,
    }


def load_or_run(problem: Problem, suite: str, out_dir: Path) -> dict[str, Any]:
    spec = spec_of(problem, suite)
    path = out_dir / "sweeps" / f"{problem.name}{'_quick' if suite == 'quick' else ''}.json"
    reuse: dict[tuple[int, float], dict[str, Any]] = {}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("spec") == spec:
            log.info("sweep %s: read from %s", problem.name, path)
            return cached | {"from_cache": True}
        same = ("problem", "budget_samples", "n_evals", "eval_factor", "train_kwargs")
        if all(cached.get("spec", {}).get(k) == spec[k] for k in same):  # only the grid or the seeds changed
            reuse = {(c["batch_size"], c["lr"]): c["runs"] for c in cached["cells"]}
    started = time.perf_counter()
    cells = []
    n = len(spec["batch_sizes"]) * len(spec["lrs"])
    kept = 0  # (cell, seed) runs taken from the cache: runs are deterministic for a seed
    for batch in spec["batch_sizes"]:
        for lr in spec["lrs"]:
            old = reuse.get((batch, lr), {})
            runs = {}
            for s in map(str, spec["seeds"]):
                if s in old:
                    runs[s], kept = old[s], kept + 1
                else:
                    runs[s] = run_cell(problem, batch, lr, int(s), problem.n_evals * 2)
            cells.append({"batch_size": batch, "lr": lr, "runs": runs})
            log.debug("sweep %s %d/%d B=%d lr=%.3g", problem.name, len(cells), n, batch, lr)
    # wall_s: this invocation only (runs kept from an earlier grid or seed set cost nothing here)
    out = {"spec": spec, "cells": cells, "wall_s": time.perf_counter() - started, "date": _now(), "reused": kept}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, allow_nan=True) + "\n")
    log.info("sweep %s: %d cells x %d seeds in %.0fs", problem.name, n, len(spec["seeds"]), out["wall_s"])
    return out | {"from_cache": False}


def cell_value(cell: dict[str, Any]) -> float | None:
    """Seed-averaged objective; None when any seed failed."""
    values = [r["value"] for r in cell["runs"].values()]
    if any(v is None for v in values):
        return None
    return statistics.fmean(values)


def _mean_history(cell: dict[str, Any]) -> list[dict[str, Any]] | None:
    runs = list(cell["runs"].values())
    if any(r["status"] != "completed" for r in runs):
        return None
    n = min(len(r["history"]) for r in runs)
    return [
        {
            "samples": runs[0]["history"][i]["samples"],
            "train_loss": statistics.fmean(r["history"][i]["train_loss"] for r in runs),
        }
        for i in range(n)
    ]


def analyse(sweep: dict[str, Any]) -> dict[str, Any]:
    """Grid best of the seed-averaged surface, per-B bests, S(B) and the B_crit fit."""
    cells = sweep["cells"]
    valued = [(c, cell_value(c)) for c in cells]
    ok = [(c, v) for c, v in valued if v is not None]
    best_cell, best = min(ok, key=lambda cv: cv[1])
    per_batch: dict[str, dict[str, Any]] = {}
    for c, v in ok:
        k = str(c["batch_size"])
        if k not in per_batch or v < per_batch[k]["value"]:
            per_batch[k] = {"lr": c["lr"], "value": v}
    # the seed noise of one config, against which 2 % is judged
    spreads = []
    for c, v in ok:
        vals = [r["value"] for r in c["runs"].values()]
        if len(vals) > 1 and v <= 1.2 * best:
            spreads.append(statistics.stdev(vals) / v)
    trials = []
    for c in cells:
        hist = _mean_history(c)
        if hist:
            trials.append({"batch_size": c["batch_size"], "lr": c["lr"], "status": "completed", "history": hist})
    critical: dict[str, Any] = {}
    try:
        target = choose_target(trials, "train_loss")
        points = steps_by_batch(trials, target, "train_loss")
        critical = {
            "target_train_loss": target,
            "points": [
                {
                    "batch_size": p.batch_size,
                    "steps": p.steps,
                    "samples": p.samples,
                    "lr": p.lr,
                    "reached": not p.lower_bound,
                }
                for p in points
            ],
        }
        fit = fit_critical_batch(points)
        critical |= {
            "b_crit": fit.b_crit,
            "b_crit_ci": list(fit.b_crit_ci),
            "s_min": fit.s_min,
            "e_min": fit.e_min,
            "edge": fit.edge,
            "residual_rms": fit.residual_rms,
            "summary": fit.summary,
        }
    except (EstimationError, ValueError) as exc:
        critical["error"] = str(exc)
    within = sum(1 for _, v in ok if v <= 1.02 * best)
    return {
        "best": {"batch_size": best_cell["batch_size"], "lr": best_cell["lr"], "value": best},
        "per_batch": per_batch,
        "cells_within_2pct": within,
        "cells_ok": len(ok),
        "cells": len(cells),
        "seed_cv_near_best": statistics.median(spreads) if spreads else None,
        "critical": critical,
    }


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main_sweep(names: list[str], suite: str, out_dir: Path) -> dict[str, Any]:
    return {n: load_or_run(PROBLEMS[n], suite, out_dir) for n in names}
