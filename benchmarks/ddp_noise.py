"""The noise scale under DDP: what the estimator costs over plain data-parallel steps.

Run by hand::

    python benchmarks/ddp_noise.py            # about 1.5 minutes on 2 shared CPU cores
    python benchmarks/ddp_noise.py --quick    # a smoke check

Two gloo processes (one torch thread each, spawned by ``bstune.training.run_data_parallel``)
train a small MLP with ``bstune.train`` under DDP, global batch B split 2 ways, in two
configurations:

    plain   ``track_noise=False``: DDP's own all-reduce, nothing measured
    noise   ``track_noise=True, noise_every_steps=1``: every step goes through the norm-taking
            communication hook (each bucket's local squared norm before the all-reduce), takes
            |G_B|² of the synchronized gradient, and all-reduces the window's local norms as one
            vector at each evaluation; target <= 1% over plain
    noise/8 the same on every 8th step (``noise_every_steps=8``, bstune's default)
    control ``track_noise=True`` measuring only the first step (``noise_every_steps`` larger than
            the run): the tracker's bookkeeping without the norms, and a measure of the noise
            floor (what a difference of two runs shows where the work differs by ~nothing)

Three measures, on rank 0 (the ranks wait for each other at every all-reduce, so one rank's
time is the job's):

* step CPU: the CPU time of rank 0's main thread inside the steps, from the trainer's own step
  clock (``TrainResult.train_time_s``, with the ``time`` module of ``bstune.training._loop``
  swapped for one whose ``perf_counter`` is ``time.thread_time``: evaluations and set-up left
  out). The estimator's work all runs on that thread (the gradient hooks run on the autograd
  thread, which is the caller's on the CPU); gloo's own threads, which may spin while waiting
  for the peer, are left out. Other jobs on the machine still move it (caches, clock speed);
* accounted: the main thread's CPU time inside the estimator's own calls (the per-parameter
  norm hooks, the norm of the synchronized gradient, the all-reduce of the window's norms and
  the tracker updates at each evaluation), per step, over the plain step's CPU time: a direct
  count of what the estimator adds, which load moves far less than a difference of two runs;
* run wall: the wall time of the whole ``bstune.train`` call (two small evaluations included
  alike), indicative on a shared machine.

Every repeat runs the configurations in a fresh shuffled order (the same on both ranks), so
load that comes and goes falls on all; a ratio is the median over repeats of the paired ratio
within a repeat. The load averages before and after are recorded.

Writes ``--out`` (default ``benchmarks/results/ddp_noise.md``) and the raw timings, machine and
command as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import loadavg, run_facts  # noqa: E402

CONFIGS = ("plain", "noise", "noise/8", "control")


def _mlp(width: int, inputs: int, classes: int) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, classes),
    )


class _CPUClock:
    """Stands in for the ``time`` module inside ``bstune.training._loop``: ``train_time_s`` becomes the
    main thread's CPU time inside the steps."""

    def perf_counter(self) -> float:
        return time.thread_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def rank_bench(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs in every rank: the repeats of the configurations; each run's step CPU time and wall time."""
    import functools

    import torch

    import bstune
    from bstune.training import _distributed, _loop

    _loop.time = _CPUClock()  # type: ignore[assignment]
    spent = [0.0]  # main-thread CPU seconds inside the estimator's own calls

    def accounted(fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.thread_time() - t0

        return timed

    dp = _distributed.DataParallel
    dp._take_norm = accounted(dp._take_norm)  # type: ignore[method-assign]
    dp.feed_tracker = accounted(dp.feed_tracker)  # type: ignore[method-assign]
    _distributed.sq_norm_of = accounted(_distributed.sq_norm_of)  # type: ignore[attr-defined]

    s = settings
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s["n_train"], s["inputs"], generator=gen)
    y = torch.randint(0, s["classes"], (s["n_train"],), generator=gen)
    task = bstune.Task(
        model=functools.partial(_mlp, s["width"], s["inputs"], s["classes"]),
        train_data=(x, y),
        val_data=(x[:256], y[:256]),
        loss=torch.nn.CrossEntropyLoss(),
    )
    samples = s["batch"] * s["steps"]
    base = bstune.TrainConfig(
        batch_size=s["batch"],
        lr=0.05,
        max_samples=samples,
        eval_every_samples=samples // 2,  # two evaluations: the noise windows close there
        eval_train_examples=256,
        device="cpu",
    )
    configs = {
        "plain": base,
        "noise": bstune.TrainConfig.from_dict(base.to_dict() | {"track_noise": True, "noise_every_steps": 1}),
        "noise/8": bstune.TrainConfig.from_dict(base.to_dict() | {"track_noise": True, "noise_every_steps": 8}),
        "control": bstune.TrainConfig.from_dict(base.to_dict() | {"track_noise": True, "noise_every_steps": 10**6}),
    }
    for cfg in configs.values():  # warm-up
        bstune.train(task, cfg)
    rows = []
    for rep in range(s["repeats"]):
        order = list(CONFIGS)
        random.Random(rep).shuffle(order)  # the same order on every rank
        row: dict[str, Any] = {"order": order}
        for name in order:
            w0, spent[0] = time.perf_counter(), 0.0
            result = bstune.train(task, configs[name])
            assert result.status.value == "completed", result.message
            assert (len(result.noise_trajectory) > 0) == (name in ("noise", "noise/8"))
            row[name] = result.train_time_s
            row[f"{name}_wall"] = time.perf_counter() - w0
            row[f"{name}_accounted"] = spent[0]
        rows.append(row)
    return rows


def _summarise(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CONFIGS:
        cpu, wall = [r[name] for r in rows], [r[f"{name}_wall"] for r in rows]
        out[name] = {
            "step_cpu_ms_median": 1000 * statistics.median(cpu) / steps,
            "step_cpu_ms_runs": [round(1000 * t / steps, 2) for t in cpu],
            "run_wall_s_median": statistics.median(wall),
        }
    for name in ("noise", "noise/8", "control"):
        out[name]["ratio"] = statistics.median(r[name] / r["plain"] for r in rows)
        out[name]["ratio_wall"] = statistics.median(r[f"{name}_wall"] / r["plain_wall"] for r in rows)
        out[name]["extra_us_per_step"] = 1e6 * statistics.median((r[name] - r["plain"]) / steps for r in rows)
        out[name]["accounted_us_per_step"] = 1e6 * statistics.median(r[f"{name}_accounted"] / steps for r in rows)
        out[name]["accounted_ratio"] = 1 + statistics.median(r[f"{name}_accounted"] / r["plain"] for r in rows)
    return out


def _markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    m, s = meta["machine"], meta["settings"]
    ratio = summary["noise"]["ratio"]
    load = max(meta["load_before"] or [0]) if meta["load_before"] else None
    shared = load is not None and load > 1.5
    return "\n".join(
        [
            "# The noise scale under DDP: estimator overhead over plain DDP steps",
            "",
            f"- date: {meta['date']}",
            f"- command: `{meta['command']}`",
            f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores, torch {m['torch']}, "
            f"Python {m['python']}"
            + (
                f"; **shared** with other jobs (load average before/after {meta['load_before']} / {meta['load_after']})"
                if shared
                else f"; load average before/after {meta['load_before']} / {meta['load_after']}"
            ),
            f"- code: git {meta['git_commit']}{' (bstune/ modified)' if meta['git_dirty_bstune'] else ''}; "
            f"run time {meta['run_time_s']} s",
            f"- 2 gloo processes on loopback, 1 torch thread each; MLP {s['inputs']}-{s['width']}-{s['width']}-"
            f"{s['classes']}; global B={s['batch']} (2 x {s['batch'] // 2}); {s['steps']} steps per timed run; "
            f"{s['repeats']} interleaved repeats",
            "",
            "Step CPU time: rank 0's main-thread CPU time inside the steps (evaluations left out); accounted: "
            "its CPU time inside the estimator's own calls; run wall time: the whole `bstune.train` call.",
            "",
            "| configuration | step CPU ms (median) | step CPU ms, each run | run wall s (median) |",
            "|---|---:|---|---:|",
            *(
                f"| {name} | {summary[name]['step_cpu_ms_median']:.3f} | "
                f"{', '.join(map(str, summary[name]['step_cpu_ms_runs']))} | {summary[name]['run_wall_s_median']:.3f} |"
                for name in CONFIGS
            ),
            "",
            "| ratio (median of paired ratios within a repeat) | value | target | verdict |",
            "|---|---:|---|---|",
            f"| noise / plain, step CPU time | {ratio:.4f}x | <= 1.01x | **{'met' if ratio <= 1.01 else 'missed'}** |",
            f"| noise / plain, extra CPU per step (median of paired differences) | "
            f"{summary['noise']['extra_us_per_step']:.0f} us | - | - |",
            f"| noise, accounted: (plain + the estimator's own calls) / plain | "
            f"{summary['noise']['accounted_ratio']:.4f}x ({summary['noise']['accounted_us_per_step']:.0f} us "
            f"per step) | <= 1.01x | **{'met' if summary['noise']['accounted_ratio'] <= 1.01 else 'missed'}** |",
            f"| noise / plain, run wall time (indicative) | {summary['noise']['ratio_wall']:.4f}x | - | - |",
            f"| noise/8 / plain, step CPU time | {summary['noise/8']['ratio']:.4f}x | - | - |",
            f"| noise/8 / plain, extra CPU per step | {summary['noise/8']['extra_us_per_step']:.0f} us | - | - |",
            f"| noise/8, accounted | {summary['noise/8']['accounted_ratio']:.4f}x "
            f"({summary['noise/8']['accounted_us_per_step']:.0f} us per step) | - | - |",
            f"| noise/8 / plain, run wall time (indicative) | {summary['noise/8']['ratio_wall']:.4f}x | - | - |",
            f"| control / plain, step CPU time (the noise floor) | {summary['control']['ratio']:.4f}x | - | - |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps of a timed run")
    parser.add_argument("--batch", type=int, default=512, help="global batch size")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 16 steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ddp_noise.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 3, 16
    sys.path.insert(0, str(ROOT))
    from bstune.training import run_data_parallel

    settings = {
        "repeats": args.repeats,
        "steps": args.steps,
        "batch": args.batch,
        "width": args.width,
        "inputs": 128,
        "classes": 10,
        "n_train": args.batch * 16,
    }
    started, load_before = time.time(), loadavg()
    rows = run_data_parallel(rank_bench, settings, nprocs=2, backend="gloo", threads_per_rank=1, timeout_s=900)
    load_after = loadavg()
    meta = {
        **run_facts("benchmarks/ddp_noise.py", argv if argv is not None else sys.argv[1:]),
        "load_before": load_before,
        "load_after": load_after,
        "run_time_s": round(time.time() - started),
        "settings": settings,
    }
    summary = _summarise(rows, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    args.out.write_text(_markdown(meta, summary))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
