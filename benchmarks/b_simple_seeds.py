"""Does the probe's B_simple interval hold up across seeds? The sampling interval against the widened one.

    python -m benchmarks.b_simple_seeds [--problems digits_mlp,linreg] [--seeds 10] [--no-budget]   # ~30 s, one core

For each problem the probe (``probe_space``, as a prior-mode study runs it: told the
problem's trial budget and milestones unless ``--no-budget``; one throughput rung and no
large-batch range test, which do not touch B_simple) runs at seeds 0..n-1 on the CPU. Each
seed gives B_simple with two intervals: the sampling interval at the measured parameters
(``b_simple_sampling_ci``, what the probe reported before issue #17) and the reported one,
widened by the run's trajectory (``b_simple_ci``). For every ordered pair of seeds (j, k),
j ≠ k, it counts whether seed j's interval contains seed k's estimate: an interval that
describes what another seed would measure should, at 90 %, contain most of them. Beside
them: the spread of the estimates (log-scale sd, max/min), the intervals' median widths
(hi/lo), and the curvature-aware B_noise where the probe measured it.

Writes ``benchmarks/results/b_simple_seeds.{json,md}`` (``--out``), with the machine and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._provenance import ROOT, run_facts
from benchmarks.problems import PROBLEMS, task_of
from bstune.noise import seed_spread_interval
from bstune.space import SearchSpace
from bstune.study import ProbeSettings
from bstune.study._probe import probe_space

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "b_simple_seeds.md"


def one_probe(name: str, seed: int, budget: bool) -> dict[str, Any]:
    """B_simple, its two intervals and B_noise from one probe of problem ``name`` at ``seed``."""
    problem = PROBLEMS[name]
    task = task_of(name)
    space = SearchSpace.coerce(problem.space)
    # B_simple does not depend on the throughput ladder or the large-batch range test: one rung, none
    settings = ProbeSettings(large_batch_factor=1, throughput_batches=(space.batch_min,), throughput_steps=2)
    extra: dict[str, Any] = {}
    if budget:
        extra = {"budget_samples": problem.budget, "eval_every_samples": -(-problem.budget // problem.n_evals)}
    t0 = time.perf_counter()
    probe = probe_space(task, space, settings, seed=seed, device="cpu", **extra)
    return {
        "seed": seed,
        "b_simple": probe.b_simple,
        "sampling_ci": list(probe.b_simple_sampling_ci or probe.b_simple_ci),
        "ci": list(probe.b_simple_ci),
        "seed_spread": probe.b_simple_seed_spread,
        "b_noise": probe.b_noise,
        "b_noise_ci": list(probe.b_noise_ci) if probe.b_noise_ci else None,
        "b_simple_same_examples": (probe.curvature or {}).get("b_simple"),
        "at_samples": probe.b_simple_at_samples,
        "trajectory": [(p["samples"], p["b_simple"], p["ci"]) for p in probe.trajectory],
        "samples_used": probe.samples_used,
        "seconds": time.perf_counter() - t0,
    }


def other_variant(runs: list[dict[str, Any]]) -> None:
    """Add ``subtracted_ci``: the interval widened by the trajectory's spread less its windows' own noise
    (``seed_spread_interval(subtract_sampling=True)``; the probe reports the raw spread's)."""
    for r in runs:
        lo, hi = r["sampling_ci"]
        ci = (lo if lo is not None else 0.0, hi if hi is not None else math.inf)
        (rlo, rhi), _ = seed_spread_interval(
            r["b_simple"], ci, r["trajectory"], r["at_samples"], subtract_sampling=True
        )
        r["subtracted_ci"] = [rlo, rhi if math.isfinite(rhi) else None]


def _bound(v: float | None, default: float) -> float:
    return default if v is None else v


def pairwise(runs: list[dict[str, Any]], key: str) -> tuple[int, int]:
    """(pairs j ≠ k whose interval ``key`` of j contains the estimate of k, pairs)."""
    hits = pairs = 0
    for j in runs:
        lo, hi = j[key]
        for k in runs:
            if k is not j and math.isfinite(k["b_simple"]):
                pairs += 1
                hits += (lo if lo is not None else 0.0) <= k["b_simple"] <= (hi if hi is not None else math.inf)
    return hits, pairs


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairwise containment of both intervals, the estimates' spread and the intervals' widths."""
    b = [r["b_simple"] for r in runs if math.isfinite(r["b_simple"]) and r["b_simple"] > 0]
    logs = [math.log(v) for v in b]
    out: dict[str, Any] = {"n_seeds": len(runs), "b_simple_min": min(b), "b_simple_max": max(b)}
    out["log_sd"] = statistics.stdev(logs) if len(logs) > 1 else None
    for key in ("sampling_ci", "ci", "subtracted_ci"):
        hits, pairs = pairwise(runs, key)
        overlaps = sum(
            _bound(j[key][0], 0.0) <= _bound(k[key][1], math.inf)
            and _bound(k[key][0], 0.0) <= _bound(j[key][1], math.inf)
            for j in runs
            for k in runs
            if k is not j
        )
        widths = [r[key][1] / r[key][0] if r[key][0] and r[key][1] else math.inf for r in runs]
        out[key] = {"contains": hits, "pairs": pairs, "fraction": hits / pairs if pairs else None}
        out[key]["overlap"] = overlaps / pairs if pairs else None
        out[key]["median_width"] = statistics.median(widths)  # hi / lo
    noise = [r["b_noise"] for r in runs if r["b_noise"] is not None]
    out["b_noise_median"] = statistics.median(noise) if noise else None
    same = [r["b_noise"] / r["b_simple_same_examples"] for r in runs if r["b_noise"] and r["b_simple_same_examples"]]
    out["b_noise_over_b_simple_median"] = statistics.median(same) if same else None
    out["seconds_per_probe"] = statistics.median(r["seconds"] for r in runs)
    return out


KINDS = {
    "sampling_ci": "sampling only (before issue #17; `b_simple_sampling_ci`)",
    "ci": "widened by the trajectory's raw spread (reported `b_simple_ci`)",
    "subtracted_ci": "widened by the spread less the windows' own noise (not used)",
}


def markdown(results: dict[str, Any]) -> str:
    facts = results["facts"]
    lines = [
        "# B_simple across seeds: the sampling interval and the widened one",
        "",
        f"{facts['date']}, `{facts['command']}`, {facts['machine']['cpu_model']}, torch {facts['machine']['torch']}, "
        f"commit {facts['git_commit']}{' (bstune modified)' if facts['git_dirty_bstune'] else ''}; "
        f"{'told the trial budget (as a study runs it)' if results['budget'] else 'no trial budget'}.",
        "",
        "| problem | seeds | B_simple min..max | log-sd of B_simple | B_noise (median) | "
        "B_noise/B_simple, same examples | s/probe |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results["problems"].items():
        s = res["summary"]
        noise, ratio = s["b_noise_median"], s["b_noise_over_b_simple_median"]
        lines.append(
            f"| {name} | {s['n_seeds']} | {s['b_simple_min']:.4g}..{s['b_simple_max']:.4g} | {s['log_sd']:.2f} | "
            f"{'n/a' if noise is None else f'{noise:.4g}'} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
            f"{s['seconds_per_probe']:.1f} |"
        )
    lines += [
        "",
        "Contains: of the ordered pairs of seeds (j, k), how often seed j's 90% interval contains seed k's B_simple; "
        "overlap: how often the two intervals overlap; width: median over seeds of the interval's hi/lo.",
        "",
        "| problem | interval | contains | overlap | width |",
        "|---|---|---:|---:|---:|",
    ]
    for name, res in results["problems"].items():
        for key, label in KINDS.items():
            k = res["summary"][key]
            lines.append(
                f"| {name} | {label} | {k['contains']}/{k['pairs']} ({k['fraction']:.0%}) | {k['overlap']:.0%} | "
                f"{k['median_width']:.2f} |"
            )
    lines += ["", "Per seed: B_simple (sampling CI; reported CI; trajectory log-sd used).", ""]
    for name, res in results["problems"].items():
        for r in res["runs"]:
            lo, hi = r["sampling_ci"]
            wlo, whi = r["ci"]
            spread = r["seed_spread"]
            lines.append(
                f"- {name} seed {r['seed']}: {r['b_simple']:.4g} ({lo:.4g}..{hi if hi is None else f'{hi:.4g}'}; "
                f"{wlo:.4g}..{whi if whi is None else f'{whi:.4g}'}; "
                f"{'n/a' if spread is None else f'{spread:.2f}'})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits_mlp,linreg")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..n-1 (at least 2)")
    parser.add_argument("--no-budget", action="store_true", help="the probe's own run, not a trial's length")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file; the JSON goes beside it")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2")
    torch.set_num_threads(args.threads)
    names = [n for n in args.problems.split(",") if n]
    unknown = [n for n in names if n not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problem(s) {unknown}; choose from {sorted(PROBLEMS)}")
    results: dict[str, Any] = {
        "facts": run_facts("benchmarks/b_simple_seeds.py", sys.argv[1:] if argv is None else argv),
        "budget": not args.no_budget,
        "problems": {},
    }
    for name in names:
        runs = []
        for seed in range(args.seeds):
            runs.append(one_probe(name, seed, not args.no_budget))
            r = runs[-1]
            print(f"{name} seed {seed}: B_simple {r['b_simple']:.4g} {r['sampling_ci']} -> {r['ci']}", flush=True)
        other_variant(runs)
        results["problems"][name] = {"runs": runs, "summary": summarize(runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(_Clean(results))["value"], indent=1))
    args.out.write_text(markdown(results))
    print(markdown(results))
    return 0


@dataclasses.dataclass
class _Clean:
    """JSON has no inf: infinite bounds as None."""

    value: Any

    def __post_init__(self) -> None:
        from bstune.records import clean_json

        self.value = clean_json(self.value)


if __name__ == "__main__":
    raise SystemExit(main())
