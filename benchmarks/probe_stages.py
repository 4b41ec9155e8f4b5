"""What each stage of the probe costs, in training samples, on the benchmark problems.

    python -m benchmarks.probe_stages [--problems linreg,digits_mlp] [--seed 0] [--budget]

One ``probe_space`` per problem, as a prior-mode study runs it (``--budget``: told the
problem's trial budget and milestones, as a study tells it), on the CPU; the probe's
stage functions are wrapped to count the samples each one used. Prints a Markdown table
with the two range tests' ceilings beside their costs; with ``--budget``, "beyond the run" is what
the probe spends besides its training run (a trial, once the study counts it as one).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import torch

import bstune.study._probe as probe_module
from benchmarks.problems import PROBLEMS, task_of
from bstune.space import SearchSpace

STAGES = ("range", "range_large", "train", "measure", "curvature", "ladder")


def stages(name: str, seed: int, budget: bool) -> dict[str, Any]:
    """One probe of problem ``name``: the samples of each stage, the total, the ceilings and its seconds."""
    problem = PROBLEMS[name]
    task = task_of(name)
    space = SearchSpace.coerce(problem.space)
    used: dict[str, int] = defaultdict(int)
    orig_range, orig_train = probe_module.lr_range_test, probe_module.train
    orig_noise, orig_rate = probe_module.measure_noise_scale, probe_module.measure_throughput
    orig_curvature = probe_module.measure_curvature_noise_scale
    calls = {"range": 0}

    def range_test(task: Any, batch: int, *args: Any, **kwargs: Any) -> Any:
        ceiling, curve = orig_range(task, batch, *args, **kwargs)
        used["range" if calls["range"] == 0 else "range_large"] += len(curve) * batch
        calls["range"] += 1
        return ceiling, curve

    def train(*args: Any, **kwargs: Any) -> Any:
        run = orig_train(*args, **kwargs)
        used["train"] += run.samples
        return run

    def measure(*args: Any, **kwargs: Any) -> Any:
        est = orig_noise(*args, **kwargs)
        used["measure"] += est.n_examples
        return est

    def curvature(*args: Any, **kwargs: Any) -> Any:
        est = orig_curvature(*args, **kwargs)
        used["curvature"] += est.n_examples + est.n_hessian_examples
        return est

    def ladder(*args: Any, **kwargs: Any) -> Any:
        out = orig_rate(*args, **kwargs)
        used["ladder"] += out[1]
        return out

    patches = {
        "lr_range_test": range_test,
        "train": train,
        "measure_noise_scale": measure,
        "measure_curvature_noise_scale": curvature,
        "measure_throughput": ladder,
    }
    for attr, fn in patches.items():
        setattr(probe_module, attr, fn)
    extra: dict[str, Any] = {}
    if budget:
        extra = {"budget_samples": problem.budget, "eval_every_samples": -(-problem.budget // problem.n_evals)}
    try:
        t0 = time.perf_counter()
        probe = probe_module.probe_space(task, space, seed=seed, device="cpu", **extra)
        seconds = time.perf_counter() - t0
    finally:
        for attr, fn in (
            ("lr_range_test", orig_range),
            ("train", orig_train),
            ("measure_noise_scale", orig_noise),
            ("measure_curvature_noise_scale", orig_curvature),
            ("measure_throughput", orig_rate),
        ):
            setattr(probe_module, attr, fn)
    assert sum(used.values()) == probe.samples_used, (dict(used), probe.samples_used)
    return {
        **{s: used[s] for s in STAGES},
        "total": probe.samples_used,
        "beyond": probe.samples_used - (used["train"] if budget else 0),
        "trial": problem.budget,
        "ceiling": probe.lr_ceiling,
        "ceiling_large": probe.lr_ceiling_large,
        "large_batch": probe.large_batch,
        "b_simple": probe.b_simple,
        "rungs": sorted(probe.throughput),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", action="store_true", help="tell the probe the problem's trial budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| problem | range B | range 8B | train | B_simple | B_noise | ladder | total (trials) | beyond the run | ceiling | ceiling 8B "
        "| B_simple | rungs | s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in args.problems.split(","):
        r = stages(name, args.seed, args.budget)
        print(
            f"| {name} | {r['range']:,} | {r['range_large']:,} | {r['train']:,} | {r['measure']:,} | "
            f"{r['curvature']:,} | {r['ladder']:,} | {r['total']:,} ({r['total'] / r['trial']:.1f}) | "
            f"{r['beyond']:,} ({r['beyond'] / r['trial']:.1f}) | {r['ceiling']:.3g} | "
            f"{r['ceiling_large']:.3g} (B={r['large_batch']}) | {r['b_simple']:.3g} | "
            f"{','.join(map(str, r['rungs']))} | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
