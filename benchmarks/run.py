"""The benchmark suite's one entry point.

::

    python -m benchmarks.run --suite quick                 # smoke test, a few minutes: every measure, tiny grids
    python -m benchmarks.run --suite full                  # by hand; writes benchmarks/RESULTS.md
    python -m benchmarks.run --suite full --measures efficiency --problems digits_mlp --seeds 0,1,2,3,4 --workers 2
    python -m benchmarks.run --suite full --measures efficiency --problems digits_mlp --rejudge   # new judge, same studies

Measures (``--measures``, comma-separated, in this order):

* ``sweep``       ground truth per problem (``benchmarks/sweep.py``), cached under ``results/sweeps/``;
* ``efficiency``  samples to a config within 2 % of the grid best per method (``benchmarks/efficiency.py``);
* ``noise``       estimators vs the exact B_simple at points of training (``benchmarks/noise_accuracy.py``);
* ``bcrit``       the probe's B_simple and the report's B_crit against the sweep's B_crit;
* ``overhead``    bstune vs a hand-written loop, noise tracking vs bare (``benchmarks/overhead.py``);
* ``ray``         the Ray backend's per-trial overhead against the embedded default, and its
                  trial throughput on 1 vs 2 local nodes (``benchmarks/ray_backend.py``).

Every measure's numbers, with the machine, date and command that produced them, are merged
into ``<out>/suite_<suite>.json`` (so measures can be run at different times); then the
markdown report (``benchmarks/RESULTS.md`` for the full suite, ``<out>/RESULTS_quick.md``
for the quick one) and its plots are written from that file alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bstune
from benchmarks import efficiency, noise_accuracy, overhead, ray_backend, sweep
from benchmarks._provenance import cpu_model, git, loadavg
from benchmarks.problems import PROBLEMS

HERE = Path(__file__).resolve().parent
MEASURES = ("sweep", "efficiency", "noise", "bcrit", "overhead", "ray")

SUITES: dict[str, dict[str, Any]] = {
    "quick": {
        "problems": ["linreg"],
        "efficiency_problems": ["linreg"],
        "methods": ["prior", "baseline", "random"],
        "seeds": [0],
        "trials": 6,
        "noise_fractions": [0.0, 1.0],
        "noise_repeats": 2,
        "probe_seeds": [0],
        "overhead_repeats": 1,
        "ray_trials": 2,
        "ray_repeats": 1,
        "ray_samples": [10_000],  # a third of digits_mlp's budget: the harness runs, the figures are the full suite's
    },
    "full": {
        "problems": ["digits_mlp", "digits_cnn", "char_lm", "char_lm_adamw", "linreg"],
        "efficiency_problems": ["digits_mlp"],
        "methods": list(efficiency.METHODS),
        "seeds": [0, 1, 2, 3, 4],
        "trials": 24,
        "noise_fractions": [0.0, 0.1, 1.0],
        "noise_repeats": 6,
        "probe_seeds": [0, 1, 2],
        "overhead_repeats": 7,
        "ray_trials": 8,
        "ray_repeats": 3,
        "ray_samples": [30_000, 300_000],  # the problem's budget (trials under a second), and 10x
    },
}

log = logging.getLogger("benchmarks.run")


_CODE: dict[str, Any] = {}  # the checkout when the run started: the code it imported, whatever is checked out later


def code_at_start() -> dict[str, Any]:
    """The git commit and dirtiness of the checkout, read once, at the first call (``main`` calls it first)."""
    if not _CODE:
        _CODE["git_commit"] = git("rev-parse", "--short", "HEAD")
        _CODE["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    return dict(_CODE)


def provenance(command: str, started: float) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "wall_s": time.perf_counter() - started,
        "machine": {
            "cpu_model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "loadavg_at_end": loadavg(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            **code_at_start(),
            "bstune": getattr(bstune, "__version__", None),
        },
    }


def _finite(obj: Any) -> Any:
    """JSON without NaN/inf: non-finite floats become None (their meaning is in the field's doc)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _judged_alike(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two efficiency results judged against the same grid best (cell and value) by the same judge."""
    a, b = old["grid_best"], new["grid_best"]
    if any(a.get(k) != b.get(k) for k in ("batch_size", "lr", "value")):
        return False
    if "judge" not in old:  # judged before the judge was recorded: one mean over the sweep's seeds
        return bool(new["judge"]["looks"] == 1)
    return bool(old["judge"] == new["judge"])


def main(argv: list[str] | None = None) -> int:
    code_at_start()  # before anything runs: a long run's results belong to the code it started with
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated, of {', '.join(MEASURES)}")
    parser.add_argument("--problems", default=None, help="comma-separated; default: the suite's problems")
    parser.add_argument("--methods", default=None, help="efficiency methods; default: the suite's")
    parser.add_argument("--seeds", default=None, help="efficiency study seeds; default: the suite's")
    parser.add_argument("--trials", type=int, default=None, help="trials per study; default: the suite's")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results[/quick])")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes for sweep runs and judging retrains (default 1)"
    )
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="efficiency: judge the stored studies again against the current ground truth, without rerunning them",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown and plots from the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bstune", "optuna", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    suite = dict(SUITES[args.suite])
    problems = args.problems.split(",") if args.problems else suite["problems"]
    for p in problems:
        if p not in PROBLEMS:
            parser.error(f"unknown problem {p!r}; choose from {', '.join(PROBLEMS)}")
    measures = [m for m in args.measures.split(",") if m]
    for m in measures:
        if m not in MEASURES:
            parser.error(f"unknown measure {m!r}; choose from {', '.join(MEASURES)}")
    methods = args.methods.split(",") if args.methods else suite["methods"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else suite["seeds"]
    trials = args.trials or suite["trials"]
    out = args.out or (HERE / "results" if args.suite == "full" else HERE / "results" / "quick")
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"suite_{args.suite}.json"
    data: dict[str, Any] = {}
    command = shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])

    mine: dict[str, Any] = {}  # what this process measured: merged into the file at every save

    def put(measure: str, key: str | None, value: dict[str, Any]) -> None:
        if key is None:
            mine[measure] = value
        else:
            mine.setdefault(measure, {})[key] = value
        save()

    def save() -> None:
        # re-read first, under a lock: measures run in separate processes share this file, and two may save at
        # once (the sweep and evaluation caches are per problem and unlocked: run one process per problem)
        with open(json_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merge_into_file()

    def merge_into_file() -> None:
        disk = json.loads(json_path.read_text()) if json_path.exists() else {}
        for measure, value in mine.items():
            if measure in ("overhead", "ray"):
                disk[measure] = value
            elif measure == "efficiency":  # runs of other methods or seeds, measured before, are kept
                for problem, res in value.items():
                    old = disk.setdefault(measure, {}).get(problem)
                    if old is not None and _judged_alike(old, res):
                        res = efficiency.merged(old, res)
                    disk[measure][problem] = res
            else:
                disk.setdefault(measure, {}).update(value)
        disk["suite"] = args.suite
        data.clear()
        data.update(_finite(disk))
        json_path.write_text(json.dumps(data, indent=1) + "\n")

    if not args.report_only:
        sweeps: dict[str, Any] = {}
        analyses: dict[str, Any] = {}
        need_sweep = {"sweep", "efficiency", "bcrit"} & set(measures)
        if need_sweep:
            started = time.perf_counter()
            for p in problems:
                sweeps[p] = sweep.load_or_run(PROBLEMS[p], args.suite, out, args.workers)
                analyses[p] = sweep.analyse(sweeps[p])
            if "sweep" in measures:
                for p in problems:
                    put(
                        "sweep",
                        p,
                        {
                            "spec": sweeps[p]["spec"],
                            "analysis": analyses[p],
                            "sweep_date": sweeps[p]["date"],
                            "sweep_wall_s": sweeps[p]["wall_s"],
                            "sweep_cells_reused": sweeps[p].get("reused", 0),
                            "cache": str(
                                Path("results") / "sweeps" / f"{p}{'_quick' if args.suite == 'quick' else ''}.json"
                            ),
                            "provenance": provenance(command, started),
                        },
                    )
        if "efficiency" in measures:
            for p in [p for p in problems if p in suite["efficiency_problems"] or args.problems]:
                started = time.perf_counter()
                cache = out / "cache" / f"evals_{p}{'_quick' if args.suite == 'quick' else ''}.json"
                if args.rejudge:
                    stored = (json.loads(json_path.read_text()) if json_path.exists() else {}).get("efficiency", {})
                    if p not in stored:
                        parser.error(f"--rejudge: no stored efficiency runs of {p} in {json_path}")
                    res = efficiency.rejudge(PROBLEMS[p], sweeps[p], analyses[p], stored[p], cache, args.workers)
                    res["rejudge_provenance"] = provenance(command, started)
                    put("efficiency", p, res)
                    continue
                res = efficiency.run_efficiency(
                    PROBLEMS[p], sweeps[p], analyses[p], methods, seeds, trials, cache, args.workers
                )
                put("efficiency", p, res | {"provenance": provenance(command, started)})
        if "noise" in measures:
            for p in problems:
                started = time.perf_counter()
                repeats = suite["noise_repeats"]
                if p in ("char_lm", "char_lm_adamw", "digits_cnn") and args.suite == "full":
                    repeats = repeats // 2  # 3-6x dearer per measurement; pooled over checkpoints and methods
                res = noise_accuracy.measure(PROBLEMS[p], suite["noise_fractions"], repeats)
                put("noise", p, res | {"provenance": provenance(command, started)})
        if "bcrit" in measures:
            for p in problems:
                started = time.perf_counter()
                probes = [noise_accuracy.probe_b_simple(PROBLEMS[p], s) for s in suite["probe_seeds"]]
                put(
                    "bcrit",
                    p,
                    {"sweep": analyses[p]["critical"], "probes": probes, "provenance": provenance(command, started)},
                )
        if "overhead" in measures:
            started = time.perf_counter()
            res = overhead.run("digits_mlp", repeats=suite["overhead_repeats"])
            put("overhead", None, res | {"provenance": provenance(command, started)})
        if "ray" in measures:
            started = time.perf_counter()
            cases = [
                ray_backend.run("digits_mlp", n_trials=suite["ray_trials"], repeats=suite["ray_repeats"], samples=n)
                for n in suite["ray_samples"]
            ]
            put("ray", None, {"cases": cases, "provenance": provenance(command, started)})
    save()
    from benchmarks import report

    md = HERE / "RESULTS.md" if args.suite == "full" and args.out is None else out / f"RESULTS_{args.suite}.md"
    report.write(data, md, out)
    log.info("wrote %s and %s", json_path, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
