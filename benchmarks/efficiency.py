"""Tuning efficiency: training samples until a study first holds a config within 2 % of the grid best.

Methods (same space, budget per trial, number of trials and seeds):

* ``prior``     ``bstune.Study(mode="prior")``: probe, then multivariate TPE in the prior's coordinates;
* ``baseline``  ``bstune.Study(mode="baseline")``: multivariate TPE over log-uniform (B, η), same pruner;
* ``random``    the baseline with Optuna's ``RandomSampler`` (only the sampler differs);
* ``ray_asha``  what a user would pick instead: Ray Tune, random search (``BasicVariantGenerator``)
                over log-uniform (B, η), ``ASHAScheduler(time_attr="samples")`` with rungs at the
                same sample milestones, a function trainable that calls ``bstune.train`` and
                ``tune.report``s at every milestone; one trial at a time (as the Optuna studies);
* ``prior+rescore``, ``baseline+rescore``  the same studies with re-scoring on (the study's
                default since it was added: the 3 best trials again at 2 more seeds, best mean
                recommended); its recommendation is the last incumbent, at the samples it cost.
                The four methods above run with it off (``rescore_top=0``): the search alone.

The measure, chosen on principle before looking at any method's numbers:

* **Ground truth** is the seed-averaged surface of the sweep (``benchmarks/sweep.py``); the
  target is 1.02 × its minimum.
* A study's **incumbent** after each trial is its best *completed* trial so far, by the
  study's own (single-seed) objective: what the study would hand the user at that point.
  Each new incumbent config is retrained at the same held-out ground-truth seeds and judged
  by its seed-averaged value (cached by config), so "within 2 %" is about the config, not
  the luck of the study's seed.
* **Samples to target**: the probe's samples (prior only) plus every trial's samples, pruned
  and failed ones included, in trial order, up to and including the trial that made the
  first incumbent within 2 %. A study that never gets there counts as infinitely many
  (medians say "not reached"); its best incumbent's distance from the grid best is reported.
  The retraining done to judge incumbents is the benchmark's cost, not the method's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

import bstune
from benchmarks.problems import PROBLEMS, Problem, task_of
from benchmarks.sweep import cell_value
from bstune.training import Decision, EvalRecord

log = logging.getLogger("benchmarks.efficiency")

METHODS = ("prior", "baseline", "random", "ray_asha")
# the study's re-scoring on (its default: the 3 best trials again at 2 more seeds, best mean
# recommended); the four methods above run with it off, the search alone
RESCORED = ("prior+rescore", "baseline+rescore")
TOLERANCES = (0.02, 0.05, 0.10)


class RandomSearchStudy(bstune.Study):
    """The baseline mode with Optuna's RandomSampler instead of TPE; nothing else differs."""

    def _open(self) -> optuna.Study:
        study = super()._open()
        study.sampler = optuna.samplers.RandomSampler(seed=self.seed)
        return study


# -- judging configs on the seed-averaged surface ----------------------------------------------
class Evaluator:
    """Seed-averaged objective of any (B, η), from the sweep where it has the cell, else trained."""

    def __init__(self, problem: Problem, sweep: dict[str, Any], cache_path: Path) -> None:
        self.problem, self.cache_path = problem, cache_path
        self.seeds = sweep["spec"]["seeds"]
        self.grid = {(c["batch_size"], c["lr"]): cell_value(c) for c in sweep["cells"]}
        self.cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        self.trained = 0

    def value(self, batch: int, lr: float) -> float:
        if (batch, lr) in self.grid:
            v = self.grid[(batch, lr)]
            return math.inf if v is None else v
        key = f"{batch}|{lr:.6g}|{','.join(map(str, self.seeds))}|{self.problem.budget}"
        if key not in self.cache:
            values = []
            for s in self.seeds:
                run = bstune.train(task_of(self.problem.name), self.problem.train_config(batch, lr, s))
                self.trained += run.samples
                finite = [r.val_loss for r in run.history if math.isfinite(r.val_loss)]
                values.append(min(finite) if run.status.value == "completed" and finite else None)
            self.cache[key] = None if any(v is None for v in values) else statistics.fmean(values)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(json.dumps(self.cache, indent=0) + "\n")
        v = self.cache[key]
        return math.inf if v is None else float(v)


# -- the methods -------------------------------------------------------------------------------
def run_optuna(problem: Problem, method: str, seed: int, n_trials: int) -> dict[str, Any]:
    cls = RandomSearchStudy if method == "random" else bstune.Study
    rescore = method.endswith("+rescore")
    method = method.removesuffix("+rescore")
    study = cls(
        task_of(problem.name),
        problem.space,
        n_trials=n_trials,
        budget_samples=problem.budget,
        n_evals=problem.n_evals,
        seed=seed,
        mode="prior" if method == "prior" else "baseline",
        pruner="hyperband",
        device="cpu",
        progress=False,
        **({} if rescore else {"rescore_top": 0}),
    )
    t0 = time.perf_counter()
    result = study.run()
    wall = time.perf_counter() - t0
    trials = [
        {
            "number": t.number,
            "status": t.status,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "value": t.value,
            "samples": t.samples,
            "history": t.history,
        }
        for t in sorted(result.trials, key=lambda t: t.number)
    ]
    out: dict[str, Any] = {"samples_probe": result.samples_probe, "trials": trials, "wall_s": wall}
    if result.rescored:
        out["rescore"] = {
            "samples": result.samples_rescore,
            "pick": {"trial": result.best_trial, **{k: result.best_config[k] for k in ("batch_size", "lr")}},
            "candidates": [r.to_dict() for r in result.rescored],
        }
    if result.probe is not None and result.prior is not None:
        pr = result.probe
        out["probe"] = {
            "b_simple": pr.b_simple if math.isfinite(pr.b_simple) else None,
            "b_simple_ci": [v if math.isfinite(v) else None for v in pr.b_simple_ci],
            "samples_used": pr.samples_used,
        }
        out["prior"] = result.prior.to_dict()
        out["result"] = result  # for the report's B_crit; dropped before JSON
    return out


def _ray_trainable(config: dict[str, Any]) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    problem = PROBLEMS[config["problem"]]
    cfg = problem.train_config(int(config["batch_size"]), float(config["lr"]), int(config["seed"]))
    best = [math.inf]

    def report(rec: EvalRecord) -> Decision:
        if math.isfinite(rec.val_loss):
            best[0] = min(best[0], rec.val_loss)
        value = best[0] if math.isfinite(best[0]) else 1e9
        tune.report({"objective": value, "samples": rec.milestone, "samples_trained": rec.samples, "status": "ok"})
        return Decision.CONTINUE

    run = bstune.train(task_of(problem.name), cfg, report)
    if run.status.value != "completed":  # diverged: one last report at max_t ends the trial
        tune.report(
            {"objective": 1e9, "samples": problem.budget, "samples_trained": run.samples, "status": run.status.value}
        )


def run_ray_asha(problem: Problem, seed: int, n_trials: int) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
        # address="local": always a fresh private cluster, never one that `ray start` left running here
        # on 127.0.0.2, which Ray keeps (it swaps 127.0.0.1 for the host's outward address): loopback only
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.2",
        )
    every = -(-problem.budget // problem.n_evals)
    space = problem.space
    param_space = {
        "problem": problem.name,
        "seed": seed,
        "batch_size": tune.lograndint(space["batch_size"]["min"], space["batch_size"]["max"] + 1),
        "lr": tune.loguniform(space["lr"]["min"], space["lr"]["max"]),
    }
    # Rungs at 1/9 and 1/3 of the budget, reduction factor 3: Hyperband's rungs in the Optuna studies
    scheduler = ASHAScheduler(time_attr="samples", max_t=problem.budget, grace_period=every, reduction_factor=3)
    storage = tempfile.mkdtemp(prefix="bstune-bench-ray-")
    tuner = tune.Tuner(
        # both CPUs per trial: one trial at a time, as the Optuna studies (and max_concurrent_trials
        # does not apply to BasicVariantGenerator)
        tune.with_resources(_ray_trainable, {"cpu": 2}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="min",
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed),
            num_samples=n_trials,
            reuse_actors=True,  # one worker process for all trials: no per-trial interpreter start
        ),
        run_config=tune.RunConfig(storage_path=storage, name=f"{problem.name}-{seed}", verbose=0),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    trials = []
    for res in grid:
        m = re.search(r"_(\d{5})_", Path(res.path).name)
        number = int(m.group(1)) if m else len(trials)
        df = res.metrics_dataframe
        if df is None or len(df) == 0:
            trials.append(
                {
                    "number": number,
                    "status": "failed",
                    "batch_size": res.config["batch_size"],
                    "lr": res.config["lr"],
                    "value": None,
                    "samples": 0,
                }
            )
            continue
        last = df.iloc[-1]
        failed = str(last.get("status", "ok")) != "ok" or res.error is not None
        done = int(last["samples"]) >= problem.budget and not failed
        trials.append(
            {
                "number": number,
                "status": "completed" if done else ("failed" if failed else "pruned"),
                "batch_size": int(res.config["batch_size"]),
                "lr": float(res.config["lr"]),
                "value": float(last["objective"]) if done else None,
                "samples": int(df["samples_trained"].max()),
            }
        )
    trials.sort(key=lambda t: t["number"])
    return {"samples_probe": 0, "trials": trials, "wall_s": wall}


# -- the measure ---------------------------------------------------------------------------------
def trace(run: dict[str, Any], evaluator: Evaluator, best: float) -> dict[str, Any]:
    """Incumbents in trial order, judged on the seed-averaged surface; samples to each tolerance."""
    cumulative = run["samples_probe"]
    own_best = math.inf
    incumbents = []
    hit: dict[str, int | None] = {f"{t:g}": None for t in TOLERANCES}
    best_ratio = math.inf
    for t in run["trials"]:
        cumulative += t["samples"]
        t["cumulative_samples"] = cumulative
        if t["status"] != "completed" or t["value"] is None or not t["value"] < own_best:
            continue
        own_best = t["value"]
        avg = evaluator.value(t["batch_size"], t["lr"])
        ratio = avg / best
        best_ratio = min(best_ratio, ratio)
        incumbents.append(
            {
                "trial": t["number"],
                "cumulative_samples": cumulative,
                "batch_size": t["batch_size"],
                "lr": t["lr"],
                "own_value": own_best,
                "seed_avg_value": avg if math.isfinite(avg) else None,
                "ratio": ratio,
            }
        )
        for tol in TOLERANCES:
            k = f"{tol:g}"
            if hit[k] is None and ratio <= 1 + tol:
                hit[k] = cumulative
    rescore = run.get("rescore")
    if rescore is not None:  # the study's recommendation after re-scoring, at the samples it cost
        cumulative += rescore["samples"]
        pick = rescore["pick"]
        own = next(t["value"] for t in run["trials"] if t["number"] == pick["trial"])
        avg = evaluator.value(pick["batch_size"], pick["lr"])
        ratio = avg / best
        best_ratio = min(best_ratio, ratio)
        incumbents.append(
            {
                "trial": pick["trial"],
                "cumulative_samples": cumulative,
                "batch_size": pick["batch_size"],
                "lr": pick["lr"],
                "own_value": own,
                "seed_avg_value": avg if math.isfinite(avg) else None,
                "ratio": ratio,
                "rescored": True,
            }
        )
        for tol in TOLERANCES:
            k = f"{tol:g}"
            if hit[k] is None and ratio <= 1 + tol:
                hit[k] = cumulative
    final = incumbents[-1] if incumbents else None
    return {
        "samples_to": hit,
        "samples_total": cumulative,
        "incumbents": incumbents,
        "final_ratio": final["ratio"] if final else None,
        "best_incumbent_ratio": best_ratio if math.isfinite(best_ratio) else None,
        "status_counts": {
            s: sum(1 for t in run["trials"] if t["status"] == s) for s in ("completed", "pruned", "failed")
        },
    }


def run_efficiency(
    problem: Problem,
    sweep: dict[str, Any],
    analysis: dict[str, Any],
    methods: list[str],
    seeds: list[int],
    n_trials: int,
    cache_path: Path,
) -> dict[str, Any]:
    evaluator = Evaluator(problem, sweep, cache_path)
    best = analysis["best"]["value"]
    target_loss = analysis["critical"].get("target_train_loss")
    runs = []
    for seed in seeds:
        for method in methods:
            t0 = time.perf_counter()
            run = (
                run_ray_asha(problem, seed, n_trials)
                if method == "ray_asha"
                else run_optuna(problem, method, seed, n_trials)
            )
            tr = trace(run, evaluator, best)
            entry: dict[str, Any] = {
                "method": method,
                "seed": seed,
                "wall_s": run["wall_s"],
                "samples_probe": run["samples_probe"],
                **tr,
                "trials": run["trials"],
            }
            result = run.pop("result", None)
            if result is not None:
                entry["probe"], entry["prior"] = run["probe"], run["prior"]
                if target_loss is not None:
                    rep = result.report(target={"metric": "train_loss", "value": target_loss})
                    cb = rep.data.get("critical_batch", {})
                    entry["report_b_crit"] = cb.get("b_crit")
                    entry["report_b_crit_ci"] = cb.get("b_crit_ci")
                    entry["report_b_crit_error"] = cb.get("error")
            for t in entry["trials"]:
                t.pop("history", None)
            runs.append(entry)
            log.info(
                "%s %s seed %d: to 2%% %s, final incumbent %.3fx, total %d samples, %.0fs (+%.0fs judging)",
                problem.name,
                method,
                seed,
                entry["samples_to"]["0.02"],
                entry["final_ratio"] or math.nan,
                entry["samples_total"],
                run["wall_s"],
                time.perf_counter() - t0 - run["wall_s"],
            )
    return {
        "runs": runs,
        "methods": methods,
        "seeds": seeds,
        "n_trials": n_trials,
        "grid_best": analysis["best"],
        "summary": summarise(runs, methods),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One problem's efficiency results: ``new``'s runs, plus ``old``'s of other (method, seed) pairs."""
    runs = {(r["method"], r["seed"]): r for r in old["runs"]} | {(r["method"], r["seed"]): r for r in new["runs"]}
    methods = [*old["methods"], *(m for m in new["methods"] if m not in old["methods"])]
    seeds = sorted({*old["seeds"], *new["seeds"]})
    ordered = [runs[(m, sd)] for sd in seeds for m in methods if (m, sd) in runs]
    # earlier runs' provenance, each once and never this run's own (a process merges at every save)
    earlier: list[dict[str, Any]] = []
    for prov in [*old.get("earlier_provenance", []), *([old["provenance"]] if old.get("provenance") else [])]:
        if prov not in earlier and prov != new.get("provenance"):
            earlier.append(prov)
    return new | {
        "runs": ordered,
        "methods": methods,
        "seeds": seeds,
        "summary": summarise(ordered, methods),
        "earlier_provenance": earlier,  # of the runs kept from before
    }


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        per_tol = {}
        for tol in TOLERANCES:
            k = f"{tol:g}"
            vals = [r["samples_to"][k] for r in rs]
            med = statistics.median(v if v is not None else math.inf for v in vals)
            per_tol[k] = {
                "reached": sum(v is not None for v in vals),
                "of": len(vals),
                "median": med if math.isfinite(med) else None,
                "per_seed": vals,
            }
        out[m] = {
            "samples_to": per_tol,
            "final_ratio": _spread([r["final_ratio"] for r in rs if r["final_ratio"] is not None]),
            "samples_total": _spread([r["samples_total"] for r in rs]),
            "samples_probe": _spread([r["samples_probe"] for r in rs]),
            "wall_s": _spread([r["wall_s"] for r in rs]),
        }
    return out
