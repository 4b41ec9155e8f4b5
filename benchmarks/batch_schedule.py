"""A batch-size schedule from the measured B_simple trajectory against the fixed batch it grew from.

    python -m benchmarks.batch_schedule [--problems digits_mlp] [--seeds 100,101,102,103,104]

For each problem:

1. **Fixed.** The grid best of the cached sweep (``results/sweeps/<problem>.json``: the
   cell with the lowest final validation loss averaged over the sweep seeds), or the
   problem's ``noise_config`` when no sweep is cached; with ``--bases``, also the best
   rate of the grid at a larger batch (default 128), where a fixed batch is too large
   early in training and a schedule could save samples.
2. **Trajectory.** One run of the fixed config at seed ``TRACK_SEED`` (held out from the
   evaluation seeds, as a study's probe is) with ``track_noise`` on every step and
   ``TRACK_WINDOWS`` windows: its B_simple trajectory.
3. **Schedules.** :func:`bstune.analysis.recommend_batch_schedule` on that trajectory, with
   the fixed (B, η) as the LR rule's base point, the space's smallest batch as
   ``batch_min`` and the sweep's largest batch (at most the training set) as ``batch_max``:
   the batch following B_simple itself (``follow``), and ``relative=1`` and ``relative=0.5``
   (the base batch scaled by B_simple over its mean, to the power 1 and 1/2).
4. **Compare**, at each evaluation seed, evaluating every ``budget / EVALS`` samples:
   the fixed run (the budget); the schedule (run on to ``EXTEND`` x the budget with its
   last stage, so that a schedule that falls short says by how much); and, as a control,
   a fixed run at the schedule's last batch with the rule's rate for it (does growing
   beat starting large?). Targets: the fixed run's final validation loss and its final
   training loss (on the trainer's fixed training subset) at the same seed. For each arm
   the steps and samples at the first evaluation at or below the target, and each arm's
   losses at the budget's milestone.

The schedule is better only where it reaches the targets in fewer steps without more samples
than the fixed run; the Markdown says per problem whether it does. Writes
``results/batch_schedule.json`` and ``results/batch_schedule.md``.
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

import torch

import bstune
from benchmarks._provenance import run_facts
from benchmarks.problems import PROBLEMS, Problem, task_of
from benchmarks.sweep import cell_value
from bstune.analysis import recommend_batch_schedule
from bstune.analysis._lr import lr_table

HERE = Path(__file__).resolve().parent
TRACK_SEED = 0  # the trajectory's run: a study seed, not an evaluation seed
TRACK_WINDOWS = 15  # B_simple windows over the tracked run (each ~1/15 of the budget)
EVALS = 60  # evaluations per budget in the compared runs: the resolution of "steps to the target"
EXTEND = 1.5  # the schedule runs on to this multiple of the budget (constant rate: the same path, longer)
TARGETS = ("train_loss", "val_loss")
SCHEDULE_ARMS = {"follow": None, "relative_1": 1.0, "relative_0.5": 0.5}  # arm -> recommend's `relative`

log = logging.getLogger("benchmarks.batch_schedule")


def fixed_config(problem: Problem, sweep_path: Path, batch: int | None) -> tuple[int, float, str]:
    """(B, η) of the sweep's best cell on the sweep seeds (``batch``: the best in that row), and where it came from."""
    if not sweep_path.exists():
        b, lr = problem.noise_config
        return b, lr, "the problem's noise_config (no cached sweep)"
    sweep = json.loads(sweep_path.read_text())
    seeds = sweep["spec"]["seeds"]
    valued = [(cell_value(c, seeds), c) for c in sweep["cells"] if batch is None or c["batch_size"] == batch]
    ok = [(v, c) for v, c in valued if v is not None and math.isfinite(v)]
    if not ok:
        raise SystemExit(f"{sweep_path} has no completed cell at batch size {batch}")
    value, best = min(ok, key=lambda vc: vc[0])
    where = "grid best" if batch is None else f"grid best at B={batch}"
    return int(best["batch_size"]), float(best["lr"]), f"{where} of {sweep_path.name} (val loss {value:.4f})"


def first_hit(history: list[bstune.EvalRecord], key: str, target: float) -> dict[str, int] | None:
    """Steps and samples at the first evaluation with ``key`` at or below ``target``."""
    for r in history:
        if getattr(r, key) <= target:
            return {"steps": r.step, "samples": r.samples}
    return None


def run(task: bstune.Task, config: bstune.TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = bstune.train(task, config)
    return {
        "status": result.status.value,
        "steps": result.steps,
        "samples": result.samples,
        "wall_s": time.perf_counter() - t0,
        "_records": result.history,
    }


def at_budget(history: list[bstune.EvalRecord], budget: int, key: str) -> float:
    """``key`` at the evaluation of the budget's milestone (the last one a run that stopped early made)."""
    return float(next((getattr(r, key) for r in history if r.milestone >= budget), getattr(history[-1], key)))


def compare(name: str, seeds: list[int], base_batch: int | None) -> dict[str, Any]:
    problem = PROBLEMS[name]
    task = task_of(name)
    budget = problem.budget
    batch, lr, source = fixed_config(problem, HERE / "results" / "sweeps" / f"{name}.json", base_batch)
    base = problem.train_config(batch, lr, seed=TRACK_SEED)
    tracked_cfg = dataclasses.replace(
        base, track_noise=True, noise_every_steps=1, eval_every_samples=-(-budget // TRACK_WINDOWS)
    )
    tracked = bstune.train(task, tracked_cfg)
    trajectory = tracked.noise_trajectory
    family = task.optimizer_spec.family
    batch_min = int(problem.space["batch_size"]["min"])
    batch_max = min(max(problem.sweep_batches["full"]), task.n_train)
    schedules = {
        arm: recommend_batch_schedule(
            trajectory,
            base_batch=batch,
            base_lr=lr,
            budget_samples=budget,
            batch_min=batch_min,
            batch_max=batch_max,
            family=family,
            relative=relative,
        )
        for arm, relative in SCHEDULE_ARMS.items()
    }
    last = schedules["follow"].stages[-1]
    alpha = schedules["follow"].alpha
    ((_, large_lr),) = lr_table(last.b_crit, batch, lr, [last.batch_size], family=family, alpha=alpha)
    for arm, sched in schedules.items():
        log.info("%s: fixed B=%d lr=%g; %s %s", name, batch, lr, arm, sched.batch_schedule)
    every = -(-budget // EVALS)
    per_seed = []
    for seed in seeds:
        fixed_cfg = dataclasses.replace(problem.train_config(batch, lr, seed=seed), eval_every_samples=every)
        long_cfg = dataclasses.replace(fixed_cfg, max_samples=int(EXTEND * budget))
        arms = {"fixed": run(task, fixed_cfg)}
        arms |= {arm: run(task, sched.apply(long_cfg)) for arm, sched in schedules.items()}
        arms["large"] = run(task, dataclasses.replace(long_cfg, batch_size=last.batch_size, lr=large_lr))
        fixed_hist = arms["fixed"]["_records"]
        row: dict[str, Any] = {"seed": seed, "targets": {}, "arms": {}}
        for key in TARGETS:
            row["targets"][key] = getattr(fixed_hist[-1], key)
        for arm, res in arms.items():
            records = res.pop("_records")
            row["arms"][arm] = res | {
                "hit": {key: first_hit(records, key, row["targets"][key]) for key in TARGETS},
                "at_budget": {key: at_budget(records, budget, key) for key in TARGETS},
            }
        per_seed.append(row)
        log.info(
            "%s seed %d: %s",
            name,
            seed,
            {a: (r["hit"]["val_loss"], round(r["at_budget"]["val_loss"], 4)) for a, r in row["arms"].items()},
        )
    return {
        "problem": name,
        "budget": budget,
        "fixed": {"batch_size": batch, "lr": lr, "source": source, "steps": base.steps},
        "family": family,
        "trajectory": [
            {"samples": p.samples, "b_simple": p.b_simple if math.isfinite(p.b_simple) else None, "ci_low": p.ci[0]}
            for p in trajectory
        ],
        "schedules": {
            arm: sch.to_dict() | {"steps_in_budget": sch.apply(base).steps} for arm, sch in schedules.items()
        },
        "large": {"batch_size": last.batch_size, "lr": large_lr},
        "seeds": per_seed,
        "summary": summarize(per_seed),
    }


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target and arm: the seeds that reached it, and the mean steps/samples over the seeds where both
    the arm and the fixed run reached it (paired with the fixed run's over the same seeds)."""
    out: dict[str, Any] = {}
    for key in TARGETS:
        out[key] = {}
        for arm in per_seed[0]["arms"]:
            paired = [
                (row["arms"][arm]["hit"][key], row["arms"]["fixed"]["hit"][key])
                for row in per_seed
                if row["arms"][arm]["hit"][key] is not None and row["arms"]["fixed"]["hit"][key] is not None
            ]
            entry: dict[str, Any] = {
                "reached": sum(row["arms"][arm]["hit"][key] is not None for row in per_seed),
                "paired_seeds": len(paired),
                "at_budget": statistics.fmean(row["arms"][arm]["at_budget"][key] for row in per_seed),
            }
            for unit in ("steps", "samples"):
                mine = statistics.fmean(h[unit] for h, _ in paired) if paired else None
                theirs = statistics.fmean(f[unit] for _, f in paired) if paired else None
                entry[unit] = mine
                entry[f"{unit}_vs_fixed"] = mine / theirs if mine is not None and theirs else None
            out[key][arm] = entry
    return out


def verdict(result: dict[str, Any], key: str, arm: str) -> str:
    """Whether schedule ``arm`` reached the fixed run's final ``key`` in fewer steps at no more samples."""
    sched = result["summary"][key][arm]
    n = len(result["seeds"])
    if sched["reached"] < n:
        return f"no: reached it at {sched['reached']} of {n} seeds (within {EXTEND:g}x the budget)"
    steps, samples = sched["steps_vs_fixed"], sched["samples_vs_fixed"]
    answer = "yes" if steps < 1 and samples <= 1 else "no"
    return f"{answer}: {steps:.0%} of the fixed run's steps, {samples:.0%} of its samples"


def render(results: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    m = facts["machine"]
    lines = [
        "# Batch-size schedule vs the fixed batch",
        "",
        f"{facts['date']}, `{facts['command']}`, git {facts['git_commit']}"
        f"{' (bstune dirty)' if facts['git_dirty_bstune'] else ''}; {m['cpu_model']}, {m['logical_cores']} cores, "
        f"torch {m['torch']}. Method: `benchmarks/batch_schedule.py` (module docstring).",
        "",
        "Steps/samples: at the first evaluation (every budget/60 samples) at or below the fixed run's final loss "
        "at the same seed, mean over the seeds where both the arm and the fixed run reached it (the ratios: to "
        "the fixed run's mean over the same seeds). The training loss is the cleaner target: the fixed run's "
        "validation loss wanders, so it often passes its own final value long before its end. At budget: the loss at the "
        f"budget's milestone (the schedules and the large fixed batch run on to {EXTEND:g}x it). "
        "Arms: follow: `recommend_batch_schedule` (the batch is the smoothed B_simple, rounded down to a power "
        "of two); relative_1 / relative_0.5: `relative=1` / `relative=0.5` (the base batch times "
        "(B_simple / its mean)^p); large: a fixed run at follow's last batch with the LR rule's rate for it.",
    ]
    wins = [
        f"{r['problem']} B={r['fixed']['batch_size']} {arm}"
        for r in results
        for arm in SCHEDULE_ARMS
        if verdict(r, "train_loss", arm).startswith("yes")
    ]
    lines += [
        "",
        f"**Overall**: {len(wins)} of {len(results) * len(SCHEDULE_ARMS)} (problem, fixed batch, schedule) "
        f"comparisons reach the fixed run's final training loss in fewer steps at no more samples"
        + (
            f" ({', '.join(wins)})."
            if wins
            else "; each trades one for the other, or (one stage at the fixed batch) is the fixed run."
        ),
    ]
    for r in results:
        f = r["fixed"]
        arms = ["fixed", *SCHEDULE_ARMS, "large"]
        traj = ", ".join(f"{p['b_simple']:.0f}" if p["b_simple"] is not None else "inf" for p in r["trajectory"])
        lines += [
            "",
            f"## {r['problem']}, fixed B={f['batch_size']} ({r['family']}, budget {r['budget']:,} samples, "
            f"{len(r['seeds'])} seeds)",
            "",
            f"- fixed: B={f['batch_size']}, η={f['lr']:g} ({f['source']}); {f['steps']} steps in the budget",
            f"- B_simple trajectory (seed {TRACK_SEED}, {TRACK_WINDOWS} windows): {traj}",
        ]
        for arm, sch in r["schedules"].items():
            stages = ", ".join(
                f"{st['batch_size']} @ {st['start_samples']:,} (η {st['lr']:.3g}, B_simple {st['b_crit']:.0f})"
                for st in sch["stages"]
            )
            lines.append(f"- {arm}: {stages}; {sch['steps_in_budget']} steps in the budget")
        lines.append(f"- large: B={r['large']['batch_size']}, η={r['large']['lr']:.3g}")
        lines.append("- **fewer steps than the fixed batch at no more samples?**")
        for arm in SCHEDULE_ARMS:
            lines.append(
                f"  - {arm}: training loss {verdict(r, 'train_loss', arm)}; validation loss {verdict(r, 'val_loss', arm)}"
            )
        lines += [
            "",
            "| target | arm | reached | steps | samples | steps / fixed | samples / fixed | loss at budget |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        n = len(r["seeds"])
        for key in TARGETS:
            s = r["summary"][key]
            for arm in arms:
                a = s[arm]
                steps = f"{a['steps']:.0f}" if a["steps"] is not None else "-"
                samples = f"{a['samples']:,.0f}" if a["samples"] is not None else "-"
                ratios = " | ".join(
                    f"{a[f'{u}_vs_fixed']:.2f}" if a[f"{u}_vs_fixed"] is not None else "-" for u in ("steps", "samples")
                )
                lines.append(
                    f"| {key} | {arm} | {a['reached']}/{n} | {steps} | {samples} | {ratios} | {a['at_budget']:.4f} |"
                )
        lines += ["", f"Per seed (train_loss target: steps/samples to it, {' / '.join(arms)}):", ""]
        for row in r["seeds"]:
            cells = []
            for arm in arms:
                h = row["arms"][arm]["hit"]["train_loss"]
                cells.append(f"{h['steps']}/{h['samples']:,}" if h else "not reached")
            lines.append(f"- seed {row['seed']} (target {row['targets']['train_loss']:.4f}): {' / '.join(cells)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits_mlp")
    parser.add_argument("--seeds", default="100,101,102,103,104")
    parser.add_argument(
        "--bases",
        default="best,128",
        help="the fixed runs: 'best' (the grid's best cell) and/or batch sizes (the grid's best rate at that B)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    bases = [None if b == "best" else int(b) for b in args.bases.split(",")]
    results = [compare(name, seeds, base) for name in args.problems.split(",") for base in bases]
    facts = run_facts("-m", ["benchmarks.batch_schedule", *(sys.argv[1:] if argv is None else argv)])
    out = {**facts, "wall_s": time.perf_counter() - t0, "results": results}
    (args.out / "batch_schedule.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "batch_schedule.md").write_text(render(results, facts))
    log.info("wrote %s and %s", args.out / "batch_schedule.md", args.out / "batch_schedule.json")


if __name__ == "__main__":
    main()
