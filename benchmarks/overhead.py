"""Overhead: what bstune costs over the training it runs.

Rows (each timed ``repeats`` times, configurations interleaved in a shuffled order per
repeat so load that comes and goes falls on all alike; median over repeats of the paired
ratio to the hand loop of the same repeat, and the spread of those ratios):

* ``hand loop``         a hand-written PyTorch loop doing the work ``bstune.train`` must do, and
                        no more: the same model and initialisation, optimizer, data order (a
                        seeded permutation per epoch, the tail dropped), batch size and samples,
                        each step's loss read (``loss.item()``, as a loop that reports its mean
                        training loss does), and the same evaluations (the same 2048 training
                        examples, fixed once, and the validation set, in batches of
                        ``eval_batch_size``, loss and every metric of the task) at the same
                        sample milestones. :func:`check` asserts that it ends with bstune's
                        parameters bit for bit, so both do the same arithmetic;
* ``bstune.train``      the same run through ``bstune.train``;
* ``+ noise tracking``  ``bstune.train`` with ``track_noise=True`` (every 8th step, the default);
* ``bstune trial``      (:func:`run` only, as ``benchmarks/run.py`` uses it) one trial of a
                        ``bstune.Study`` (baseline mode, a space pinned to this B and η, pruner
                        off): Optuna bookkeeping and storage included.

Until 2026-12 the hand loop evaluated less than bstune must: the first 2048 training examples
in one batch (bstune: a fixed random subset of 2048, gathered, in batches of 1024) and no
metrics (bstune computes the task's accuracy on both sets), and it never read the loss. It
now does the same evaluations; the ratios before and after that change do not compare.

Times are CPU time of this process (``time.process_time``; one torch thread) and wall
time; on a shared machine the wall times are indicative only.

``python -m benchmarks.overhead`` measures every problem of ``benchmarks/problems.py`` and a
40-128-10 MLP on synthetic data (B = 32 and 256) and writes ``results/overhead.md`` and
``results/overhead.json``; targets: bstune.train ≤ 1.03× the hand loop, with noise tracking
≤ 1.05×. The fuller tracking benchmark is ``benchmarks/noise_overhead.py``
(``results/noise_overhead.md``); the Ray backend's overhead is ``benchmarks/ray_backend.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset, default_collate

import bstune
from benchmarks._provenance import cpu_model, git, loadavg
from benchmarks.problems import PROBLEMS, task_of

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SUBSET_SEED = 20180614  # bstune's fixed training subset for the train loss (bstune/training/_loop.py)
TARGET_UNTRACKED, TARGET_TRACKED = 1.03, 1.05


def mlp40_task() -> bstune.Task:
    """A 40-128-10 MLP on synthetic data (x ~ N(0, I_40), labels from a random linear teacher
    with noise; 8192 training and 2048 validation examples), SGD with momentum 0.9."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10240, 40, generator=gen)
    teacher = torch.randn(40, 10, generator=gen)
    y = (x @ teacher + 0.5 * torch.randn(10240, 10, generator=gen)).argmax(1)

    def accuracy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (out.argmax(1) == target).float().mean()

    return bstune.Task(
        model=lambda: nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 10)),
        train_data=(x[:8192], y[:8192]),
        val_data=(x[8192:], y[8192:]),
        loss=nn.CrossEntropyLoss(),
        metrics={"accuracy": bstune.Metric(accuracy, direction="maximize")},
        optimizer=bstune.OptimizerSpec("sgd", momentum=0.9),
        name="mlp40",
    )


def _collate(dataset: Any, idx: torch.Tensor) -> tuple[Any, Any]:
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        return x[idx], y[idx]
    inputs, targets = default_collate([dataset[int(i)] for i in idx])
    return inputs, targets


def hand_loop(task: bstune.Task, cfg: bstune.TrainConfig) -> nn.Module:
    """The run of ``cfg`` (no tracking, accumulation or AMP) as a plain PyTorch loop; returns the model."""
    torch.manual_seed(cfg.seed)
    model = task.make_model(seed=cfg.seed)
    model.train()
    opt = task.optimizer_spec.build(
        list(model.parameters()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    train, val = task.train_dataset, task.val_dataset
    n = len(train)  # type: ignore[arg-type]
    sub = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED))[: cfg.eval_train_examples]
    train_eval = _collate(train, sub.sort().values)  # fixed once
    val_idx = torch.arange(len(val))  # type: ignore[arg-type]

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            for which in ("train", "val"):
                m = cfg.eval_train_examples if which == "train" else len(val_idx)
                for s in range(0, m, cfg.eval_batch_size):
                    if which == "train":
                        xb, yb = train_eval[0][s : s + cfg.eval_batch_size], train_eval[1][s : s + cfg.eval_batch_size]
                    else:
                        xb, yb = _collate(val, val_idx[s : s + cfg.eval_batch_size])
                    out = model(xb)
                    task.loss(out, yb).item()
                    for fn in task.metrics.values():
                        float(fn(out, yb))
        model.train()

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    every, batch = cfg.eval_every, cfg.batch_size
    done, next_eval, running = 0, every, 0.0
    while done < cfg.max_samples:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            xb, yb = _collate(train, perm[i : i + batch])
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(xb), yb)
            loss.backward()
            opt.step()
            running += loss.item()
            done += batch
            if done >= next_eval or done >= cfg.max_samples:
                evaluate()
                running = 0.0
                while next_eval <= done:
                    next_eval += every
            if done >= cfg.max_samples:
                return model
    return model


def check(task: bstune.Task, cfg: bstune.TrainConfig) -> None:
    """Assert that the hand loop and ``bstune.train`` end with the same parameters, bit for bit."""
    ours = bstune.train(task, cfg).model
    assert ours is not None
    theirs = hand_loop(task, cfg)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        if not torch.equal(a.detach(), b.detach()):
            raise AssertionError(f"{task.name}: the hand loop differs from bstune.train at {name}")


def _discard(_: object) -> None:
    """For the timed lambdas: run, drop the result."""


def _paired(
    configs: dict[str, Callable[[], None]], repeats: int, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    for fn in configs.values():  # warm-up
        fn()
    rng = random.Random(seed)
    for _ in range(repeats):
        order = list(configs)
        rng.shuffle(order)
        for k in order:
            c0, w0 = time.process_time(), time.perf_counter()
            configs[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return cpu, wall


def _ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den, strict=True)]


def run(problem_name: str = "digits_mlp", batch: int = 64, lr: float = 0.1, repeats: int = 7) -> dict[str, Any]:
    """The section-5 rows of ``benchmarks/run.py`` on one problem (the hand loop, bstune.train,
    a one-trial Study, noise tracking), all against the hand loop."""
    problem = PROBLEMS[problem_name]
    task = task_of(problem_name)
    budget, n_evals = problem.budget, problem.n_evals
    cfg = problem.train_config(batch, lr, 0)
    tracked = bstune.TrainConfig.from_dict(cfg.to_dict() | {"track_noise": True})

    def trial() -> None:
        space = dict(problem.space, batch_size={"min": batch, "max": batch}, lr={"min": lr, "max": lr})
        bstune.Study(
            task,
            space,
            n_trials=1,
            budget_samples=budget,
            n_evals=n_evals,
            mode="baseline",
            pruner="none",
            rescore_top=0,  # one trial, as the hand loop: no re-scoring runs
            device="cpu",
            progress=False,
        ).run()

    configs: dict[str, Callable[[], None]] = {
        "hand loop": lambda: _discard(hand_loop(task, cfg)),
        "bstune.train": lambda: _discard(bstune.train(task, cfg)),
        "bstune trial": trial,
        "+ noise tracking": lambda: _discard(bstune.train(task, tracked)),
    }
    cpu, wall = _paired(configs, repeats)
    rows = []
    for k in configs:
        ref = None if k == "hand loop" else "hand loop"
        rows.append(
            {
                "config": k,
                "reference": ref,
                "cpu_s_median": statistics.median(cpu[k]),
                "wall_s_median": statistics.median(wall[k]),
                "cpu_ratio": None if ref is None else statistics.median(_ratios(cpu[k], cpu[ref])),
                "wall_ratio": None if ref is None else statistics.median(_ratios(wall[k], wall[ref])),
            }
        )
    return {"problem": problem_name, "batch_size": batch, "lr": lr, "samples": budget, "repeats": repeats, "rows": rows}


# (problem, batch size, lr, samples per timed run): B and η of each problem's noise_config, samples
# cut so a hand-loop run takes ~0.3-1 s here (9 evaluations whatever the samples)
CASES: list[tuple[str, int, float, int]] = [
    ("mlp40", 32, 0.05, 60_000),
    ("mlp40", 256, 0.05, 240_000),
    ("digits_mlp", 64, 0.1, 30_000),
    ("digits_cnn", 64, 0.1, 6_000),
    ("char_lm", 32, 3e-3, 3_000),
    ("linreg", 16, 0.01, 18_000),
]


def measure(cases: list[tuple[str, int, float, int]], repeats: int) -> list[dict[str, Any]]:
    """Per case: hand loop, bstune.train and bstune.train with track_noise, interleaved; ratios to the hand loop."""
    out = []
    for name, batch, lr, samples in cases:
        torch.manual_seed(0)
        task = mlp40_task() if name == "mlp40" else task_of(name)
        base = PROBLEMS[name].train_config(batch, lr, 0) if name in PROBLEMS else None
        every = -(-samples // 9)
        kwargs = base.to_dict() if base is not None else {"batch_size": batch, "lr": lr, "device": "cpu"}
        cfg = bstune.TrainConfig.from_dict(kwargs | {"max_samples": samples, "eval_every_samples": every})
        tracked = bstune.TrainConfig.from_dict(cfg.to_dict() | {"track_noise": True})
        check(task, cfg)
        configs: dict[str, Callable[[], None]] = {
            "hand": lambda: _discard(hand_loop(task, cfg)),  # noqa: B023 (used in this iteration)
            "train": lambda: _discard(bstune.train(task, cfg)),  # noqa: B023
            "tracked": lambda: _discard(bstune.train(task, tracked)),  # noqa: B023
        }
        started = time.perf_counter()
        cpu, wall = _paired(configs, repeats)
        row: dict[str, Any] = {"problem": name, "batch_size": batch, "lr": lr, "samples": samples, "repeats": repeats}
        row["hand_cpu_s"] = statistics.median(cpu["hand"])
        for k in ("train", "tracked"):
            r = sorted(_ratios(cpu[k], cpu["hand"]))
            row[f"{k}_cpu_ratios"] = r
            row[f"{k}_cpu_ratio"] = statistics.median(r)
            row[f"{k}_fastest_ratio"] = min(cpu[k]) / min(cpu["hand"])  # least disturbed by other load
            row[f"{k}_wall_ratio"] = statistics.median(_ratios(wall[k], wall["hand"]))
        row["seconds"] = time.perf_counter() - started
        print(
            f"{name} B={batch}: train {row['train_cpu_ratio']:.3f} (fastest {row['train_fastest_ratio']:.3f}) "
            f"tracked {row['tracked_cpu_ratio']:.3f} (fastest {row['tracked_fastest_ratio']:.3f})",
            file=sys.stderr,
        )
        out.append(row)
    return out


def _fmt(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def write(rows: list[dict[str, Any]], command: str, started: float, load_before: list[float] | None) -> str:
    """``results/overhead.md`` (and ``.json``) from :func:`measure`'s rows; returns the markdown."""
    prov = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "git": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "load_before": load_before,
        "load_after": loadavg(),
    }
    lines = [
        "# bstune's own cost: bstune.train against a hand-written loop",
        "",
        f"Targets: bstune.train ≤ {TARGET_UNTRACKED}× the hand loop, with `track_noise=True` ≤ {TARGET_TRACKED}×. "
        "Ratio: CPU time (one torch thread) of the run over the hand loop's in the same repeat; median "
        "[min, max] over the interleaved repeats. The hand loop does the same training and evaluations and ends "
        "with bstune's parameters bit for bit (`benchmarks/overhead.py`, `check`); 9 evaluations per run. "
        "'fastest': the fastest run's CPU time over the hand loop's fastest (least disturbed by other load); "
        "'met' judges the median.",
        "",
        "| problem | B | samples | hand loop CPU s | bstune.train ratio | fastest | met | + track_noise ratio | "
        "fastest | met | wall ratio (train / tracked) |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        ok_u = "yes" if r["train_cpu_ratio"] <= TARGET_UNTRACKED else "**no**"
        ok_t = "yes" if r["tracked_cpu_ratio"] <= TARGET_TRACKED else "**no**"
        lines.append(
            f"| {r['problem']} | {r['batch_size']} | {r['samples']:,} | {r['hand_cpu_s']:.2f} | "
            f"{_fmt(r['train_cpu_ratios'])} | {r['train_fastest_ratio']:.3f} | {ok_u} | "
            f"{_fmt(r['tracked_cpu_ratios'])} | {r['tracked_fastest_ratio']:.3f} | {ok_t} | "
            f"{r['train_wall_ratio']:.2f} / {r['tracked_wall_ratio']:.2f} |"
        )
    lines += [
        "",
        f"*{prov['date']}; {prov['cpu']}, load before/after {load_before} / {prov['load_after']} "
        f"(a machine shared with other jobs: indicative), torch {prov['torch']} ({prov['torch_threads']} thread), "
        f"Python {prov['python']}, git {prov['git']}{' + uncommitted changes' if prov['git_dirty'] else ''}; "
        f"`{command}`; {prov['wall_s']} s wall.*",
        "",
    ]
    md = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.md").write_text(md)
    (RESULTS / "overhead.json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1) + "\n")
    return md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--problems", default=None, help="comma-separated: mlp40 and benchmarks/problems.py names")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wanted = set(args.problems.split(",")) if args.problems else None
    cases = [c for c in CASES if wanted is None or c[0] in wanted]
    started, load_before = time.perf_counter(), loadavg()
    rows = measure(cases, args.repeats)
    command = "python -m benchmarks.overhead" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    print(write(rows, command, started, load_before))


if __name__ == "__main__":
    main()
