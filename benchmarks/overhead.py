"""Overhead: what bstune costs over the training it runs.

Rows (each timed ``repeats`` times, configurations interleaved in a shuffled order per
repeat so load that comes and goes falls on all alike; median over repeats of the paired
ratio to the reference of the same repeat):

* ``hand loop``         a hand-written PyTorch loop of the same training: same model, data
                        order (a seeded permutation per epoch), SGD, batch size, samples and
                        the same evaluations (validation set + 2048 training examples at the
                        9 milestones); the reference;
* ``bstune.train``      the same run through ``bstune.train``;
* ``bstune trial``      one trial of a ``bstune.Study`` (baseline mode, a space pinned to this
                        B and η, pruner off): Optuna bookkeeping and storage included;
* ``+ noise tracking``  ``bstune.train`` with ``track_noise=True`` (every 8th step, the default);

Times are CPU time of this process (``time.process_time``; one torch thread) and wall
time; on a shared machine the wall times are indicative only. The fuller tracking benchmark is
``benchmarks/noise_overhead.py`` (``results/noise_overhead.md``); the Ray backend's overhead
is ``benchmarks/ray_backend.py``.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import bstune
from benchmarks.problems import PROBLEMS, task_of


def _hand_loop(problem_name: str, batch: int, lr: float, samples: int, n_evals: int, seed: int) -> None:
    task = task_of(problem_name)
    x, y = task.train_data.tensors  # the Task holds (x, y) tensors as a TensorDataset
    xv, yv = task.val_data.tensors
    model = task.make_model(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=task.optimizer_spec.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    every = -(-samples // n_evals)
    done, next_eval = 0, every
    n = len(x)
    while done < samples:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            done += batch
            if done >= next_eval or done >= samples:
                with torch.no_grad():
                    model.eval()
                    loss_fn(model(xv), yv).item()
                    loss_fn(model(x[:2048]), y[:2048]).item()
                    model.train()
                next_eval += every
            if done >= samples:
                return


def run(problem_name: str = "digits_mlp", batch: int = 64, lr: float = 0.1, repeats: int = 7) -> dict[str, Any]:
    problem = PROBLEMS[problem_name]
    task = task_of(problem_name)
    budget, n_evals = problem.budget, problem.n_evals

    def train(track: bool) -> None:
        cfg = problem.train_config(batch, lr, 0)
        bstune.train(task, bstune.TrainConfig.from_dict(cfg.to_dict() | {"track_noise": track}))

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
        "hand loop": lambda: _hand_loop(problem_name, batch, lr, budget, n_evals, 0),
        "bstune.train": lambda: train(False),
        "bstune trial": trial,
        "+ noise tracking": lambda: train(True),
    }
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    for fn in configs.values():  # warm-up
        fn()
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(configs)
        rng.shuffle(order)
        for k in order:
            c0, w0 = time.process_time(), time.perf_counter()
            configs[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    rows = []
    for k in configs:
        ref = "bstune.train" if k == "+ noise tracking" else "hand loop"
        rows.append(
            {
                "config": k,
                "reference": ref if k != "hand loop" else None,
                "cpu_s_median": statistics.median(cpu[k]),
                "wall_s_median": statistics.median(wall[k]),
                "cpu_ratio": None
                if k == "hand loop"
                else statistics.median(a / b for a, b in zip(cpu[k], cpu[ref], strict=True)),
                "wall_ratio": None
                if k == "hand loop"
                else statistics.median(a / b for a, b in zip(wall[k], wall[ref], strict=True)),
            }
        )
    return {"problem": problem_name, "batch_size": batch, "lr": lr, "samples": budget, "repeats": repeats, "rows": rows}
