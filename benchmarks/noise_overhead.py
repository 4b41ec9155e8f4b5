"""What tracking the gradient noise scale during training costs, against the bare loop.

Run by hand (``make bench`` runs it with the defaults)::

    .venv/bin/python benchmarks/noise_overhead.py            # about 4-5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/noise_overhead.py --quick    # about a minute, for a smoke check

For each problem and batch size it times ``bstune.train`` under these configurations
(ms per optimizer step = ``result.train_time_s / result.steps``, which excludes
evaluation; there is one evaluation, at the end):

    a  bare            no accumulation, no tracking
    b  accum k=4       4 micro-batches accumulated, no tracking (what accumulation users pay anyway)
    c  accum k=4+noise the same with ``track_noise``: the claim is <= 3 % over (b)
    d1 noise every=1   no accumulation, ``track_noise`` with ``noise_every_steps=1``
                       (every step split in two micro-batches)
    d10 noise every=10 the same with ``noise_every_steps=10``
    e  per-example     ``measure_noise_scale(method="per_example")``, time per batch of the
                       same size, against one bare training step (a); it is 10-100x slower
                       than a step, so it is timed in the first 3 repeats only

Every timing is repeated; configurations are run in a fresh shuffled order in every
repeat (and the problem/batch groups too), so slow drift and other load on the machine
fall on all of them alike. The table shows the median and the minimum over repeats;
the overhead is the median over repeats of the paired ratio (config / reference, both
from the same repeat), so load that comes and goes cancels as far as it can.
Everything runs after a warm-up pass, with ``torch.set_num_threads`` fixed (default 1).

By default the clock is the thread's CPU time, not the wall clock: the trainer's
``time.perf_counter`` is pointed at ``time.thread_time`` for the timed runs (see
``_LoopClock``), so on a shared machine the time this process spends descheduled does
not count. With one torch thread the whole CPU step runs on that thread. The wall-clock
times of the same steps are recorded beside it; ``--clock wall`` makes them the main one.

Writes a markdown table to ``--out`` (default ``benchmarks/results/noise_overhead.md``)
and the raw timings, machine and command as JSON beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _provenance import cpu_model, git, loadavg
from torch import nn

import bstune
from bstune.training import _loop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "noise_overhead.md"

K_MICRO = 4  # micro-batches per step in the accumulation configurations


# -- problems ------------------------------------------------------------------------------
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


@dataclass
class Problem:
    name: str
    description: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    steps: int  # optimizer steps per timed run (a multiple of 10, so d10 measures 1 step in 10)
    n_train: int = 4096
    n_val: int = 512
    task: bstune.Task | None = field(default=None, repr=False)

    def build(self, seed: int = 0) -> bstune.Task:
        gen = torch.Generator().manual_seed(seed)
        n = self.n_train + self.n_val
        x = torch.randn(n, *self.input_shape, generator=gen)
        # labels from a fixed random linear teacher plus label noise: learnable, not trivial
        dim = x[0].numel()
        teacher = torch.randn(dim, 10, generator=gen)
        logits = x.flatten(1) @ teacher / dim**0.5
        y = (logits + torch.randn(n, 10, generator=gen)).argmax(1)
        train = (x[: self.n_train], y[: self.n_train])
        val = (x[self.n_train :], y[self.n_train :])
        self.task = bstune.Task(
            model=self.factory, train_data=train, val_data=val, loss=nn.CrossEntropyLoss(), name=self.name
        )
        return self.task

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.factory().parameters())


def _problems(quick: bool) -> list[Problem]:
    return [
        Problem("mlp", "MLP 784-256-256-10", _mlp, (784,), steps=20 if quick else 100),
        Problem("cnn", "CNN conv16-conv32-fc256-10 on 1x28x28", _cnn, (1, 28, 28), steps=10 if quick else 30),
    ]


# -- configurations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    key: str
    label: str
    reference: str | None  # key of the configuration the overhead is taken against
    train_kwargs: dict[str, Any] | None  # None: the per-example measurement, not a training run


def _configs(batch: int) -> list[Config]:
    micro = batch // K_MICRO
    return [
        Config("a", "a bare", None, {}),
        Config("b", f"b accum k={K_MICRO}", "a", {"micro_batch_size": micro}),
        Config(
            "c1",
            f"c accum k={K_MICRO} + track_noise every=1",
            "b",
            {"micro_batch_size": micro, "track_noise": True, "noise_every_steps": 1},
        ),
        Config(
            "c",
            f"c accum k={K_MICRO} + track_noise (default every=8)",
            "b",
            {"micro_batch_size": micro, "track_noise": True},
        ),
        Config("d1", "d track_noise every=1", "a", {"track_noise": True, "noise_every_steps": 1}),
        Config("d10", "d track_noise every=10", "a", {"track_noise": True, "noise_every_steps": 10}),
        Config("e", "e per_example (per batch)", "a", None),
    ]


class _LoopClock:
    """Stands in for the ``time`` module inside ``bstune.training._loop`` during a timed run.

    ``train`` measures ``train_time_s`` as a sum of ``time.perf_counter()`` differences
    around each step. With ``cpu=True`` this hands it the calling thread's CPU time
    instead (``time.thread_time``), which time spent descheduled by other processes on a
    busy machine does not inflate; with one torch thread all the work of a CPU step runs
    on the calling thread. Every call also records the wall clock, so the wall time of
    the steps can be read back (see :meth:`wall_step_time`).
    """

    def __init__(self, cpu: bool) -> None:
        self.cpu = cpu
        self.stamps: list[float] = []

    def perf_counter(self) -> float:
        self.stamps.append(time.perf_counter())
        return time.thread_time() if self.cpu else self.stamps[-1]

    def __getattr__(self, name: str) -> Any:  # anything else the loop may use: the real module's
        return getattr(time, name)

    def wall_step_time(self, steps: int) -> float | None:
        """Wall seconds inside the steps, if the calls follow the loop's known pattern.

        One evaluation at the end and none at the start: ``started``, then ``t0``/``t1``
        around each step, then the record's and the result's stamps.
        """
        if len(self.stamps) != 2 * steps + 3:
            return None
        return sum(self.stamps[2 * i + 2] - self.stamps[2 * i + 1] for i in range(steps))


def _time_train(
    task: bstune.Task, batch: int, steps: int, kwargs: dict[str, Any], seed: int, cpu: bool
) -> tuple[float, float | None]:
    """Seconds per optimizer step of one ``bstune.train`` run (evaluation excluded): (clock, wall)."""
    samples = steps * batch
    config = bstune.TrainConfig(
        batch_size=batch,
        lr=0.01,
        max_samples=samples,
        eval_every_samples=samples,
        eval_train_examples=256,
        eval_batch_size=512,
        seed=seed,
        device="cpu",
        **kwargs,
    )
    gc.collect()
    clock = _LoopClock(cpu)
    saved = _loop.time
    _loop.time = clock  # type: ignore[assignment]
    try:
        result = bstune.train(task, config)
    finally:
        _loop.time = saved
    if result.status is not bstune.RunStatus.COMPLETED or result.steps != steps:
        raise RuntimeError(f"timing run ended {result.status.value} after {result.steps} steps: {result.message}")
    if cpu and len(clock.stamps) < 2 * steps:
        raise RuntimeError(
            "bstune.train no longer times its steps with time.perf_counter, so the CPU clock cannot be "
            "handed to it; run with --clock wall (or update _LoopClock)"
        )
    wall = clock.wall_step_time(steps)
    return result.train_time_s / result.steps, (wall / steps if wall is not None else None)


def _time_per_example(
    task: bstune.Task, model: nn.Module, batch: int, n_batches: int, seed: int, cpu: bool
) -> tuple[float, float]:
    """Seconds per batch of ``measure_noise_scale(method="per_example")``: (clock, wall)."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.thread_time()
    bstune.measure_noise_scale(
        task, model, batch_size=batch, method="per_example", n_batches=n_batches, seed=seed, device="cpu"
    )
    wall = (time.perf_counter() - w0) / n_batches
    return ((time.thread_time() - c0) / n_batches if cpu else wall), wall


# -- machine and provenance ----------------------------------------------------------------


def _source_digest() -> str:
    """Short sha256 over the package sources the timings depend on (to spot edits during a run)."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "bstune").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _machine(threads: int) -> dict[str, Any]:
    loop = ROOT / "bstune" / "training" / "_loop.py"
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": threads,
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bstune": bstune.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_bstune": bool(git("status", "--porcelain", "--", "bstune")),
        "loop_py_sha256": hashlib.sha256(loop.read_bytes()).hexdigest()[:16] if loop.exists() else None,
        "bstune_sources_sha256": _source_digest(),
    }


# -- the benchmark -------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    problems = _problems(args.quick)
    batches = args.batch_sizes
    for p in problems:
        p.build(seed=0)
    groups = [(p, b) for p in problems for b in batches]
    models = {(p.name, b): p.task.make_model(seed=0) for p, b in groups if p.task is not None}

    cpu = args.clock == "cpu"

    def one(p: Problem, b: int, cfg: Config, seed: int, warm: bool = False) -> tuple[float, float | None]:
        assert p.task is not None
        if cfg.train_kwargs is None:
            return _time_per_example(p.task, models[(p.name, b)], b, args.per_example_batches, seed, cpu)
        steps = min(p.steps, 10) if warm else p.steps
        return _time_train(p.task, b, steps, cfg.train_kwargs, seed, cpu)

    started = time.perf_counter()
    _log(f"warm-up ({len(groups)} groups x {len(_configs(2))} configurations)")
    for p, b in groups:
        for cfg in _configs(b):
            one(p, b, cfg, seed=0, warm=True)
    warm_s = time.perf_counter() - started

    # timings by (problem, batch, config) -> {repeat: seconds}; wall may be None (see _LoopClock)
    times: dict[tuple[str, int, str], dict[int, float]] = {}
    walls: dict[tuple[str, int, str], dict[int, float]] = {}
    rng = random.Random(args.seed)
    for rep in range(args.repeats):
        order = groups[:]
        rng.shuffle(order)
        for p, b in order:
            cfgs = [c for c in _configs(b) if c.train_kwargs is not None or rep < args.per_example_repeats]
            rng.shuffle(cfgs)
            for cfg in cfgs:
                t, w = one(p, b, cfg, seed=rep)
                times.setdefault((p.name, b, cfg.key), {})[rep] = t
                if w is not None:
                    walls.setdefault((p.name, b, cfg.key), {})[rep] = w
        _log(f"repeat {rep + 1}/{args.repeats} done, {time.perf_counter() - started:.0f}s elapsed, load {loadavg()}")

    def ratios(num: dict[int, float], den: dict[int, float]) -> list[float]:
        """num/den in each repeat both were timed in."""
        return [num[r] / den[r] for r in num if r in den]

    def paired(num: dict[int, float], den: dict[int, float]) -> float | None:
        """Median over repeats of num/den, as a percentage over 1."""
        rs = ratios(num, den)
        return 100 * (statistics.median(rs) - 1) if rs else None

    rows = []
    for p, b in groups:
        for cfg in _configs(b):
            key = (p.name, b, cfg.key)
            ts, ws = times[key], walls.get(key, {})
            row: dict[str, Any] = {
                "problem": p.name,
                "batch": b,
                "config": cfg.key,
                "label": cfg.label,
                "reference": cfg.reference,
                "n": len(ts),
                "ms_median": 1e3 * statistics.median(ts.values()),
                "ms_min": 1e3 * min(ts.values()),
                "ms_by_repeat": {r: 1e3 * t for r, t in ts.items()},
                "wall_ms_median": 1e3 * statistics.median(ws.values()) if ws else None,
                "wall_ms_by_repeat": {r: 1e3 * w for r, w in ws.items()},
            }
            if cfg.reference is not None:
                ref = (p.name, b, cfg.reference)
                row["overhead_pct_median"] = paired(ts, times[ref])
                row["paired_ratios"] = ratios(ts, times[ref])
                row["overhead_pct_min"] = 100 * (min(ts.values()) / min(times[ref].values()) - 1)
                row["wall_overhead_pct_median"] = paired(ws, walls.get(ref, {}))
            if cfg.key == "c":  # also against the bare loop, for scale
                row["overhead_vs_bare_pct_median"] = paired(ts, times[(p.name, b, "a")])
            rows.append(row)
    return {
        "rows": rows,
        "problems": [
            {"name": p.name, "description": p.description, "params": p.n_params, "steps_per_run": p.steps}
            for p in problems
        ],
        "warmup_s": warm_s,
        "total_s": time.perf_counter() - started,
    }


def _markdown(meta: dict[str, Any], res: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        "# Noise-scale tracking overhead",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['cores_available']} available), "
        f"torch {m['torch']}, `torch.set_num_threads({m['torch_num_threads']})`, Python {m['python']}",
        f"- code: git {(m['git_commit'] or '?')[:10]}{' (bstune/ modified)' if m['git_dirty_bstune'] else ''}, "
        f"bstune/training/_loop.py sha256 {m['loop_py_sha256']}, bstune/**.py sha256 {m['bstune_sources_sha256']}"
        + (
            ""
            if meta["bstune_sources_sha256_after"] == m["bstune_sources_sha256"]
            else f" (**changed during the run**, to {meta['bstune_sources_sha256_after']})"
        ),
        f"- clock: {meta['clock']}; repeats: {meta['repeats']} (interleaved, shuffled order), (e) timed in the "
        f"first {meta['per_example_repeats']} with {meta['per_example_batches']} batches each; load average "
        f"before/after: {meta['loadavg_before']} / {meta['loadavg_after']}; run time {res['total_s']:.0f}s",
        "- problems: "
        + "; ".join(
            f"{p['name']} = {p['description']} ({p['params']:,} params, {p['steps_per_run']} steps per timed run)"
            for p in res["problems"]
        )
        + f"; synthetic data, {meta['n_train']} training examples, seeded",
        "",
        "ms/step is `train_time_s / steps` of one `bstune.train` run (evaluation excluded); for (e) it is the time",
        "of `measure_noise_scale(method='per_example')` per batch. "
        + (
            "The clock is the thread's **CPU time** (`time.thread_time`, handed to the loop in place of "
            "`perf_counter`), so other load on the machine does not count; the wall-clock median of the same "
            "steps is shown beside it."
            if meta["clock"] == "cpu"
            else "The clock is the wall clock (`time.perf_counter`)."
        ),
        "Overhead % is the median over repeats of the paired ratio to the reference configuration run in the same",
        "repeat; 'min' compares the fastest runs.",
        "",
        "| problem | batch | config | ms/step median | ms/step min | wall ms/step median | reference "
        "| overhead % (median) | overhead % (min) | wall overhead % (median) |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]

    def pct(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:+.1f}" if r.get(key) is not None else "-"

    for r in res["rows"]:
        wall = f"{r['wall_ms_median']:.2f}" if r["wall_ms_median"] is not None else "-"
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['label']} | {r['ms_median']:.2f} | {r['ms_min']:.2f} | {wall} "
            f"| {r['reference'] or '-'} | {pct(r, 'overhead_pct_median')} | {pct(r, 'overhead_pct_min')} "
            f"| {pct(r, 'wall_overhead_pct_median')} |"
        )
    c_rows = [r for r in res["rows"] if r["config"] == "c"]
    e_rows = [r for r in res["rows"] if r["config"] == "e"]
    lines += ["", "Summary:", ""]
    for r in c_rows:
        verdict = "within" if r["overhead_pct_median"] <= 3.0 else "ABOVE"
        spread = ", ".join(f"{100 * (x - 1):+.0f}" for x in sorted(r["paired_ratios"]))
        lines.append(
            f"- {r['problem']} B={r['batch']}: tracking with accumulation costs {r['overhead_pct_median']:+.1f}% over "
            f"accumulation alone ({verdict} the 3% claim; per repeat: {spread}%); "
            f"{r['overhead_vs_bare_pct_median']:+.1f}% over the bare loop."
        )
    for r in e_rows:
        lines.append(
            f"- {r['problem']} B={r['batch']}: one per-example batch costs {1 + r['overhead_pct_median'] / 100:.1f} "
            "bare training steps."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: 2 repeats, fewer steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file; the JSON goes beside it")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7, --quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: stable timings)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--per-example-batches", type=int, default=2, help="n_batches per per-example timing")
    parser.add_argument(
        "--per-example-repeats",
        type=int,
        default=None,
        help="repeats that also time (e), the slowest and least delicate measurement (default 3, --quick 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="what ms/step counts: the thread's CPU time (default; robust to other load) or the wall clock",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.per_example_repeats is None:
        args.per_example_repeats = 1 if args.quick else 3
    args.per_example_repeats = max(1, min(args.per_example_repeats, args.repeats))
    if any(b % K_MICRO for b in args.batch_sizes):
        parser.error(f"batch sizes must be multiples of {K_MICRO}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "cwd": str(Path.cwd()),
        "machine": _machine(torch.get_num_threads()),
        "repeats": args.repeats,
        "clock": args.clock,
        "quick": args.quick,
        "batch_sizes": args.batch_sizes,
        "k_micro": K_MICRO,
        "per_example_batches": args.per_example_batches,
        "per_example_repeats": args.per_example_repeats,
        "n_train": 4096,
        "loadavg_before": loadavg(),
    }
    res = run(args)
    meta["loadavg_after"] = loadavg()
    meta["bstune_sources_sha256_after"] = _source_digest()
    if meta["bstune_sources_sha256_after"] != meta["machine"]["bstune_sources_sha256"]:
        _log("warning: bstune's sources changed during the run; the timings may mix two versions")
    text = _markdown(meta, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, **res}, indent=2) + "\n")
    print(text)
    _log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
