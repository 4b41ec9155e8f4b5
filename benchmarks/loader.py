"""Trainer throughput with DataLoader workers, and on tensor data against the trainer before the loader.

Run by hand::

    python benchmarks/loader.py              # about 3-4 minutes on 2 CPU cores
    python benchmarks/loader.py --quick      # about a minute, a smoke check

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

The CPU column is the trainer's process CPU time over the whole timed run (evaluation
and set-up included) plus its workers' (``RUSAGE_CHILDREN``), per training sample: what
the workers add in copying and inter-process traffic, whatever the load.

Throughput is ``samples / train_time_s`` (wall clock inside the steps: the workers run in
other processes, so CPU time of the trainer's thread would not show what they cost; for
aug-2 it includes waiting for the first batches while the workers start). Every repeat
runs the configurations in a fresh shuffled order, so load that comes and goes falls on all
of them; a ratio is the median over repeats of the paired ratio within a repeat. On a
machine shared with other jobs the ratios are indicative: the load averages before and
after are recorded.

Writes ``--out`` (default ``benchmarks/results/loader.md``) and the raw timings, machine
and command as JSON beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import cpu_model, git, loadavg  # noqa: E402

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
    cpu0, workers0 = time.process_time(), _children_cpu()
    run = bstune.train(task, bstune.TrainConfig(max_samples=samples, eval_every_samples=samples, **base))
    workers_cpu = _children_cpu() - workers0  # the run's workers, joined when it ended
    return {
        "samples": run.samples,
        "train_time_s": run.train_time_s,
        "wall_time_s": run.wall_time_s,
        "throughput": run.throughput,
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


def _run_child(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    env = os.environ | {"PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {spec} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _paired(rows: list[dict[str, Any]], a: str, b: str) -> float:
    """Median over repeats of throughput(a) / throughput(b), both from the same repeat."""
    return statistics.median(r[a]["throughput"] / r[b]["throughput"] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of a timed run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--item-ms", type=float, default=1.0, help="target cost of one __getitem__")
    parser.add_argument("--tensor-steps", type=int, default=400, help="steps of a timed run on tensor data")
    parser.add_argument("--baseline", default=None, help="git revision of the trainer before the loader")
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.repeats, args.steps, args.tensor_steps = 3, 20, 200
    started, load_before = time.time(), loadavg()
    rounds, item_ms = calibrate(args.item_ms)
    print(f"__getitem__: {rounds} blur rounds, {item_ms:.2f} ms", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        rev = args.baseline or _baseline_rev()
        sha = _extract(rev, Path(tmp))
        paths = {"new": ROOT, "before": Path(tmp)}
        rows: list[dict[str, Any]] = []
        for rep in range(args.repeats):
            order = list(CONFIGS)
            random.Random(rep).shuffle(order)
            row: dict[str, Any] = {"order": order}
            for name in order:
                cfg = CONFIGS[name]
                steps = args.tensor_steps if cfg["data"] == "tensor" else args.steps
                spec = {**cfg, "rounds": rounds, "steps": steps, "batch": args.batch}
                row[name] = _run_child(spec, paths[cfg["code"]])
                assert Path(row[name]["bstune"]).parent.resolve() == paths[cfg["code"]].resolve(), row[name]
                print(f"repeat {rep}: {name:14s} {row[name]['throughput']:9.0f} samples/s", file=sys.stderr)
            rows.append(row)
    load_after = loadavg()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/loader.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpu_model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
        },
        "git_commit": git("rev-parse", "--short=10", "HEAD"),
        "git_dirty_bstune": bool(git("status", "--porcelain", "--", "bstune")),
        "baseline": {"rev": rev, "sha": sha},
        "load_before": load_before,
        "load_after": load_after,
        "run_time_s": round(time.time() - started),
        "getitem": {"rounds": rounds, "ms": item_ms},
        "settings": {k: getattr(args, k) for k in ("repeats", "steps", "batch", "tensor_steps")},
    }
    summary = {
        name: {
            "throughput_median": statistics.median(r[name]["throughput"] for r in rows),
            "throughput_runs": [round(r[name]["throughput"]) for r in rows],
            "cpu_ms_per_sample": statistics.median(
                (r[name]["main_cpu_s"] + r[name]["workers_cpu_s"]) / r[name]["samples"] * 1000 for r in rows
            ),
        }
        for name in CONFIGS
    }
    ratios = {
        "aug-2 / aug-0": _paired(rows, "aug-2", "aug-0"),
        "aug-0 / aug-before": _paired(rows, "aug-0", "aug-before"),
        "tensor / tensor-before": _paired(rows, "tensor", "tensor-before"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({**meta, "summary": summary, "ratios": ratios, "rows": rows}, indent=1) + "\n"
    )
    args.out.write_text(_markdown(meta, summary, ratios))
    print(args.out.read_text())
    return 0


def _markdown(meta: dict[str, Any], summary: dict[str, Any], ratios: dict[str, float]) -> str:
    m, s = meta["machine"], meta["settings"]
    speedup, same, tensor = ratios["aug-2 / aug-0"], ratios["aug-0 / aug-before"], ratios["tensor / tensor-before"]
    lines = [
        "# Data loading: trainer throughput with DataLoader workers",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu_model']}, {m['logical_cores']} logical cores, torch {m['torch']}, Python {m['python']}",
        f"- code: git {meta['git_commit']}{' (bstune/ modified)' if meta['git_dirty_bstune'] else ''}; "
        f"before the loader: {meta['baseline']['rev']} = {meta['baseline']['sha']}",
        f"- load average before/after: {meta['load_before']} / {meta['load_after']}; run time {meta['run_time_s']} s",
        f"- `__getitem__`: crop, flip and {meta['getitem']['rounds']} 3x3 blurs of a 3x32x32 image: "
        f"{meta['getitem']['ms']:.2f} ms on one thread; MLP {3 * CROP * CROP}-128-{CLASSES}, B={s['batch']}, "
        f"{s['steps']} steps per timed run ({s['tensor_steps']} on tensor data); {s['repeats']} interleaved repeats",
        "",
        "| configuration | samples/s (median) | runs | CPU ms per sample, all processes (median) |",
        "|---|---:|---|---:|",
        *(
            f"| {name} | {v['throughput_median']:.0f} | {', '.join(map(str, v['throughput_runs']))} "
            f"| {v['cpu_ms_per_sample']:.2f} |"
            for name, v in summary.items()
        ),
        "",
        "| ratio (median of paired ratios) | value | target | verdict |",
        "|---|---:|---|---|",
        f"| 2 workers / 0 workers, ~1 ms items | {speedup:.2f}x | >= 1.7x | {'met' if speedup >= 1.7 else 'missed'} |",
        f"| 0 workers / before the loader, ~1 ms items | {same:.2f}x | ~1.00x | - |",
        f"| tensor data / before the loader | {tensor:.2f}x | no slower (>= 0.97x, the noise) | "
        f"{'met' if tensor >= 0.97 else 'missed'} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
