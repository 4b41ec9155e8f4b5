"""Trainer throughput with DataLoader workers, and on tensor data against the trainer before the loader.

Run by hand::

    python benchmarks/loader.py              # about 6 minutes on 2 shared CPU cores
    python benchmarks/loader.py --quick      # about 2 minutes, a smoke check

Two questions, five configurations, each timed as one ``bstune.train`` run in a fresh
subprocess (one torch thread in the trainer's process, as DataLoader workers have too):

    aug-0       a generic map-style dataset whose ``__getitem__`` is a deterministic augmentation
                costing ~1 ms (crop, flip, repeated 3x3 blur; calibrated on this machine
                before the runs), ``num_workers=0``
    aug-2       the same with ``num_workers=2``: target >= 1.7x the throughput of aug-0
    aug-before  the same dataset through the trainer before the loader (``--baseline``)
    tensor      the same images as a pair of tensors, ``num_workers=0`` (the fast path)
    tensor-before  the same through the trainer before the loader: target, no slower

The trainer before the loader is the parent of the commit that added
``bstune/training/_sampling.py`` (``--baseline`` names another revision); its ``bstune/``
is extracted with ``git archive`` into a temporary folder that the subprocess imports.

Throughput is samples per second of wall clock inside the steps (the trainer's clock is
swapped for one that keeps the wall time of every step; evaluation and set-up are left
out; for aug-2 it includes waiting for the first batches while the workers start). The
workers run in other processes, so only the wall clock shows what they give; on tensor
data, where everything runs on the trainer's thread, the same steps' CPU time of that
thread is compared too, which other load on the machine does not inflate. The CPU columns
are the trainer's process CPU time over the whole timed run, plus its workers'
(``RUSAGE_CHILDREN``), per training sample: what the workers add (start-up, collation into
shared memory, inter-process traffic). From them, a projection of what two free cores would
give aug-2 is shown, labelled as such: it is arithmetic, not a measurement.

Every repeat runs the configurations in a fresh shuffled order, so load that comes and goes
falls on all of them; a ratio is the median over repeats of the paired ratio within a
repeat. On a machine shared with other jobs the wall-clock ratios are indicative: the load
averages before and after are recorded. Where the kernel's scheduler autogroups are on (one
per session), CPU is shared fairly between sessions, not processes, so a session's workers
split its one slice of a busy machine: no worker count can speed it up there.

Writes ``--out`` (default ``benchmarks/results/loader.md``) and the raw timings, machine
and command as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import git, loadavg, run_child, run_facts  # noqa: E402

N_TRAIN, N_VAL, SIDE, CROP, CLASSES = 4096, 256, 32, 24, 10


# -- the child: one timed run -------------------------------------------------------------------
def _augmented_class() -> Any:
    import torch
    from torch.nn import functional as F

    class Augmented(torch.utils.data.Dataset[tuple[Any, Any]]):
        """Images with a deterministic per-example augmentation of ~1 ms: a crop and a flip chosen
        by the index, then ``rounds`` 3x3 blurs (a stand-in for decoding and colour jitter)."""

        def __init__(self, x: Any, y: Any, rounds: int) -> None:
            self.x, self.y, self.rounds = x, y, rounds

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            top, left = (i * 7) % (SIDE - CROP + 1), (i * 13) % (SIDE - CROP + 1)
            img = self.x[i, :, top : top + CROP, left : left + CROP]
            if i % 2:
                img = img.flip(-1)
            for _ in range(self.rounds):
                img = torch.tanh(F.avg_pool2d(img[None], 3, stride=1, padding=1)[0] * 1.1)
            return img.reshape(-1), self.y[i]

    return Augmented


def _data() -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(N_TRAIN + N_VAL, 3, SIDE, SIDE, generator=gen)
    y = torch.randint(0, CLASSES, (N_TRAIN + N_VAL,), generator=gen)
    return x, y


def calibrate(target_ms: float) -> tuple[int, float]:
    """Blur rounds that make one ``__getitem__`` cost about ``target_ms`` on one thread, and its cost."""
    import torch

    torch.set_num_threads(1)
    x, y = _data()
    ds = _augmented_class()(x, y, rounds=1)
    for _ in range(50):
        ds[0]
    costs = []
    for rounds in (1, 41):
        ds.rounds = rounds
        t0 = time.perf_counter()
        for i in range(300):
            ds[i]
        costs.append((time.perf_counter() - t0) / 300 * 1000)
    per_round = (costs[1] - costs[0]) / 40
    rounds = max(1, round(1 + (target_ms - costs[0]) / per_round))
    ds.rounds = rounds
    t0 = time.perf_counter()
    for i in range(300):
        ds[i]
    return rounds, (time.perf_counter() - t0) / 300 * 1000


class _StepClock:
    """Stands in for the ``time`` module inside ``bstune.training._loop`` during the timed run (as in
    ``noise_overhead.py``): the trainer's ``train_time_s`` becomes the main thread's CPU time inside
    the steps (``time.thread_time``), and every call's wall clock is kept to sum the steps' wall time."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def perf_counter(self) -> float:
        self.stamps.append(time.perf_counter())
        return time.thread_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def wall_step_time(self, steps: int) -> float:
        """Wall seconds inside the steps: ``started``, then ``t0``/``t1`` around each step, then the
        final record's and the result's stamps (one evaluation, at the end)."""
        assert len(self.stamps) == 2 * steps + 3, (len(self.stamps), steps)
        return sum(self.stamps[2 * i + 2] - self.stamps[2 * i + 1] for i in range(steps))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration: a warm-up run, then the timed run; returns its timings."""
    import torch
    from torch import nn

    import bstune

    torch.set_num_threads(1)
    x, y = _data()
    ds = _augmented_class()(x[:N_TRAIN], y[:N_TRAIN], spec["rounds"])
    if spec["data"] == "tensor":  # the same shapes, made without the blurs (only the shapes matter here)
        plain = _augmented_class()(x[:N_TRAIN], y[:N_TRAIN], 0)
        train_data: Any = tuple(torch.stack(t) for t in zip(*(plain[i] for i in range(N_TRAIN)), strict=True))
    else:
        train_data = ds
    val = _augmented_class()(x[N_TRAIN:], y[N_TRAIN:], 0)
    val_data = tuple(torch.stack(t) for t in zip(*(val[i] for i in range(N_VAL)), strict=True))
    task = bstune.Task(
        model=lambda: nn.Sequential(nn.Linear(3 * CROP * CROP, 128), nn.ReLU(), nn.Linear(128, CLASSES)),
        train_data=train_data,
        val_data=val_data,
        loss=nn.CrossEntropyLoss(),
        name="loader-bench",
    )
    extra = {"num_workers": spec["workers"]} if spec["workers"] else {}
    samples = spec["steps"] * spec["batch"]
    base = dict(batch_size=spec["batch"], lr=0.05, eval_train_examples=64, device="cpu", **extra)
    bstune.train(task, bstune.TrainConfig(max_samples=4 * spec["batch"], **base))  # warm-up
    import bstune.training._loop as loop

    clock = _StepClock()
    loop.time = clock  # type: ignore[assignment]
    cpu0, workers0 = time.process_time(), _children_cpu()
    run = bstune.train(task, bstune.TrainConfig(max_samples=samples, eval_every_samples=samples, **base))
    workers_cpu = _children_cpu() - workers0  # the run's workers, joined when it ended
    loop.time = time  # type: ignore[assignment]
    wall = clock.wall_step_time(run.steps)
    return {
        "samples": run.samples,
        "steps_wall_s": wall,
        "steps_cpu_s": run.train_time_s,  # the trainer's thread, inside the steps
        "throughput": run.samples / wall,
        "throughput_cpu": run.samples / run.train_time_s,
        "main_cpu_s": time.process_time() - cpu0,
        "workers_cpu_s": workers_cpu,
        "final_val_loss": run.final.val_loss if run.final else None,
        "bstune": str(Path(bstune.__file__).parent),
    }


# -- the parent: interleaved repeats -------------------------------------------------------------
CONFIGS = {
    "aug-0": {"data": "aug", "workers": 0, "code": "new"},
    "aug-2": {"data": "aug", "workers": 2, "code": "new"},
    "aug-before": {"data": "aug", "workers": 0, "code": "before"},
    "tensor": {"data": "tensor", "workers": 0, "code": "new"},
    "tensor-before": {"data": "tensor", "workers": 0, "code": "before"},
}


def _baseline_rev() -> str:
    added = git("log", "--diff-filter=A", "--format=%H", "--", "bstune/training/_sampling.py")
    if not added:
        raise SystemExit("cannot find the commit that added bstune/training/_sampling.py; pass --baseline REV")
    return f"{added.splitlines()[-1]}^"


def _extract(rev: str, into: Path) -> str:
    sha = git("rev-parse", "--short=10", rev)
    if sha is None:
        raise SystemExit(f"git cannot resolve --baseline {rev!r}")
    archive = subprocess.run(["git", "archive", sha, "bstune"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return sha


def _paired(rows: list[dict[str, Any]], a: str, b: str, key: str = "throughput") -> float:
    """Median over repeats of ``key`` of a over b, both from the same repeat."""
    return statistics.median(r[a][key] / r[b][key] for r in rows if a in r and b in r)


def _per_sample(run: dict[str, Any], *keys: str) -> float:
    return sum(run[k] for k in keys) / run["samples"] * 1000


def _summarise(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    summary = {}
    for name in CONFIGS:
        runs = [r[name] for r in rows if name in r]
        summary[name] = {
            "n": len(runs),
            "throughput_median": statistics.median(x["throughput"] for x in runs),
            "throughput_runs": [round(x["throughput"]) for x in runs],
            "throughput_cpu_median": statistics.median(x["throughput_cpu"] for x in runs),
            "main_cpu_ms_per_sample": statistics.median(_per_sample(x, "main_cpu_s") for x in runs),
            "cpu_ms_per_sample": statistics.median(_per_sample(x, "main_cpu_s", "workers_cpu_s") for x in runs),
        }
    # what two free cores would allow aug-2: its CPU (trainer + workers) spread over both, or the
    # trainer's own if that is larger; against aug-0's CPU on one (both whole runs, per sample)
    projected = statistics.median(
        _per_sample(r["aug-0"], "main_cpu_s")
        / max(_per_sample(r["aug-2"], "main_cpu_s"), _per_sample(r["aug-2"], "main_cpu_s", "workers_cpu_s") / 2)
        for r in rows
        if "aug-2" in r
    )
    ratios = {
        "aug-2 / aug-0": _paired(rows, "aug-2", "aug-0"),
        "aug-2 / aug-0 projected on 2 free cores": projected,
        "aug-0 / aug-before": _paired(rows, "aug-0", "aug-before"),
        "aug-0 / aug-before, CPU": _paired(rows, "aug-0", "aug-before", "throughput_cpu"),
        "tensor / tensor-before": _paired(rows, "tensor", "tensor-before"),
        "tensor / tensor-before, CPU": _paired(rows, "tensor", "tensor-before", "throughput_cpu"),
    }
    return summary, ratios


def _autogroup() -> str | None:
    """This process's scheduler autogroup: where autogroups are on, CPU is shared fairly between
    sessions, so a session's worker processes share its one slice of a busy machine."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        return Path("/proc/self/autogroup").read_text().split()[0] if enabled else None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps of a timed run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--item-ms", type=float, default=1.0, help="target cost of one __getitem__")
    parser.add_argument("--tensor-steps", type=int, default=400, help="steps of a timed run on tensor data")
    parser.add_argument("--tensor-repeats", type=int, default=8, help="more repeats of the tensor pair alone")
    parser.add_argument("--baseline", default=None, help="git revision of the trainer before the loader")
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader.md")
    parser.add_argument("--render", type=Path, default=None, help="write --out from this JSON, running nothing")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.render is not None:  # the tables again from a run's JSON
        data = json.loads(args.render.read_text())
        summary, ratios = _summarise(data["rows"])
        args.out.write_text(_markdown(data, summary, ratios))
        print(args.out.read_text())
        return 0
    if args.quick:
        args.repeats, args.tensor_repeats, args.steps, args.tensor_steps = 3, 2, 20, 200
    started, load_before = time.time(), loadavg()
    rounds, item_ms = calibrate(args.item_ms)
    print(f"__getitem__: {rounds} blur rounds, {item_ms:.2f} ms", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        rev = args.baseline or _baseline_rev()
        sha = _extract(rev, Path(tmp))
        paths = {"new": ROOT, "before": Path(tmp)}
        rows: list[dict[str, Any]] = []
        for rep in range(args.repeats + args.tensor_repeats):
            order = list(CONFIGS) if rep < args.repeats else ["tensor", "tensor-before"]
            random.Random(rep).shuffle(order)
            row: dict[str, Any] = {"order": order}
            for name in order:
                cfg = CONFIGS[name]
                steps = args.tensor_steps if cfg["data"] == "tensor" else args.steps
                spec = {**cfg, "rounds": rounds, "steps": steps, "batch": args.batch}
                row[name] = run_child(str(Path(__file__).resolve()), spec, paths[cfg["code"]])
                assert Path(row[name]["bstune"]).parent.resolve() == paths[cfg["code"]].resolve(), row[name]
                print(f"repeat {rep}: {name:14s} {row[name]['throughput']:9.0f} samples/s", file=sys.stderr)
            rows.append(row)
    load_after = loadavg()
    meta = {
        **run_facts("benchmarks/loader.py", argv if argv is not None else sys.argv[1:]),
        "baseline": {"rev": rev, "sha": sha},
        "load_before": load_before,
        "load_after": load_after,
        "run_time_s": round(time.time() - started),
        "getitem": {"rounds": rounds, "ms": item_ms},
        "settings": {k: getattr(args, k) for k in ("repeats", "tensor_repeats", "steps", "batch", "tensor_steps")},
        "autogroup": _autogroup(),
    }
    summary, ratios = _summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({**meta, "summary": summary, "ratios": ratios, "rows": rows}, indent=1) + "\n"
    )
    args.out.write_text(_markdown(meta, summary, ratios))
    print(args.out.read_text())
    return 0


def _markdown(meta: dict[str, Any], summary: dict[str, Any], ratios: dict[str, float]) -> str:
    m, s = meta["machine"], meta["settings"]
    speedup, projected = ratios["aug-2 / aug-0"], ratios["aug-2 / aug-0 projected on 2 free cores"]
    same, tensor, tensor_cpu = (
        ratios["aug-0 / aug-before"],
        ratios["tensor / tensor-before"],
        ratios["tensor / tensor-before, CPU"],
    )
    load = max(meta["load_before"] or [0]) if meta["load_before"] else None
    shared = load is not None and load > 1.5
    lines = [
        "# Data loading: trainer throughput with DataLoader workers",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores, torch {m['torch']}, Python {m['python']}"
        + (
            f"; **shared** with other jobs (load average before/after {meta['load_before']} / {meta['load_after']})"
            if shared
            else f"; load average before/after {meta['load_before']} / {meta['load_after']}"
        )
        + (f"; scheduler autogroups on (this run: {meta['autogroup']})" if meta.get("autogroup") else ""),
        f"- code: git {meta['git_commit']}{' (bstune/ modified)' if meta['git_dirty_bstune'] else ''}; "
        f"before the loader: {meta['baseline']['rev']} = {meta['baseline']['sha']}; run time {meta['run_time_s']} s",
        f"- `__getitem__`: crop, flip and {meta['getitem']['rounds']} 3x3 blurs of a 3x32x32 image: "
        f"{meta['getitem']['ms']:.2f} ms on one thread; MLP {3 * CROP * CROP}-128-{CLASSES}, B={s['batch']}, "
        f"{s['steps']} steps per timed run ({s['tensor_steps']} on tensor data); {s['repeats']} interleaved "
        f"repeats of all five, {s['tensor_repeats']} more of the tensor pair",
        "",
        "samples/s: wall clock inside the steps; CPU columns: per training sample, over the whole timed run "
        "(trainer process; + its workers).",
        "",
        "| configuration | runs | samples/s (median) | samples/s, each run | trainer CPU ms/sample "
        "| + workers CPU ms/sample |",
        "|---|---:|---:|---|---:|---:|",
        *(
            f"| {name} | {v['n']} | {v['throughput_median']:.0f} | {', '.join(map(str, v['throughput_runs']))} "
            f"| {v['main_cpu_ms_per_sample']:.3f} | {v['cpu_ms_per_sample']:.3f} |"
            for name, v in summary.items()
        ),
        "",
        "| ratio (median of paired ratios within a repeat) | value | target | verdict |",
        "|---|---:|---|---|",
        f"| 2 workers / 0 workers, ~1 ms items, wall | {speedup:.2f}x | >= 1.7x | "
        f"**{'met' if speedup >= 1.7 else 'missed'}** |",
        f"| the same, projected on 2 free cores from the CPU times (arithmetic, not a measurement; above 2x "
        f"only through the CPU times' own noise) | {projected:.2f}x | - | - |",
        f"| 0 workers / before the loader, ~1 ms items, wall | {same:.2f}x | ~1.00x | - |",
        f"| 0 workers / before the loader, ~1 ms items, trainer CPU in the steps "
        f"| {ratios['aug-0 / aug-before, CPU']:.2f}x | ~1.00x | - |",
        f"| tensor data, 0 workers / before the loader, wall | {tensor:.2f}x | no slower | - |",
        f"| tensor data, 0 workers / before the loader, trainer CPU in the steps | {tensor_cpu:.2f}x | no slower "
        f"(>= 0.97x: the noise) | **{'met' if tensor_cpu >= 0.97 else 'missed'}** |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
