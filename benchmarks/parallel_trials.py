"""Parallel trials on the embedded backend: a study's wall time with 1 trial worker and with 2.

Run by hand::

    python benchmarks/parallel_trials.py             # about 6 minutes on 2 free CPU cores
    python benchmarks/parallel_trials.py --quick     # about 3 minutes: trials of 40,000 samples

Each run is one baseline-mode study (no probe, no pruning, no re-scoring) of ``--trials``
single-threaded trials of an MLP on synthetic data, in a fresh subprocess:

    1 worker    ``parallel_trials=1``: the trials one after the other in that process, one torch thread
    2 workers   ``parallel_trials=2``: two spawned worker processes on the CPU, one torch thread each
                (bstune gives each worker its share of the cores: 2 cores / 2 workers)

Trials must be long against a worker's start (importing torch and bstune, a second or
two on a free core, more on a busy one): the default trials train 200,000 samples,
about 9 s each on one free core; ``--quick`` trials are a fifth of that, and its speed-up
pays the start-up five times as much.

The wall time is that of ``Study.run()``, so the 2-worker runs pay for starting their
workers (each imports torch and bstune) and for sharing a journal file. The batch-size
range is narrow (32 to 64) so that trials cost about the same whatever is drawn; as the two
settings draw different configs (each worker has its own sampler), samples per second of
the whole study is shown too. Target: 2 workers >= 1.7x as fast as 1 (wall time).

Repeats interleave the two settings in a shuffled order, so load that comes and goes falls
on both; the speed-up is the median over repeats of the paired ratio. On a machine shared
with other jobs it is depressed: the load averages before and after are recorded.

Writes ``--out`` (default ``benchmarks/results/parallel_trials.md``) and the raw timings,
machine and command as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import loadavg, run_child, run_facts  # noqa: E402

N_TRAIN, N_VAL, FEATURES, HIDDEN, CLASSES = 4096, 512, 128, 512, 10


def make_model() -> Any:
    """The trials' model (module level: the worker processes import it from here)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the trial workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One study; returns its wall time and what its trials did."""
    import torch

    import bstune

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VAL, FEATURES, generator=gen)
    y = (x[:, :CLASSES] + 0.5 * torch.randn(N_TRAIN + N_VAL, CLASSES, generator=gen)).argmax(1)
    task = bstune.Task(
        model=make_model,
        train_data=(x[:N_TRAIN], y[:N_TRAIN]),
        val_data=(x[N_TRAIN:], y[N_TRAIN:]),
        loss=torch.nn.CrossEntropyLoss(),
        name="parallel-bench",
    )
    space = {"name": "bench", "batch_size": {"min": 32, "max": 64}, "lr": {"min": 1e-3, "max": 0.3}}
    study = bstune.Study(
        task,
        space,
        n_trials=spec["trials"],
        budget_samples=spec["budget"],
        n_evals=3,
        mode="baseline",
        pruner="none",
        rescore_top=0,
        progress=False,
        device="cpu",
        parallel_trials=spec["workers"],
        study_name=f"bench-{spec['workers']}",
    )
    cpu0 = _cpu()
    started = time.perf_counter()
    result = study.run()
    wall = time.perf_counter() - started
    cpu = _cpu() - cpu0  # this process and its joined workers
    samples = sum(t.samples for t in result.trials)
    assert result.optuna_study is not None
    rates = [t.user_attrs.get("throughput") for t in result.optuna_study.get_trials()]
    return {
        "trial_samples_per_s": statistics.median(r for r in rates if r),
        "wall_s": wall,
        "cpu_s": cpu,
        "trials": len(result.trials),
        "samples": samples,
        "samples_per_s": samples / wall,
        "workers_seen": sorted({t.worker or "in-process" for t in result.trials}),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--budget", type=int, default=200_000, help="training samples of one trial (~9 s on one free core)"
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats, smaller trials")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parallel_trials.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.repeats, args.budget = 3, 40_000
    started, load_before = time.time(), loadavg()
    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        order = [1, 2]
        random.Random(rep).shuffle(order)
        row: dict[str, Any] = {"order": order}
        for workers in order:
            run = run_child(
                str(Path(__file__).resolve()), {"workers": workers, "trials": args.trials, "budget": args.budget}, ROOT
            )
            assert run["trials"] == args.trials, run
            row[str(workers)] = run
            print(f"repeat {rep}: {workers} worker(s) {run['wall_s']:6.1f} s", file=sys.stderr)
        rows.append(row)
    meta = {
        **run_facts("benchmarks/parallel_trials.py", argv if argv is not None else sys.argv[1:]),
        "load_before": load_before,
        "load_after": loadavg(),
        "run_time_s": round(time.time() - started),
        "settings": {k: getattr(args, k) for k in ("repeats", "trials", "budget")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    args.out.write_text(_markdown(meta, rows))
    print(args.out.read_text())
    return 0


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m, s = meta["machine"], meta["settings"]
    wall = {k: [r[k]["wall_s"] for r in rows] for k in ("1", "2")}
    rate = {k: [r[k]["samples_per_s"] for r in rows] for k in ("1", "2")}
    trial_rate = {k: [r[k]["trial_samples_per_s"] for r in rows] for k in ("1", "2")}
    speedup = statistics.median(r["1"]["wall_s"] / r["2"]["wall_s"] for r in rows)
    cpu = {k: [r[k]["cpu_s"] for r in rows] for k in ("1", "2")}
    # two free cores: the 2-worker study's CPU spread over both, against the 1-worker study's on one
    projected = statistics.median(r["1"]["cpu_s"] / (r["2"]["cpu_s"] / 2) for r in rows)
    rate_ratio = statistics.median(r["2"]["samples_per_s"] / r["1"]["samples_per_s"] for r in rows)
    load = max(meta["load_before"] or [0])
    lines = [
        "# Parallel trials: 1 trial worker vs 2 on the embedded backend",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores, torch {m['torch']}, Python {m['python']}; "
        f"load average before/after {meta['load_before']} / {meta['load_after']}"
        + (" (**shared** with other jobs: the speed-up is depressed)" if load > 1.0 else ""),
        f"- code: git {meta['git_commit']}{' (bstune/ modified)' if meta['git_dirty_bstune'] else ''}; "
        f"run time {meta['run_time_s']} s",
        f"- study: baseline mode, {s['trials']} trials of {s['budget']} samples (MLP {FEATURES}-{HIDDEN}-{HIDDEN}-"
        f"{CLASSES}, B in [32, 64]), no pruning, no re-scoring, one torch thread per trial process; "
        f"{s['repeats']} interleaved repeats",
        "",
        "| trial workers | wall time, median (runs) | CPU time, all processes, median | samples/s of the study, median "
        "| samples/s inside one trial, median |",
        "|---|---|---|---|---|",
    ]
    for k in ("1", "2"):
        runs = ", ".join(f"{w:.1f}" for w in wall[k])
        lines.append(
            f"| {k} | {statistics.median(wall[k]):.1f} s ({runs}) | {statistics.median(cpu[k]):.1f} s "
            f"| {statistics.median(rate[k]):,.0f} "
            f"| {statistics.median(trial_rate[k]):,.0f} |"
        )
    verdict = "met" if speedup >= 1.7 else "**missed**"
    lines += [
        "",
        f"Speed-up of 2 workers over 1 (median of paired wall-time ratios): **{speedup:.2f}x** "
        f"(target >= 1.7x: {verdict}); in samples per second of the study: {rate_ratio:.2f}x. "
        "Inside one trial, samples/s with 2 workers at half or less of those with 1 means the two trials "
        "did not get a core each (other jobs on the machine, or a scheduler that shares CPU between "
        "sessions): no worker count can speed a study up there. What two free cores would give, from the "
        f"CPU times (arithmetic, not a measurement: the 2-worker study's CPU, worker start-up included, "
        f"spread over two cores, against the 1-worker study's): {projected:.2f}x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
