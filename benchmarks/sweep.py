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
* **More seeds near the best.** Where one seed moves a config by more than the 2 % target
  (the digits MLP: ~9 %), three seeds leave the grid best uncertain by more than the target.
  Cells whose mean over the sweep seeds is within ``refine_margin`` (25 %) of the best are
  then run at every *judge seed* too (``Problem.judge_seeds``: 32 on the digits MLP), and the
  grid best is the best of those cells over all their seeds. Its standard error and the
  winner's-curse bias (the best picked on half the seeds, valued on the other half) are
  reported beside it.
* **S(B) and B_crit.** Training loss averaged over the seeds per cell; a target chosen
  with ``bstune.analysis.choose_target`` (the same rule the report uses); steps to it per
  batch size (the best η per B); ``fit_critical_batch`` (McCandlish eq. 2.11, fitted in
  log space). Batch sizes that never reach the target within the sample budget are
  lower bounds, left out of the fit.

Sweeps are cached per problem in ``results/sweeps/<problem>[_quick].json`` and reused while
their settings match; when only the grid or the seeds change, the runs already made are kept.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import multiprocessing
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

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
        "judge_seeds": problem.seeds_to_judge(suite),
        "refine_margin": problem.refine_margin,
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


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_cell_by_name(name: str, batch: int, lr: float, seed: int, n_evals: int) -> dict[str, Any]:
    return run_cell(PROBLEMS[name], batch, lr, seed, n_evals)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool of ``workers`` processes for the whole benchmark run (each imports torch once)."""
    if workers not in _POOLS:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that has torch's thread pools
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        atexit.register(_POOLS[workers].shutdown, cancel_futures=True)
    return _POOLS[workers]


def run_many(
    problem: Problem, jobs: Sequence[tuple[int, float, int]], n_evals: int, workers: int = 1
) -> list[dict[str, Any]]:
    """``run_cell`` for every (B, η, seed), in ``workers`` processes; results in the order asked.

    Runs are independent and deterministic for a seed, so the order they finish in changes nothing.
    A run that raises cancels the runs not yet started and re-raises.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [run_cell(problem, b, lr, s, n_evals) for b, lr, s in jobs]
    pool = _pool(workers)
    futures = [pool.submit(_run_cell_by_name, problem.name, b, lr, s, n_evals) for b, lr, s in jobs]
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def load_or_run(problem: Problem, suite: str, out_dir: Path, workers: int = 1) -> dict[str, Any]:
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
    cells = [
        {"batch_size": batch, "lr": lr, "runs": dict(reuse.get((batch, lr), {}))}
        for batch in spec["batch_sizes"]
        for lr in spec["lrs"]
    ]
    kept = 0  # (cell, seed) runs taken from the cache: runs are deterministic for a seed

    def fill(todo: list[tuple[dict[str, Any], str]]) -> None:
        nonlocal kept
        missing = [(c, s) for c, s in todo if s not in c["runs"]]
        kept += len(todo) - len(missing)
        jobs = [(c["batch_size"], c["lr"], int(s)) for c, s in missing]
        for (c, s), run in zip(missing, run_many(problem, jobs, problem.n_evals * 2, workers), strict=True):
            c["runs"][s] = run

    fill([(c, s) for c in cells for s in map(str, spec["seeds"])])
    refined = candidates(cells, spec)
    extra = [s for s in map(str, spec["judge_seeds"]) if int(s) not in spec["seeds"]]
    fill([(c, s) for c in refined for s in extra])
    refined_ids = {id(c) for c in refined}
    for c in cells:  # only the seeds of this spec: a cached run of a seed set since dropped is not counted
        wanted = spec["judge_seeds"] if id(c) in refined_ids else spec["seeds"]
        c["runs"] = {s: c["runs"][s] for s in map(str, wanted)}
    log.info("sweep %s: %d cells refined to %d seeds", problem.name, len(refined), len(spec["judge_seeds"]))
    # wall_s: this invocation only (runs kept from an earlier grid or seed set cost nothing here)
    out = {"spec": spec, "cells": cells, "wall_s": time.perf_counter() - started, "date": _now(), "reused": kept}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, allow_nan=True) + "\n")
    log.info("sweep %s: %d cells x %d seeds in %.0fs", problem.name, len(cells), len(spec["seeds"]), out["wall_s"])
    return out | {"from_cache": False}


def cell_value(cell: dict[str, Any], seeds: Sequence[int | str] | None = None) -> float | None:
    """Seed-averaged objective (over ``seeds``, default every seed run); None when any seed failed."""
    runs = cell["runs"] if seeds is None else {str(s): cell["runs"][str(s)] for s in seeds}
    values = [r["value"] for r in runs.values()]
    if any(v is None for v in values):
        return None
    return statistics.fmean(values)


def candidates(cells: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Cells within ``refine_margin`` of the best on the sweep seeds: those run at every judge seed."""
    if spec["judge_seeds"] == spec["seeds"]:
        return []
    valued = [(c, cell_value(c, spec["seeds"])) for c in cells]
    ok = [(c, v) for c, v in valued if v is not None]
    if not ok:
        return []
    best = min(v for _, v in ok)
    return [c for c, v in ok if v <= (1 + spec["refine_margin"]) * best]


def winners_curse(cells: list[dict[str, Any]], seeds: list[str], splits: int = 200) -> dict[str, Any] | None:
    """How far picking the best of many noisy means flatters it: pick on half the seeds, value on the other.

    The minimum of many noisy means lies below the true value of the cell it picks; a cell
    picked on one half of the seeds and valued on the other half does not. Seed effects
    shared by every cell (one seed's initialisation suits all configs) would swamp that
    comparison, so each half's values are taken relative to the mean of all cells on the
    same half. ``bias``: the picked cell's relative value on its picking half over that on
    the other half, minus 1, averaged over ``splits`` random halvings (seeded: the same
    data give the same number); negative means flattered. Also returned: the cell picked
    most often, and in how many of the splits.
    """
    if len(seeds) < 4 or not cells:
        return None
    rng = random.Random(0)
    biases: list[float] = []
    picks: dict[tuple[int, float], int] = {}
    for _ in range(splits):
        order = rng.sample(seeds, len(seeds))
        half_a, half_b = order[: len(seeds) // 2], order[len(seeds) // 2 :]
        scored = [(c, cell_value(c, half_a), cell_value(c, half_b)) for c in cells]
        ok = [(c, a, b) for c, a, b in scored if a is not None and b is not None]
        if not ok:
            return None
        mean_a = statistics.fmean(a for _, a, _ in ok)
        mean_b = statistics.fmean(b for _, _, b in ok)
        cell, a, b = min(ok, key=lambda t: t[1])
        biases.append((a / mean_a) / (b / mean_b) - 1)
        key = (cell["batch_size"], cell["lr"])
        picks[key] = picks.get(key, 0) + 1
    (batch, lr), count = max(picks.items(), key=lambda kv: kv[1])
    return {"bias": statistics.fmean(biases), "splits": splits, "batch_size": batch, "lr": lr, "picked": count}


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
    judge_seeds = [str(s) for s in sweep["spec"].get("judge_seeds", sweep["spec"]["seeds"])]
    # with refinement, the best is one of the cells run at every judge seed (the others were >25 % off)
    refined = [(c, v) for c, v in ok if set(c["runs"]) >= set(judge_seeds)]
    if len(judge_seeds) > len(sweep["spec"]["seeds"]) and not refined:
        raise ValueError(
            f"sweep {sweep['spec']['problem']}: no cell completed at every one of the {len(judge_seeds)} judge seeds"
        )
    best_cell, best = min(refined or ok, key=lambda cv: cv[1])
    best_values = [r["value"] for r in best_cell["runs"].values()]
    best_se = statistics.stdev(best_values) / math.sqrt(len(best_values)) / best if len(best_values) > 1 else None
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
        "best": {
            "batch_size": best_cell["batch_size"],
            "lr": best_cell["lr"],
            "value": best,
            "seeds": len(best_values),
            "rel_se": best_se,
            "per_seed": {s: r["value"] for s, r in best_cell["runs"].items()},
        },
        "cells_refined": len(refined) if len(judge_seeds) > len(sweep["spec"]["seeds"]) else 0,
        "winners_curse": winners_curse([c for c, _ in refined], judge_seeds) if refined else None,
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
