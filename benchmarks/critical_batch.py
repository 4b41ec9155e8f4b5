"""The directly measured B_crit (``bstune.critical``) against the exhaustive sweeps' B_crit.

For each problem, the sweep (``benchmarks/sweep.py``, cached in ``results/sweeps/``) gives
S(B): the steps each batch size needs, at its best rate, to reach a training-loss target,
and B_crit fitted to them. The direct measurement starts from the sweep's own reference:
the smallest batch size that reached the target, at its best rate, trained until its training
loss reaches the sweep's target (``target_loss``: the whole-run S(B) is the sweep's, from
initialisation to the same loss on the same training subset), at study seeds 0, 1, ... (held
out from the sweep's seeds). Each measurement is ``measure_critical_batch`` at its
defaults. Judged (issue #17): its whole-run B_crit within 2x of the sweep's on every
problem, and its 90% interval covering the sweep's value in >= 80% of the seeds.

The sweep's B_crit is itself a fit with an interval (and, where marked "above", an
extrapolation beyond the batch sizes that reached the target): coverage is counted against
its point estimate, and the table shows both intervals.

``python -m benchmarks.critical_batch [--problems ...] [--seeds 0,1,2,3,4]`` writes
``results/critical_batch.json`` (after every measurement: an interrupted run keeps what it
measured) and ``results/critical_batch.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._provenance import run_facts
from benchmarks.problems import PROBLEMS, task_of
from benchmarks.sweep import analyse
from bstune.analysis import fit_critical_batch
from bstune.critical import BranchSettings, measure_critical_batch
from bstune.errors import EstimationError
from bstune.space import SearchSpace

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_PROBLEMS = ["digits_mlp", "linreg", "digits_cnn", "char_lm"]

log = logging.getLogger("benchmarks.critical_batch")


def reference(sweep_analysis: dict[str, Any]) -> dict[str, Any]:
    """The sweep's smallest batch size that reached its target: B, its best rate, the samples it needed, the target."""
    crit = sweep_analysis["critical"]
    reached = [p for p in crit.get("points", []) if p["reached"]]
    if not reached:
        raise ValueError("the sweep's S(B) has no batch size that reached its target")
    p = min(reached, key=lambda p: p["batch_size"])
    samples = math.ceil(p["samples"] / p["batch_size"]) * p["batch_size"]
    return {
        "batch_size": int(p["batch_size"]),
        "lr": float(p["lr"]),
        "budget_samples": int(samples),
        "target_train_loss": float(crit["target_train_loss"]),
    }


def measure(problem_name: str, seed: int) -> dict[str, Any]:
    problem = PROBLEMS[problem_name]
    sweep = json.loads((RESULTS / "sweeps" / f"{problem_name}.json").read_text())
    ref = reference(analyse(sweep))
    task = task_of(problem_name)
    space = SearchSpace.coerce(problem.space)
    config = dataclasses.replace(
        problem.train_config(ref["batch_size"], ref["lr"], seed), max_samples=ref["budget_samples"]
    )
    started = time.perf_counter()
    m = measure_critical_batch(
        task,
        config,
        BranchSettings(),
        batch_min=space.batch_min,
        batch_max=space.batch_max,
        target_loss=ref["target_train_loss"],  # the sweep's: S(B) from initialisation to the same loss
        progress=lambda line: log.info("%s seed %d: %s", problem_name, seed, line),
    )
    return {"seed": seed, "wall_s": time.perf_counter() - started, "reference": ref, "measurement": m.to_dict()}


def _covers(ci: list[float | None], value: float) -> bool:
    lo = ci[0] if ci[0] is not None else 0.0
    hi = ci[1] if ci[1] is not None else math.inf
    return lo <= value <= hi


def _ratio(values: list[float] | None, truth: float | None) -> str:
    """The median of ``values`` over ``truth``, with how many there were."""
    if not values or not truth:
        return "–"
    return f"{statistics.median(values) / truth:.2f} ({len(values)})"


def _num(x: float | None) -> str:
    return "–" if x is None else ("∞" if math.isinf(x) else f"{x:.3g}")


def summarize(problem_name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    sweep = json.loads((RESULTS / "sweeps" / f"{problem_name}.json").read_text())
    crit = analyse(sweep)["critical"]
    truth = crit.get("b_crit")
    wholes = [r["measurement"]["whole"] for r in runs]
    estimates = [w["b_crit"] if w and w["b_crit"] is not None else math.inf for w in wholes]
    ratios = [e / truth for e in estimates] if truth else []
    covered = [bool(w) and _covers(w["b_crit_ci"], truth) for w in wholes] if truth else []
    median_ratio = statistics.median(ratios) if ratios else None
    # what bstune said before, from the full suite (benchmarks/RESULTS.md section 4): the probe's B_simple per
    # seed and the B_crit the report fitted to the prior studies' own trials
    suite_file = RESULTS / "suite_full.json"
    suite = json.loads(suite_file.read_text()) if suite_file.exists() else {}
    probes = [p["b_simple"] for p in suite.get("bcrit", {}).get(problem_name, {}).get("probes", []) if p["b_simple"]]
    fitted = [
        x["report_b_crit"]
        for x in suite.get("efficiency", {}).get(problem_name, {}).get("runs", [])
        if x["method"] == "prior" and x.get("report_b_crit") is not None and math.isfinite(x["report_b_crit"])
    ]
    # the sweep's own S(B) points, extended by the batch sizes it could not measure (they did not reach its target
    # within its budget) where the direct measurement did: B_crit refitted, per seed
    reached = [(p["batch_size"], p["steps"]) for p in crit.get("points", []) if p["reached"]]
    top = max((b for b, _ in reached), default=0)
    extended = []
    for r in runs:
        more = [
            (p["batch_size"], p["steps"])
            for p in r["measurement"]["whole_points"]
            if p["batch_size"] > top and not p["lower_bound"]
        ]
        try:
            fit = fit_critical_batch(reached + more) if more else None
        except EstimationError:
            fit = None
        extended.append(None if fit is None else (fit.b_crit, list(fit.b_crit_ci), fit.edge))
    ext_cov = [
        bool(w) and e is not None and _covers(w["b_crit_ci"], e[0]) for w, e in zip(wholes, extended, strict=True)
    ]
    return {
        "sweep_extended": extended,
        "coverage_extended": sum(ext_cov) / len(ext_cov) if any(e is not None for e in extended) else None,
        "probe_b_simple": probes,
        "report_b_crit": fitted,
        "problem": problem_name,
        "sweep": {
            "b_crit": truth,
            "b_crit_ci": crit.get("b_crit_ci"),
            "edge": crit.get("edge"),
            "target_train_loss": crit.get("target_train_loss"),
        },
        "seeds": [r["seed"] for r in runs],
        "estimates": estimates,
        "cis": [w["b_crit_ci"] if w else None for w in wholes],
        "identified": [bool(w and w["identified"]) for w in wholes],
        "median_ratio": median_ratio,
        "within_2x": median_ratio is not None and 0.5 <= median_ratio <= 2.0,
        "seeds_within_2x": sum(1 for q in ratios if 0.5 <= q <= 2.0),
        "coverage": sum(covered) / len(covered) if covered else None,
        "cost_budgets": statistics.median(r["measurement"]["cost_budgets"] for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "final_loss": statistics.median(r["measurement"]["final_loss"] for r in runs),
        "trajectory": [
            [
                (s["start_samples"], s["fit"]["b_crit"] if s["fit"] else None, s["b_simple"])
                for s in r["measurement"]["segments"]
            ]
            for r in runs
        ],
    }


def render(data: dict[str, Any]) -> str:
    facts = data["provenance"]
    out = [
        "# B_crit measured directly, against the exhaustive sweeps",
        "",
        "`bstune.critical.measure_critical_batch` at its defaults (checkpoints at 0, 1/8 and 3/8 of the reference run, "
        "branches at 2 seeds, a ladder of powers of two 4x apart around the B_simple measured at the checkpoints, "
        "the LR rule with a doubling search), from the sweep's reference: its smallest batch size that reached the "
        "sweep's training-loss target, at its best rate, trained until it reaches that target (the whole-run fit is "
        "S(B) to the sweep's target, as the sweep's is). One measurement per study seed. "
        "Sweep B_crit: `benchmarks/RESULTS.md` section 1. Targets (issue #17): median within 2x of the sweep on every "
        "problem; the 90% interval covering the sweep's value in >= 80% of seeds.",
        "",
        "| problem | sweep B_crit [90% CI] | target (train loss) | direct B_crit per seed [90% CI] | median / sweep "
        "| within 2x | coverage | cost (trial budgets, median) | wall (median) | report's fit / sweep | "
        "probe B_simple / sweep |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in data["summaries"]:
        sw = s["sweep"]
        ci = sw["b_crit_ci"] or [None, None]
        per_seed = ", ".join(
            f"{_num(e)} [{_num(c[0])}, {_num(c[1])}]" if c else "–"
            for e, c in zip(s["estimates"], s["cis"], strict=True)
        )
        ratio = s["median_ratio"]
        cov = s["coverage"]
        out.append(
            f"| {s['problem']} | {_num(sw['b_crit'])} [{_num(ci[0])}, {_num(ci[1])}] ({sw['edge']}) "
            f"| {_num(sw['target_train_loss'])} | {per_seed} | {_num(ratio)} "
            f"| {'yes' if s['within_2x'] else '**no**'} ({s['seeds_within_2x']}/{len(s['seeds'])} seeds) "
            f"| {'–' if cov is None else f'{100 * cov:.0f}%'} | {s['cost_budgets']:.0f} | {s['wall_s'] / 60:.1f} min "
            f"| {_ratio(s.get('report_b_crit'), sw['b_crit'])} | {_ratio(s.get('probe_b_simple'), sw['b_crit'])} |"
        )
    out += [
        "",
        "The sweep's own S(B) points extended by the batch sizes its runs could not measure (they did not reach its "
        "target within its budget, so its fit extrapolates above them) where a direct measurement did, refitted per "
        "seed, and how often the direct 90% interval covers that value:",
        "",
    ]
    for s in data["summaries"]:
        ext = [e for e in s.get("sweep_extended", []) if e is not None]
        if not ext:
            out.append(
                f"- {s['problem']}: no batch size beyond the sweep's reached the target in the direct measurement"
            )
            continue
        shown = ", ".join(f"{_num(b)} [{_num(c[0])}, {_num(c[1])}] ({edge})" for b, c, edge in ext)
        cov = s.get("coverage_extended")
        out.append(f"- {s['problem']}: {shown}; covered by the direct interval in {100 * (cov or 0):.0f}% of seeds")
    out += ["", "B_crit over training (local fits per segment, and B_simple at the segment's start), per seed:", ""]
    for s in data["summaries"]:
        for seed, traj in zip(s["seeds"], s["trajectory"], strict=True):
            cells = "; ".join(f"from {a:,}: B_crit {_num(b)}, B_simple {_num(c)}" for a, b, c in traj)
            out.append(f"- {s['problem']} seed {seed}: {cells}")
    out += [
        "",
        f"*{facts['date']}; {facts['machine']['cpu_model']}, {facts['machine']['logical_cores']} logical cores "
        f"(shared), torch {facts['machine']['torch']}; git {facts['git_commit']}; `{facts['command']}`.*",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default=str(RESULTS / "critical_batch"))
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: write the .md from the .json (e.g. runs merged by hand)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    path = out.with_suffix(".json")
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if not args.render or "provenance" not in data:
        data["provenance"] = run_facts("benchmarks/critical_batch.py", list(argv if argv is not None else sys.argv[1:]))
    seeds = [] if args.render else [int(s) for s in args.seeds.split(",")]
    for name in args.problems.split(",") if seeds else []:
        runs = data["runs"].setdefault(name, {})
        for seed in seeds:
            if str(seed) in runs:
                continue
            runs[str(seed)] = measure(name, seed)
            path.write_text(json.dumps(data, indent=1))
            log.info("%s seed %d: %s", name, seed, runs[str(seed)]["measurement"]["summary"])
    data["summaries"] = [
        summarize(name, [runs[k] for k in sorted(runs, key=int)]) for name, runs in data["runs"].items() if runs
    ]
    path.write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
